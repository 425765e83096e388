"""Engine prefill speed and mixed-step CUDA graphs on a GPU, one command (issue 13, items 1 and 3):

    python bench/bench_prefill_graphs.py [--parts profile,prefill,steps,capture,mixed]
        [--baseline PATH] [--prefill-cfg FILE] [--out DIR]

The issue's engine: random-weight Llama-3.1-8B shape in bf16 (bench_engine_gpu.py's config and
tokenizer; the weights are drawn in place on the GPU, since a step's speed does not depend on
where they came from and 16 GB need not be written and read back), max_num_seqs 256,
max_num_batched_tokens 8192, max_model_len 4096, prefix caching on, async scheduling (the
default on one GPU), mixed-step graphs captured up to --max-cudagraph-tokens (2048, above the
engine's default of 512, so that the parts below can compare the two). Parts:
  profile  torch.profiler over one 8,192-token prefill step of 4 x 2,048 fresh tokens and one of
           16 x 512 new tokens on a cached 1,536-token prefix: GPU time by kernel class.
  prefill  400 x 2,048 unique prompts, max_tokens 1: prompt tok/s; 400 x (1,536 shared + 512
           unique). With --baseline PATH, both again with the attention kernels of the checkout
           at PATH (an older qinfer; the rest of the engine is this one), mixed graphs off.
  steps    one mixed step (a prefill chunk beside up to 200 decodes on 1k contexts) of T tokens:
           eager vs replayed from its graph, wall ms per synchronised step.
  capture  capture time and device memory of the engine's graphs and of a default set (512).
  mixed    a continuous-admission workload (lognormal prompt and output lengths, 30% behind one of
           three 1k system prompts, temperature 1): each step's GPU time (CUDA events from one
           forward's start to the next) by kind, eager or graph; output tok/s. Mixed graphs off
           (decode graphs only: the engine before), up to 512 tokens (the default), up to 2048.
--prefill-cfg: a JSON launch configuration for the prefill kernel (bench_prefill_attention.py
writes the best of its sweep) applied before the engine starts. Prints a table; writes
bench_prefill_graphs.json to --out ($OUT on the device machine).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_gpu import PROMPT_VOCAB as VOCAB, hf_config, random_prompts, save_tokenizer  # noqa: E402

from qinfer.sampling_params import SamplingParams  # noqa: E402

SHAPE = "llama-3.1-8b"
KERNEL_CLASSES = (  # (class, substrings of kernel names), first match wins
    ("attention", ("_prefill_kernel", "_decode_kernel", "flash", "fmha")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitk")),
    ("rms norm", ("norm",)),
    ("rotary + cache write", ("rotary", "cache")),
    ("silu_and_mul", ("silu", "act_and_mul")),
)


# ---- the engine ------------------------------------------------------------------------------

def model_dir(path: Path) -> Path:
    """config.json and tokenizer only: the weights are drawn in place (draw_weights)."""
    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(hf_config(SHAPE), indent=1))
        save_tokenizer(path)
    return path


def draw_weights(model: torch.nn.Module, _model_dir: str) -> None:
    """N(0, 0.02) weights, norms 1 (bench_engine_gpu.make_model_dir's), on the model's device."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
        else:
            param.data.normal_(0.0, 0.02, generator=generator)


def make_llm(args):
    from qinfer.executor import model_runner
    from qinfer.kernels import paged_attention
    from qinfer.llm import LLM

    if args.prefill_cfg:
        paged_attention.PREFILL_CFG.update(json.loads(Path(args.prefill_cfg).read_text()))
    model_runner.load_weights = draw_weights
    return LLM(str(model_dir(Path(args.model_dir))), device="cuda", dtype="bfloat16", max_num_seqs=256,
               max_num_batched_tokens=8192, max_model_len=4096, enable_prefix_caching=True,
               max_cudagraph_tokens=args.max_cudagraph_tokens)


def limit_mixed_graphs(graphs, max_tokens: int, all_sizes: list[int]) -> None:
    """Mixed steps above max_tokens run eagerly from now on (the captured graphs stay)."""
    graphs.mixed_sizes = [size for size in all_sizes if size <= max_tokens]


def greedy_one() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def shared_prompts(n: int, seed: int) -> list[list[int]]:
    prefix = random_prompts(1, 1536, seed=seed)[0]
    return [prefix + body for body in random_prompts(n, 512, seed=seed + 1)]


# ---- profile ---------------------------------------------------------------------------------

def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((cls for cls, keys in KERNEL_CLASSES if any(k in lowered for k in keys)), "other")


def profile_generate(llm, prompts: list[list[int]]) -> dict:
    """GPU time of the kernels of generate(prompts, max_tokens 1), by class, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate(prompts, greedy_one(), use_tqdm=False)
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None)
        us = us if us is not None else getattr(event, "self_cuda_time_total", 0)
        if us > 0:
            kernels[event.key] = kernels.get(event.key, 0.0) + us / 1e3
    classes: dict[str, float] = {}
    for name, ms in kernels.items():
        classes[kernel_class(name)] = classes.get(kernel_class(name), 0.0) + ms
    total = sum(classes.values()) or 1.0
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    return dict(total_ms=total, classes_ms=classes, classes_pct={k: 100 * v / total for k, v in classes.items()},
                top_kernels=[(name[:100], ms, kernel_class(name)) for name, ms in top])


def run_profile(llm, args) -> dict:
    fresh = profile_generate(llm, random_prompts(4, 2048, seed=21))
    llm.generate(shared_prompts(1, 30), greedy_one(), use_tqdm=False)   # caches the 1,536-token prefix
    on_prefix = profile_generate(llm, shared_prompts(17, 30)[1:])
    return dict(fresh_4x2048=fresh, prefix_16x512_on_1536=on_prefix)


# ---- prefill rows ----------------------------------------------------------------------------

def time_prefill(llm, prompts: list[list[int]]) -> dict:
    """prompt tok/s of generate(prompts, max_tokens 1), and the GPU timeline per step: the
    forward (CUDA events around it) and the period from one forward's start to the next
    (forward + LM head and sampler + idle waiting for the host)."""
    runner = llm.engine.executor.runner
    run_model, marks = runner._run_model, []

    def marked(inputs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        hidden = run_model(inputs)
        end.record()
        marks.append((start, end))
        return hidden

    runner._run_model = marked
    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        llm.generate(prompts, greedy_one(), use_tqdm=False)
        elapsed = time.perf_counter() - start
    finally:
        runner._run_model = run_model
    forward_ms = sum(a.elapsed_time(b) for a, b in marks)
    period_ms = marks[0][0].elapsed_time(marks[-1][1])
    tokens = sum(len(p) for p in prompts)
    return dict(num_prompts=len(prompts), prompt_tokens=tokens, elapsed_s=elapsed, prompt_tok_s=tokens / elapsed,
                steps=len(marks), gpu_forward_s=forward_ms / 1e3, gpu_first_to_last_s=period_ms / 1e3,
                outside_gpu_window_s=elapsed - period_ms / 1e3)


def use_baseline_attention(root: str):
    """Route prefill and mixed batches to the attention kernels of the checkout at root (their
    paged_prefill(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, max_query_len,
    scale)); returns the undo."""
    from bench_prefill_attention import load_baseline

    from qinfer.layers.attention.triton_backend import TritonAttentionBackend

    baseline, forward = load_baseline(root), TritonAttentionBackend.forward

    def baseline_forward(self, query, key, value, k_cache, v_cache, meta, scale, kv_written=False):
        if meta.is_decode_only or not kv_written:
            return forward(self, query, key, value, k_cache, v_cache, meta, scale, kv_written)
        return baseline.paged_prefill(query, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                      meta.query_start_loc, meta.max_query_len, scale)

    TritonAttentionBackend.forward = baseline_forward
    return lambda: setattr(TritonAttentionBackend, "forward", forward)


def run_prefill(llm, args) -> dict:
    llm.generate(random_prompts(8, 2048, seed=40) + shared_prompts(16, 41), greedy_one(), use_tqdm=False)  # warm-up
    rows = {"unique": time_prefill(llm, random_prompts(args.num_prompts, 2048, seed=50)),
            "shared": time_prefill(llm, shared_prompts(args.num_prompts, 52))}
    if args.baseline:
        graphs = llm.engine.executor.runner.cuda_graphs
        sizes = list(graphs.mixed_sizes)
        limit_mixed_graphs(graphs, 0, sizes)       # every prefill batch through the baseline kernels
        undo = use_baseline_attention(args.baseline)
        try:
            llm.generate(random_prompts(8, 2048, seed=43), greedy_one(), use_tqdm=False)  # warm-up
            rows["unique_baseline"] = time_prefill(llm, random_prompts(args.num_prompts, 2048, seed=54))
            rows["shared_baseline"] = time_prefill(llm, shared_prompts(args.num_prompts, 56))
        finally:
            undo()
            limit_mixed_graphs(graphs, max(sizes), sizes)
    return rows


# ---- one mixed step, eager vs graph -----------------------------------------------------------

def mixed_step_inputs(num_tokens: int, block_size: int, num_blocks: int):
    """A prefill chunk (on no context) beside min(200, T // 2) decodes on 1,000-token contexts;
    distinct blocks per request (as far as the cache holds), slots -1 (nothing is written)."""
    from qinfer.layers.attention.backend import AttentionMetadata

    num_decodes = min(200, num_tokens // 2)
    chunk = num_tokens - num_decodes
    seq_lens = [1000] * num_decodes + [chunk]
    query_lens = [1] * num_decodes + [chunk]
    width = -(-max(seq_lens) // block_size)
    block_tables = (torch.arange(len(seq_lens) * width, device="cuda") % num_blocks).to(torch.int32).view(-1, width)
    positions = torch.tensor([999] * num_decodes + list(range(chunk)), device="cuda")
    meta = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.long, device="cuda"),
        query_start_loc=torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"), block_tables=block_tables,
        max_query_len=chunk, max_seq_len=max(seq_lens), num_prefills=1)
    input_ids = torch.randint(1000, VOCAB - 1000, (num_tokens,), device="cuda")
    return input_ids, positions, meta


def wall_ms(fn, reps: int = 10) -> float:
    """Median wall time of a synchronised call."""
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return sorted(times)[reps // 2]


@torch.inference_mode()
def run_steps(llm, args) -> list[dict]:
    from qinfer.layers.attention.forward_context import set_forward_context

    runner = llm.engine.executor.runner
    graphs, rows = runner.cuda_graphs, []
    for num_tokens in (16, 64, 128, 256, 384, 512, 1024, 2048, 4096):
        input_ids, positions, meta = mixed_step_inputs(num_tokens, runner.config.block_size,
                                                       runner.kv_cache.shape[2])

        def eager():
            with set_forward_context(meta, runner.attn_backend):
                return runner.model(input_ids, positions)
        row = dict(num_tokens=num_tokens, eager_ms=wall_ms(eager))
        if graphs.can_run(meta, num_tokens):
            row["graph_ms"] = wall_ms(lambda: graphs.run(input_ids, positions, meta))
            row["speedup"] = row["eager_ms"] / row["graph_ms"]
        rows.append(row)
    return rows


# ---- capture ---------------------------------------------------------------------------------

def run_capture(llm, args) -> dict:
    from qinfer.executor.cuda_graphs import StepCudaGraphs

    runner = llm.engine.executor.runner
    graphs = runner.cuda_graphs
    result = {"engine": dict(max_mixed_tokens=max(graphs.mixed_sizes), num_graphs=len(graphs.graphs),
                             capture_s=graphs.capture_s, capture_mib=graphs.capture_bytes / 2**20)}
    default = StepCudaGraphs(runner.model, runner.attn_backend, runner.config.max_num_seqs, 512,
                             runner.max_model_len, runner.config.block_size, runner.device)
    default.capture()
    result["default_512"] = dict(max_mixed_tokens=512, num_graphs=len(default.graphs), capture_s=default.capture_s,
                                 capture_mib=default.capture_bytes / 2**20)
    del default
    torch.cuda.empty_cache()
    return result


# ---- mixed workload ----------------------------------------------------------------------------

def mixed_workload(n: int, token_seed: int):
    """Lengths from one fixed draw (the same for every run), token ids from token_seed (no run
    hits another's prefix cache)."""
    lengths, tokens = random.Random(7), random.Random(token_seed)
    draw = lambda k: [tokens.randrange(1000, VOCAB - 1000) for _ in range(k)]  # noqa: E731
    systems = [draw(1024) for _ in range(3)]
    prompts, params = [], []
    for _ in range(n):
        prompt_len = int(min(3000, max(16, lengths.lognormvariate(math.log(256), 0.9))))
        output_len = int(min(768, max(4, lengths.lognormvariate(math.log(128), 0.8))))
        system = systems[lengths.randrange(3)] if lengths.random() < 0.3 else []
        prompts.append((system + draw(prompt_len))[:4096 - output_len - 1])
        params.append(SamplingParams(temperature=1.0, max_tokens=output_len, ignore_eos=True))
    return prompts, params


def run_mixed_once(llm, prompts, params) -> dict:
    runner = llm.engine.executor.runner
    graphs, run_model, steps = runner.cuda_graphs, runner._run_model, []

    def recorded(inputs):
        meta, num_tokens = inputs.attn_metadata, inputs.input_ids.shape[0]
        path = "graph" if graphs.can_run(meta, num_tokens) else "eager"
        kind = f"{'decode' if meta.is_decode_only else 'mixed'} {path}"
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        steps.append((kind, num_tokens, event))
        return run_model(inputs)

    runner._run_model = recorded
    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        end_event = torch.cuda.Event(enable_timing=True)
        end_event.record()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        runner._run_model = run_model
    by_kind: dict[str, dict] = {}
    for (kind, num_tokens, event), nxt in zip(steps, [s[2] for s in steps[1:]] + [end_event]):
        entry = by_kind.setdefault(kind, dict(steps=0, gpu_ms=0.0, tokens=0))
        entry["steps"] += 1
        entry["gpu_ms"] += event.elapsed_time(nxt)
        entry["tokens"] += num_tokens
    total_ms = sum(e["gpu_ms"] for e in by_kind.values())
    for entry in by_kind.values():
        entry["share_pct"] = 100 * entry["gpu_ms"] / total_ms
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    eager_pct = sum(e["share_pct"] for k, e in by_kind.items() if k.endswith("eager"))
    return dict(elapsed_s=elapsed, output_tok_s=out_tokens / elapsed, num_steps=len(steps),
                eager_share_pct=eager_pct, by_kind=by_kind)


def run_mixed(llm, args) -> dict:
    graphs = llm.engine.executor.runner.cuda_graphs
    sizes = list(graphs.mixed_sizes)
    warm_prompts, warm_params = mixed_workload(64, token_seed=60)
    llm.generate(warm_prompts, warm_params, use_tqdm=False)
    results = {}
    for i, cap in enumerate((0, 512, max(sizes))):
        limit_mixed_graphs(graphs, cap, sizes)
        prompts, params = mixed_workload(args.mixed_requests, token_seed=61 + i)
        results[f"mixed_graphs_upto_{cap}"] = run_mixed_once(llm, prompts, params)
        print(f"mixed workload, mixed graphs up to {cap} tokens: {results[f'mixed_graphs_upto_{cap}']}", flush=True)
    limit_mixed_graphs(graphs, max(sizes), sizes)
    return results


# ---- driver ----------------------------------------------------------------------------------

PARTS = {"profile": run_profile, "prefill": run_prefill, "steps": run_steps, "capture": run_capture,
         "mixed": run_mixed}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--model-dir", default="/tmp/qinfer-models/llama-3.1-8b-drawn")
    p.add_argument("--baseline", default=None, help="root of a checkout with older attention kernels")
    p.add_argument("--prefill-cfg", default=None, help="JSON file: prefill kernel launch configuration")
    p.add_argument("--max-cudagraph-tokens", type=int, default=2048)
    p.add_argument("--num-prompts", type=int, default=400)
    p.add_argument("--mixed-requests", type=int, default=500)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    llm = make_llm(args)
    from qinfer.kernels import paged_attention
    results = dict(device=torch.cuda.get_device_name(), args=vars(args), engine_start_s=time.perf_counter() - start,
                   prefill_cfg=dict(paged_attention.PREFILL_CFG))
    print(f"engine up in {results['engine_start_s']:.0f} s; prefill cfg {results['prefill_cfg']}", flush=True)
    for name in args.parts.split(","):
        part_start = time.perf_counter()
        try:
            results[name] = PARTS[name](llm, args)
        except Exception:   # one device call runs every part: a failing part must not cost the others
            results[f"{name}_error"] = traceback.format_exc()
            print(results[f"{name}_error"], flush=True)
        print(f"part {name} done in {time.perf_counter() - part_start:.0f} s", flush=True)
        save(results, args.out)
    report(results)


def save(results: dict, out_dir: str) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "bench_prefill_graphs.json").write_text(json.dumps(results, indent=1, default=str))


def report(r: dict) -> None:
    print(f"\n== {SHAPE} (drawn weights) on {r['device']}; prefill cfg {r['prefill_cfg']}")
    for label, prof in r.get("profile", {}).items():
        shares = ", ".join(f"{k} {v:.1f}%" for k, v in sorted(prof["classes_pct"].items(), key=lambda kv: -kv[1]))
        print(f"profile {label}: {prof['total_ms']:.1f} ms of kernels: {shares}")
    for label, row in r.get("prefill", {}).items():
        print(f"prefill {label:<16} {row['num_prompts']} prompts: {row['prompt_tok_s'] / 1e3:.1f}k prompt tok/s "
              f"({row['elapsed_s']:.2f} s; {row['steps']} steps, GPU forwards {row['gpu_forward_s']:.2f} s "
              f"within {row['gpu_first_to_last_s']:.2f} s from the first forward's start to the last's end)")
    for row in r.get("steps", []):
        graph = f"graph {row['graph_ms']:.2f} ms ({row['speedup']:.2f}x)" if "graph_ms" in row else "no graph"
        print(f"mixed step T={row['num_tokens']:>5}: eager {row['eager_ms']:.2f} ms, {graph}")
    for label, cap in r.get("capture", {}).items():
        print(f"capture {label}: {cap['num_graphs']} graphs in {cap['capture_s']:.1f} s, {cap['capture_mib']:.0f} MiB")
    for label, row in r.get("mixed", {}).items():
        kinds = "; ".join(f"{k} {e['steps']} steps {e['share_pct']:.1f}%" for k, e in sorted(row["by_kind"].items()))
        print(f"{label}: {row['output_tok_s']:.0f} out tok/s, {row['num_steps']} steps, eager "
              f"{row['eager_share_pct']:.1f}% of GPU time ({kinds})")


if __name__ == "__main__":
    main()
