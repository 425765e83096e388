"""The varied workload (bench/varied_workload.py), in-process and through the fleet (issue 13).

    python bench/bench_varied.py --device cuda [--shape llama-3.1-8b] [--jobs 1500]
        [--modes inprocess,fleet] [--samplers threshold,sort] [--out DIR]
    python bench/bench_varied.py --device cpu --jobs 12          (smoke: the tiny demo model)

Engine settings are the engine's defaults (sized to the device) unless given
(--max-num-seqs, --max-num-batched-tokens, --max-model-len, --gpu-memory-utilization).
inprocess: one LLM, LLM.generate over every job, once per --samplers entry on the same
  engine (threshold: the Triton sort-free kernel; sort: its torch twin, which sorts the
  vocabulary). Each run has the same lengths but its own token contents, so no run reuses
  another's shared prefixes. Per run: output and total tok/s, and the step-time shares
  (bench/step_shares.py: steps run eagerly vs from CUDA graphs, time in the sampler).
fleet: one `qinfer worker` on an embedded Redis, jobs by Client.submit_many, every result
  read with Client.wait; output tok/s from the first submit to the last result.
Prints a table; writes bench_varied.json to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

from varied_workload import Job, summary, varied_jobs

SAMPLER_OP = "top_k_top_p_min_p"
SAMPLER_IMPLS = {"threshold": None, "sort": "torch"}   # None: the best available (Triton on a GPU)
ENGINE_FLAGS = ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization")
CPU_SCALE = 1 / 24          # the tiny demo model has 256 positions


def model_and_vocab(args) -> tuple[str, int]:
    from transformers import AutoConfig

    if args.device == "cpu" and not args.model_dir:
        from qinfer.testing.demo_model import make_demo_model
        model_dir = str(make_demo_model())
    elif args.model_dir:
        model_dir = str(args.model_dir)
    else:
        from bench_engine_gpu import make_model_dir
        model_dir = str(make_model_dir(args.shape, Path("/tmp/qinfer-models") / args.shape))
    return model_dir, AutoConfig.from_pretrained(model_dir).vocab_size


def engine_settings(args) -> dict:
    return {k: getattr(args, k) for k in ENGINE_FLAGS if getattr(args, k) is not None}


def workload(args, vocab_size: int, run_index: int) -> list[Job]:
    return varied_jobs(args.jobs, vocab_size, seed=args.seed, content_seed=args.seed + 1000 * (run_index + 1),
                       scale=args.scale)


def run_in_process(args, model_dir: str, vocab_size: int, root: dict) -> None:
    """Fills root["inprocess"], saving root after each run (a later one may not finish)."""
    from step_shares import StepShares

    from qinfer import LLM, SamplingParams, ops

    start = time.perf_counter()
    llm = LLM(model_dir, device=args.device, **engine_settings(args))
    results = root["inprocess"] = dict(engine=dict(engine_figures(llm.engine), init_s=time.perf_counter() - start))
    shares = StepShares(llm.engine.executor.runner)
    for index, sampler in enumerate(args.samplers.split(",")):
        ops.use_implementation(SAMPLER_OP, SAMPLER_IMPLS[sampler])
        jobs = workload(args, vocab_size, index)
        warm = [SamplingParams(**j.sampling()) for j in jobs[:4]]
        llm.generate([j.prompt_token_ids for j in jobs[:4]], warm, use_tqdm=False)   # compiles, warms
        shares.reset()
        start = time.perf_counter()
        outs = llm.generate([j.prompt_token_ids for j in jobs], [SamplingParams(**j.sampling()) for j in jobs],
                            use_tqdm=False)
        elapsed = time.perf_counter() - start
        out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        results[sampler] = dict(sampler_impl=ops.implementations(args.device)[SAMPLER_OP], elapsed_s=elapsed,
                                **throughput(jobs, out_tokens, elapsed), **shares.report())
        save(root, args.out)
    ops.use_implementation(SAMPLER_OP, None)


def engine_figures(engine) -> dict:
    """The settings the engine resolved, and what they cost in memory (host batch tables,
    the GPU's reserved memory, the KV cache, the CUDA graphs captured)."""
    import torch

    config, runner = engine.config, engine.executor.runner
    batch = runner.input_batch
    figures = dict(max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
                   max_model_len=engine.max_model_len, num_kv_blocks=engine.num_kv_blocks,
                   block_size=config.block_size,
                   host_batch_tables_mib=(batch.token_ids.nbytes + batch.block_table.nbytes) / 2**20)
    if runner.device.type == "cuda":
        figures.update(gpu_reserved_gib=torch.cuda.memory_reserved(runner.device) / 2**30,
                       kv_cache_gib=runner.kv_cache.numel() * runner.kv_cache.element_size() / 2**30,
                       cuda_graphs=len(runner.cuda_graphs.graphs) if runner.cuda_graphs else 0)
    return figures


def throughput(jobs: list[Job], out_tokens: int, elapsed: float) -> dict:
    assert out_tokens == sum(j.max_tokens for j in jobs), "ignore_eos: every job runs to max_tokens"
    prompt_tokens = sum(len(j.prompt_token_ids) for j in jobs)
    return dict(output_tok_s=out_tokens / elapsed, total_tok_s=(out_tokens + prompt_tokens) / elapsed)


def worker_args(args) -> tuple[str, ...]:
    flags = [(f"--{k.replace('_', '-')}", str(v)) for k, v in engine_settings(args).items()]
    return ("--served-model-name", "bench", "--device", args.device, *(x for pair in flags for x in pair))


def run_fleet(args, model_dir: str, vocab_size: int) -> dict:
    with one_worker_fleet(args, model_dir) as client:
        jobs = workload(args, vocab_size, 0)
        submit_and_wait(client, jobs[:4])                  # warm up, as in-process
        start = time.perf_counter()
        out_tokens = submit_and_wait(client, jobs)
        elapsed = time.perf_counter() - start
    return dict(elapsed_s=elapsed, **throughput(jobs, out_tokens, elapsed))


def submit_and_wait(client, jobs: list[Job]) -> int:
    ids = client.submit_many([{"model": "bench", "prompt_token_ids": j.prompt_token_ids, "sampling": j.sampling()}
                              for j in jobs])
    results = [client.wait(job_id, timeout=3600) for job_id in ids]
    failed = [r.error for r in results if r.error is not None]
    assert not failed, f"{len(failed)} jobs failed, e.g. {failed[0]}"
    return sum(r.usage.completion_tokens for r in results)


def free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def add_shared_args(p: argparse.ArgumentParser) -> None:
    """The options bench_varied.py and bench_arrivals.py share: device, model, lengths, engine."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="llama-3.1-8b", help="random-weight shape of bench_engine_gpu.py")
    p.add_argument("--model-dir", type=Path, help="default: the shape's random dir (cuda), the demo model (cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, help=f"length scale (default 1 on cuda, {CPU_SCALE:.3f} on cpu)")
    for flag in ENGINE_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag,
                       type=float if flag == "gpu_memory_utilization" else int)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")


def parse_shared(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    args.scale = args.scale or (CPU_SCALE if args.device == "cpu" else 1.0)
    return args


@contextlib.contextmanager
def one_worker_fleet(args, model_dir: str):
    """An embedded Redis and one `qinfer worker` serving "bench": yields a Client."""
    from qinfer.client import Client
    from qinfer.config import Settings
    from qinfer.embedded_redis import EmbeddedRedis
    from qinfer.fleet import Fleet

    with EmbeddedRedis() as server:
        client = Client(settings=Settings(redis_url=server.url, max_queued_jobs=10**7, max_queued_tokens=10**10))
        fleet = Fleet(model_dir, server.url, 1, worker_args=worker_args(args), env={"QINFER_LOG_LEVEL": "WARNING"})
        fleet.start().wait_ready(timeout=1200)
        try:
            yield client
        finally:
            fleet.stop()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(p)
    p.add_argument("--jobs", type=int, default=1500)
    p.add_argument("--modes", default="inprocess,fleet")
    p.add_argument("--samplers", default="threshold,sort", help="in-process runs: threshold (Triton), sort (torch)")
    return parse_shared(p, argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_dir, vocab_size = model_and_vocab(args)
    results = dict(device=args.device, model_dir=model_dir, args={k: str(v) for k, v in vars(args).items()},
                   workload=summary(workload(args, vocab_size, 0)))
    modes = args.modes.split(",")
    if "inprocess" in modes:
        run_in_process(args, model_dir, vocab_size, results)
        free_device_memory()             # the fleet's worker loads the model again
    if "fleet" in modes:
        results["fleet"] = run_fleet(args, model_dir, vocab_size)
    save(results, args.out)
    report(results)
    return results


def save(results: dict, out_dir: str, name: str = "bench_varied.json") -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / name).write_text(json.dumps(results, indent=1, default=str))


def report(r: dict) -> None:
    from step_shares import print_by_kind

    w = r["workload"]
    print(f"varied workload: {w['jobs']} jobs, prompts p50/p99/max {w['prompt_p50']}/{w['prompt_p99']}/"
          f"{w['prompt_max']}, outputs {w['output_p50']}/{w['output_p99']}/{w['output_max']}, "
          f"{100 * w['shared_prefix_share']:.0f}% behind a shared system prompt")
    if "inprocess" in r:
        print(f"engine: {r['inprocess']['engine']}")
    print("| run | output tok/s | total tok/s | s | steps | eager steps | eager share | sampler share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in r.get("inprocess", {}).items():
        if name != "engine":
            print(f"| in-process, {name} ({run['sampler_impl']}) | {run['output_tok_s']:.0f} | {run['total_tok_s']:.0f} "
                  f"| {run['elapsed_s']:.1f} | {run['steps']} | {run['eager_steps']} "
                  f"| {run['eager_step_share_pct']:.1f}% | {run['sampler_share_pct']:.1f}% |")
    for name, run in r.get("inprocess", {}).items():
        if name != "engine":
            print(f"step time of the in-process {name} run, by what the steps carried:")
            print_by_kind(run["by_kind"])
    if "fleet" in r:
        f = r["fleet"]
        print(f"| fleet (1 worker, submit_many) | {f['output_tok_s']:.0f} | {f['total_tok_s']:.0f} "
              f"| {f['elapsed_s']:.1f} | | | | |")


if __name__ == "__main__":
    main()
