"""Greedy agreement with transformers on the GPU (issue 5), one command:

    python bench/bench_gpu_agreement.py [--out DIR]

A small random Llama and Qwen2 model (made here, no download), 16 prompts,
greedy, ignore_eos. qinfer runs its GPU path (Triton attention, compiled ops
when built, CUDA graphs); transformers generate() is the oracle.
  float32: qinfer token ids must equal HF's exactly (exit code 1 otherwise);
  bfloat16: qinfer bf16 vs HF bf16, reported as the share of generated tokens
            that agree, position by position, up to the first divergence.
Prints a table and writes gpu_agreement.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from qinfer import LLM, SamplingParams
from qinfer.testing.tiny_model import make_tiny_model

MODELS = {
    "llama": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=64,
                  intermediate_size=512, tie_word_embeddings=False),
    "qwen2": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
                  intermediate_size=512, tie_word_embeddings=True),
}
NUM_PROMPTS, MAX_TOKENS = 16, 48


def random_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(rng.randrange(4, 200))] for _ in range(NUM_PROMPTS)]


def hf_greedy(model_dir: Path, prompts: list[list[int]], dtype: torch.dtype) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
    outputs = []
    for prompt in prompts:   # one at a time: no padding, so HF's numerics are the plain forward
        ids = torch.tensor([prompt], device="cuda")
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS,
                             min_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
        outputs.append(out[0, len(prompt):].tolist())
    del model
    torch.cuda.empty_cache()
    return outputs


def qinfer_greedy(model_dir: Path, prompts: list[list[int]], dtype: str) -> list[list[int]]:
    llm = LLM(str(model_dir), device="cuda", dtype=dtype, max_num_seqs=8, max_num_batched_tokens=256,
              gpu_memory_utilization=0.3)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    del llm
    torch.cuda.empty_cache()
    return outputs


def prefix_agreement(ours: list[list[int]], reference: list[list[int]]) -> float:
    """Share of reference tokens matched before each sequence's first divergence."""
    matched = 0
    for a, b in zip(ours, reference):
        for x, y in zip(a, b):
            if x != y:
                break
            matched += 1
    return matched / sum(len(b) for b in reference)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, sizes in MODELS.items():
            model_dir = make_tiny_model(Path(tmp) / arch, arch, vocab_size=512, **sizes)
            prompts = random_prompts(512)
            exact = qinfer_greedy(model_dir, prompts, "float32") == hf_greedy(model_dir, prompts, torch.float32)
            bf16 = prefix_agreement(qinfer_greedy(model_dir, prompts, "bfloat16"),
                                    hf_greedy(model_dir, prompts, torch.bfloat16))
            rows[arch] = {"float32_equal": exact, "bf16_prefix_agreement": bf16}
            print(f"{arch:6s} float32 token ids equal to HF: {exact}   bf16 agreement: {bf16:.1%}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_agreement.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r["float32_equal"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
