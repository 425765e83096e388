"""CPU output tokens/s: qinfer's engine against transformers' batched generate() on SmolLM2-135M.

    python bench/bench_cpu_vs_hf.py [--batch-sizes 16 64 --output-len 64 --repeats 2 --backends sdpa reference
        --dtypes float32 bfloat16]

Both run the real SmolLM2-135M-Instruct (qinfer.models.fetch) in each --dtypes entry (the same
dtype on both sides: float32, and bfloat16 where the CPU has native bf16 dot products), greedy, the same
chat-templated questions, exactly --output-len new tokens each (EOS ignored, not masked: qinfer
ignore_eos, transformers with no eos_token_id; left padding, its default KV cache), torch's thread count as
set (OMP_NUM_THREADS). Each cell is the best of --repeats timed runs after a warm-up (the
machine may be shared: the best run is the least disturbed). "same ids" counts prompts whose
tokens equal transformers'. Prints a table and writes bench/results/cpu_vs_hf.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "cpu_vs_hf.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["sdpa"], help="qinfer attention backends to run")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="both engines run each")
    return p.parse_args()


def chat_prompts(tokenizer, batch_size: int) -> list[list[int]]:
    from qinfer.demo import QUESTIONS

    questions = [f"{QUESTIONS[i % len(QUESTIONS)]} (question {i + 1})" for i in range(batch_size)]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]) for q in questions]


def best_time(run, repeats: int) -> tuple[float, object]:
    run()   # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - start)
    return min(timings), result


def hf_generate(model, tokenizer, prompts: list[list[int]], output_len: int) -> list[list[int]]:
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=output_len,
                             pad_token_id=pad)
    return out[:, width:].tolist()


def qinfer_generate(llm, prompts: list[list[int]], output_len: int) -> list[list[int]]:
    from qinfer import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def main() -> None:
    args = parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qinfer import LLM
    from qinfer.models.fetch import default_model_dir

    model_dir = str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for dtype in args.dtypes:
        hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        hf_model.generation_config.eos_token_id = None   # like ignore_eos: every sequence runs output_len
        for batch_size in args.batch_sizes:
            prompts = chat_prompts(tokenizer, batch_size)
            num_output = batch_size * args.output_len
            hf_s, hf_ids = best_time(lambda: hf_generate(hf_model, tokenizer, prompts, args.output_len), args.repeats)
            for backend in args.backends:
                llm = LLM(model_dir, dtype=dtype, max_num_seqs=batch_size, attention_backend=backend)
                qi_s, qi_ids = best_time(lambda: qinfer_generate(llm, prompts, args.output_len), args.repeats)
                rows.append({"dtype": dtype, "batch": batch_size, "backend": backend, "output_len": args.output_len,
                             "hf_tok_s": round(num_output / hf_s, 1), "qinfer_tok_s": round(num_output / qi_s, 1),
                             "speedup": round(hf_s / qi_s, 2), "same_ids": sum(a == b for a, b in zip(qi_ids, hf_ids)),
                             "hf_s": round(hf_s, 3), "qinfer_s": round(qi_s, 3)})
                llm.close()
        del hf_model
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                   "rows": rows}, indent=2) + "\n")


def print_table(rows: list[dict]) -> None:
    print(f"SmolLM2-135M-Instruct, CPU, greedy, torch threads {torch.get_num_threads()}")
    print("| dtype | batch | backend | transformers tok/s | qinfer tok/s | speedup | same ids |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['dtype']} | {r['batch']} | {r['backend']} | {r['hf_tok_s']} | {r['qinfer_tok_s']} "
              f"| {r['speedup']}x | {r['same_ids']}/{r['batch']} |")


if __name__ == "__main__":
    main()
