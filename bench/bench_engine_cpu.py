"""Engine throughput on a tiny random model on the CPU: where does step time go?

    python bench/bench_engine_cpu.py [--num-requests 64 --prompt-len 64 --output-len 64]

Prints a table and writes bench/results/engine_cpu.json. "outside model" is the share
of step() time not spent in executor.execute_model: scheduling, detokenization, outputs.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "engine_cpu.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in [("num-requests", 64), ("prompt-len", 64), ("output-len", 64), ("max-num-seqs", 64),
                          ("max-num-batched-tokens", 2048), ("hidden-size", 128), ("num-layers", 4)]:
        p.add_argument(f"--{flag}", type=int, default=default)
    return p.parse_args()


def random_prompts(num_requests: int, prompt_len: int, vocab_size: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, vocab_size) for _ in range(prompt_len)] for _ in range(num_requests)]


def run(args: argparse.Namespace, model_dir: Path) -> dict:
    from qinfer import LLM, SamplingParams

    llm = LLM(str(model_dir), dtype="float32", max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens)
    prompts = random_prompts(args.num_requests, args.prompt_len, llm.engine.vocab_size)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[:2], params, use_tqdm=False)           # warm-up
    before = llm.engine.stats
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return summarize(args, outputs, elapsed, before, llm.engine.stats)


def summarize(args, outputs, elapsed: float, before, after) -> dict:
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    num_prompt = sum(len(o.prompt_token_ids) for o in outputs)
    step_time = after.step_time_s - before.step_time_s
    executor_time = after.executor_time_s - before.executor_time_s
    return {
        "config": vars(args),
        "elapsed_s": round(elapsed, 3),
        "output_tokens_per_s": round(num_output / elapsed, 1),
        "total_tokens_per_s": round((num_output + num_prompt) / elapsed, 1),
        "num_steps": after.num_steps - before.num_steps,
        "step_time_s": round(step_time, 3),
        "executor_time_s": round(executor_time, 3),
        "share_outside_model": round(1 - executor_time / step_time, 3),
        "mean_step_ms": round(1000 * step_time / max(1, after.num_steps - before.num_steps), 3),
    }


def print_table(result: dict) -> None:
    rows = [(key, value) for key, value in result.items() if key != "config"]
    width = max(len(key) for key, _ in rows)
    print(f"engine on CPU, {json.dumps(result['config'])}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main() -> None:
    args = parse_args()
    from qinfer.testing.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(tmp, "llama", hidden_size=args.hidden_size, num_layers=args.num_layers,
                                    num_heads=4, num_kv_heads=2, intermediate_size=4 * args.hidden_size)
        result = run(args, model_dir)
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
