"""Greedy agreement with transformers on the GPU (issue 5), one command:

    python bench/bench_gpu_agreement.py [--out DIR]

A small random Llama and Qwen2 model (made here, no download), 16 prompts,
greedy, ignore_eos. qinfer runs its GPU path (Triton attention, compiled ops
when built, CUDA graphs); transformers generate() is the oracle.
  float32: qinfer token ids must equal HF's exactly (exit code 1 otherwise);
  bfloat16: qinfer bf16 vs HF bf16.
Both report the share of generated tokens that agree, position by position, up
to the first divergence, and HF's logit margin at each divergence (a near-tie
flips on rounding differences; random-weight models have many).
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
DEVICE = "cuda"   # --device cpu: a dry run of this script on a machine without a GPU


def random_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(rng.randrange(4, 200))] for _ in range(NUM_PROMPTS)]


def hf_greedy(model_dir: Path, prompts: list[list[int]], dtype: torch.dtype) -> tuple[list, list]:
    """HF's greedy token ids and, per generated position, its float32 logits [V]."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(DEVICE).eval()
    model.generation_config.eos_token_id = None   # like ignore_eos: full length, EOS unmasked
    tokens, logits = [], []
    for prompt in prompts:   # one at a time: no padding, so HF's numerics are the plain forward
        ids = torch.tensor([prompt], device=DEVICE)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
        tokens.append(out.sequences[0, len(prompt):].tolist())
        logits.append([step[0].float().cpu() for step in out.logits])
    del model
    return tokens, logits


def qinfer_greedy(model_dir: Path, prompts: list[list[int]], dtype: str) -> list[list[int]]:
    llm = LLM(str(model_dir), device=DEVICE, dtype=dtype, max_num_seqs=8, max_num_batched_tokens=256,
              gpu_memory_utilization=0.3)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    del llm
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


def divergence_margins(ours: list[list[int]], reference: list[list[int]], logits: list) -> list[float]:
    """At each sequence's first divergence: HF's logit of its own pick minus its logit of ours.
    A margin near float rounding means a near-tie, not a wrong computation."""
    margins = []
    for a, b, step_logits in zip(ours, reference, logits):
        for pos, (x, y) in enumerate(zip(a, b)):
            if x != y:
                margins.append(float(step_logits[pos][y] - step_logits[pos][x]))
                break
    return margins


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, sizes in MODELS.items():
            model_dir = make_tiny_model(Path(tmp) / arch, arch, vocab_size=512, **sizes)
            prompts = random_prompts(512)
            row = {}
            for label, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
                ours = qinfer_greedy(model_dir, prompts, str(dtype).removeprefix("torch."))
                reference, logits = hf_greedy(model_dir, prompts, dtype)
                row[label] = {"equal": ours == reference, "prefix_agreement": prefix_agreement(ours, reference),
                              "divergence_margins": divergence_margins(ours, reference, logits)}
            rows[arch] = row
            for label, r in row.items():
                print(f"{arch:6s} {label:8s} token ids equal to HF: {r['equal']!s:5s} prefix agreement "
                      f"{r['prefix_agreement']:.1%}; logit margins at divergences: "
                      f"{[f'{m:.1e}' for m in r['divergence_margins']]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_agreement.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r["float32"]["equal"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
