"""Engine benchmarks on a GPU, one command (issue 5):

    python bench/bench_engine_gpu.py --shape llama-3.1-8b [--parts throughput,latency,breakdown,hf]
        [--num-requests 1000] [--input-len 512] [--output-len 256] [--out DIR]

Random-weight models of real shapes: config.json of the named Llama or Qwen3 shape plus
random bf16 safetensors generated on this machine (no download), and a word-level tokenizer
covering the whole vocabulary (random weights emit any id). Parts:
  throughput  offline: num_requests random prompts, ignore_eos, temperature 1.0;
              output and total tok/s, against the compute roofline
              (workload FLOPs / measured bf16 matmul rate);
  latency     one request (input_len prompt, output_len new tokens): ms per decoded token
              against the bandwidth floor (weight bytes / measured copy bandwidth);
  breakdown   decode steps at a full batch: host work (scheduler, input prep, outputs) vs GPU
              forward, LM head + sampler, and the time the GPU idles waiting for the host;
  hf          transformers generate() on the same weights, one batch of --hf-batch requests
              (a subset of the workload: the figure is its output tok/s).
Prints a table and writes bench_engine.json to --out ($OUT on the device machine).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
from pathlib import Path

import torch
import triton

PROMPT_VOCAB = 128256   # prompts draw ids below this: valid in every shape's vocabulary
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         tie_word_embeddings=True, rope_factor=32.0),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=False, rope_factor=8.0),
    # Qwen3-8B's config.json: q/k norms per head, no rope scaling, a larger vocabulary.
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     tie_word_embeddings=False),
}


# ---- the random model directory ----------------------------------------------------------

def hf_config(shape: str) -> dict:
    s = dict(SHAPES[shape])
    common = dict(hidden_act="silu", attention_bias=False, torch_dtype="bfloat16", initializer_range=0.02)
    if shape.startswith("qwen3"):
        return dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936,
                    max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                    bos_token_id=151643, eos_token_id=151645, use_sliding_window=False, **common, **s)
    factor = s.pop("rope_factor")
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
                max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, mlp_bias=False,
                bos_token_id=128000, eos_token_id=128001,
                rope_scaling=dict(rope_type="llama3", factor=factor, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=8192),
                **common, **s)


def pad_token_id(cfg: dict) -> int:
    return cfg["eos_token_id"] + 1


def weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF LlamaForCausalLM / Qwen3ForCausalLM parameter names -> shapes."""
    h, inter, d, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
        if cfg["model_type"] == "qwen3":
            shapes.update({p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)})
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, h)
    return shapes


def save_tokenizer(out: Path, vocab: int = PROMPT_VOCAB, special_ids: tuple[int, int, int] = (128000, 128001, 128002)) -> None:
    """Word-level tokenizer "t0".."t{V-1}": every id decodes (random weights emit any id);
    special_ids: bos, eos, pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos, eos, pad = (f"t{i}" for i in special_ids)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad).save_pretrained(out)


def make_model_dir(shape: str, out: Path, shard_bytes: int = 4 << 30) -> Path:
    """config.json + random bf16 shards (N(0, 0.02); norms 1) generated on the GPU."""
    from safetensors.torch import save_file

    if (out / "model.safetensors.index.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(shape)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    save_tokenizer(out, cfg["vocab_size"], (cfg["bos_token_id"], cfg["eos_token_id"], pad_token_id(cfg)))
    gen = torch.Generator(device="cuda").manual_seed(0)
    shards, current, size = [], {}, 0
    for name, shp in weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            t = torch.ones(shp, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shp, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()
        current[name] = t
        size += t.numel() * 2
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * 2 for s in shards for t in s.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return out


# ---- ceilings ------------------------------------------------------------------------------

def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    src = torch.randn(1 << 29, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def matmul_rate() -> float:
    """bf16 FLOP/s of an 8192^3 matrix product on random data."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return 2 * 8192 ** 3 / (ms * 1e-3)


def workload_flops(cfg: dict, num_requests: int, input_len: int, output_len: int) -> float:
    """Matmul FLOPs of the workload: every token through every linear layer, the LM head
    for each sampled token, and causal attention (QK^T and PV) over its context."""
    shapes = weight_shapes(cfg)
    linear = sum(s[0] * s[1] for n, s in shapes.items() if "layers" in n and len(s) == 2)
    tokens = input_len + output_len - 1                   # the last sampled token is never fed
    lm_head = 2 * cfg["vocab_size"] * cfg["hidden_size"] * output_len
    attn_per_pos = 4 * cfg["num_attention_heads"] * cfg["head_dim"] * cfg["num_hidden_layers"]
    attention = attn_per_pos * tokens * (tokens + 1) / 2
    return num_requests * (2 * linear * tokens + lm_head + attention)


def weight_bytes(cfg: dict) -> int:
    """All parameters in bf16 (as the issue's 3.8 ms floor for the 8B shape counts them)."""
    return sum(int(torch.Size(s).numel()) * 2 for s in weight_shapes(cfg).values())


# ---- the engine parts ----------------------------------------------------------------------

def random_prompts(n: int, length: int, seed: int = 0, vocab: int = PROMPT_VOCAB) -> list[list[int]]:
    """Ids clear of both ends of the vocabulary (where special tokens sit), 1,000 or vocab / 8."""
    rng, margin = random.Random(seed), min(1000, vocab // 8)
    return [[rng.randrange(margin, vocab - margin) for _ in range(length)] for _ in range(n)]


def make_llm(model_dir: Path, args):
    from qinfer.llm import LLM

    if args.engine_defaults:      # out of the box: batch sizes, context and memory as the engine sizes them
        return LLM(str(model_dir), device="cuda", dtype="bfloat16")
    return LLM(str(model_dir), device="cuda", dtype="bfloat16", max_num_seqs=args.max_num_seqs,
               max_num_batched_tokens=args.max_num_batched_tokens,
               max_model_len=args.input_len + args.output_len + args.block_size,
               gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
               enable_prefix_caching=not args.no_prefix_caching, enforce_eager=args.enforce_eager,
               async_scheduling=args.async_scheduling)


def params(max_tokens: int):
    from qinfer.sampling_params import SamplingParams

    return SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True)


def run_throughput(llm, args, ceilings: dict, cfg: dict, flops: float | None = None, vocab: int = PROMPT_VOCAB) -> dict:
    """flops: the workload's matmul FLOPs (default: workload_flops of this dense shape)."""
    llm.generate(random_prompts(8, args.input_len, seed=1, vocab=vocab), params(8), use_tqdm=False)  # warm-up
    prompts = random_prompts(args.num_requests, args.input_len, vocab=vocab)
    before = llm.engine.stats
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = llm.generate(prompts, params(args.output_len), use_tqdm=False)
    elapsed = time.perf_counter() - start
    after = llm.engine.stats
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    assert out_tokens == args.num_requests * args.output_len, "ignore_eos must give every token"
    if flops is None:
        flops = workload_flops(cfg, args.num_requests, args.input_len, args.output_len)
    roof_s = flops / ceilings["matmul_flops"]
    return dict(num_requests=args.num_requests, elapsed_s=elapsed, output_tok_s=out_tokens / elapsed,
                total_tok_s=(out_tokens + args.num_requests * args.input_len) / elapsed,
                roofline_output_tok_s=out_tokens / roof_s, pct_of_roofline=100 * roof_s / elapsed,
                steps=after.num_steps - before.num_steps,
                # Time of step() outside execute_model (scheduling, outputs), over the whole run.
                outside_executor_s=(after.step_time_s - before.step_time_s)
                - (after.executor_time_s - before.executor_time_s))


def run_latency(llm, args, ceilings: dict, cfg: dict, floor_bytes: int | None = None, vocab: int = PROMPT_VOCAB) -> dict:
    """Batch 1: time of each engine step; the first is prefill + first token."""
    engine = llm.engine
    engine.add_request("warm", None, params(16), prompt_token_ids=random_prompts(1, args.input_len, 2, vocab)[0])
    while engine.has_unfinished_requests():
        engine.step()
    engine.add_request("lat", None, params(args.output_len),
                       prompt_token_ids=random_prompts(1, args.input_len, 3, vocab)[0])
    stamps = [time.perf_counter()]
    while engine.has_unfinished_requests():
        engine.step()
        stamps.append(time.perf_counter())
    decode_ms = 1e3 * (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    floor_ms = 1e3 * (floor_bytes or weight_bytes(cfg)) / ceilings["copy_bytes_s"]
    return dict(prefill_ms=1e3 * (stamps[1] - stamps[0]), decode_ms_per_token=decode_ms,
                floor_ms=floor_ms, ratio_to_floor=decode_ms / floor_ms, steps=len(stamps) - 1)


class StepTimer:
    """Wraps engine and runner methods to split decode steps into host (CPU) work and device time.

    Per step, CUDA events mark: `launch` just before the forward's kernels (after the step's
    input copies), `forward_end` after the forward, `end` after the LM head and sampler. The
    device is idle from the previous step's `end` until this step's `launch` is reached: that gap
    is the host work the device waits for (all of it in synchronous mode; under async scheduling
    only what the previous step's device time did not hide).
    """

    def __init__(self, engine):
        self.engine, self.runner = engine, engine.executor.runner
        self.totals: dict[str, float] = {}
        self._wrap(engine.scheduler, "schedule", "schedule")
        self._wrap(engine.scheduler, "update_from_output", "update_output")
        self._wrap(engine.output_processor, "process", "update_output")
        self._wrap(self.runner.input_batch, "update", "input_prep")
        self._wrap(self.runner.input_batch, "prepare", "input_prep")
        self._events: dict[str, torch.cuda.Event] = {}
        self.last_batch = (0, 0)                            # (requests, tokens) of the last schedule
        schedule, run_model, run_step = engine.scheduler.schedule, self.runner._run_model, self.runner._run_step

        def remember(*a, **kw):
            scheduler_output = schedule(*a, **kw)
            self.last_batch = (len(scheduler_output.num_scheduled_tokens), scheduler_output.total_num_scheduled_tokens)
            return scheduler_output

        def marked_forward(inputs):
            self._mark("launch")
            hidden = run_model(inputs)
            self._mark("forward_end")
            return hidden

        def marked_step(*a, **kw):
            result = run_step(*a, **kw)
            self._mark("end")
            return result
        engine.scheduler.schedule, self.runner._run_model, self.runner._run_step = remember, marked_forward, marked_step

    def _mark(self, name: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._events[name] = event

    def _wrap(self, obj, name: str, key: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.totals[key] = self.totals.get(key, 0.0) + time.perf_counter() - start
        setattr(obj, name, timed)

    def step(self) -> dict:
        """One engine step: wall s, host s per part, its events, (requests, tokens) launched."""
        self.totals, self._events = {}, {}
        start = time.perf_counter()
        self.engine.step()
        return dict(wall=time.perf_counter() - start, host=dict(self.totals), events=dict(self._events),
                    batch=self.last_batch)


def run_breakdown(timer: StepTimer, args, n: int, async_scheduling: bool) -> dict:
    """Decode-only steps with all n requests running (the prefills excluded).

    Both modes run on one engine: the scheduling mode is switched between runs (nothing is in
    flight then), which saves loading the model twice.
    """
    engine = timer.engine
    engine.async_scheduling = async_scheduling
    for i, ids in enumerate(random_prompts(n, args.input_len, seed=4)):
        engine.add_request(f"bd{i}", None, params(args.breakdown_output_len), prompt_token_ids=ids)
    rows = []
    while engine.has_unfinished_requests():
        rows.append(timer.step())
    torch.cuda.synchronize()
    # Consecutive launched decode steps of the full batch: the device's period, busy and idle time.
    pairs = [(a, b) for a, b in zip(rows, rows[1:]) if a["batch"] == b["batch"] == (n, n)
             and "end" in a["events"] and {"launch", "end"} <= b["events"].keys()]
    mean = lambda xs: sum(xs) / max(len(xs), 1)             # noqa: E731
    ms = lambda a, b: a.elapsed_time(b)                      # noqa: E731  (ms between two events)
    period = mean([ms(a["events"]["end"], b["events"]["end"]) for a, b in pairs])
    idle = mean([ms(a["events"]["end"], b["events"]["launch"]) for a, b in pairs])
    forward = mean([ms(b["events"]["launch"], b["events"]["forward_end"]) for _, b in pairs])
    decode = [r for r in rows if r["batch"] == (n, n)]
    part_ms = {k: 1e3 * mean([r["host"].get(k, 0.0) for r in decode])
               for k in ("schedule", "update_output", "input_prep")}
    host_ms = sum(part_ms.values())
    return dict(batch=n, async_scheduling=engine.async_scheduling, steps_averaged=len(pairs), step_ms=period,
                gpu_forward_ms=forward, gpu_lm_head_sampler_ms=period - idle - forward,
                device_idle_ms=idle, cpu_share_pct=100 * idle / period,
                host_work_ms=host_ms, host_work_pct=100 * host_ms / period,
                **{f"{k}_ms": v for k, v in part_ms.items()})


def run_breakdowns(llm, args, results: dict) -> None:
    """Every --breakdown-batches size in every --breakdown-modes mode, saved as each ends. The
    timer's wrappers hold the engine: it is dropped with this frame, before the HF part."""
    timer = StepTimer(llm.engine)
    for n in [int(b) for b in args.breakdown_batches.split(",")]:
        for mode in args.breakdown_modes.split(","):
            results[f"breakdown_{mode}_b{n}"] = run_breakdown(timer, args, n, async_scheduling=mode == "async")
            save(results, args.out)


def run_hf(model_dir: Path, args) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16, device_map="cuda")
    ids = torch.tensor(random_prompts(args.hf_batch, args.input_len, seed=5), device="cuda")
    kw = dict(do_sample=True, temperature=1.0, top_k=0, pad_token_id=pad_token_id(hf_config(args.shape)))
    warm = ids[:2]
    model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, min_new_tokens=4, **kw)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.output_len,
                         min_new_tokens=args.output_len, **kw)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    new = (out.shape[1] - args.input_len) * args.hf_batch
    return dict(batch=args.hf_batch, elapsed_s=elapsed, output_tok_s=new / elapsed,
                total_tok_s=(new + args.hf_batch * args.input_len) / elapsed)


# ---- driver --------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--model-dir", type=Path, default=None, help="default /tmp/qinfer-models/SHAPE")
    p.add_argument("--parts", default="throughput,latency,breakdown,hf")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--breakdown-output-len", type=int, default=64)
    p.add_argument("--breakdown-batches", default="256", help="batch sizes of the breakdown part")
    p.add_argument("--breakdown-modes", default="sync,async", help="scheduling modes of the breakdown part")
    p.add_argument("--hf-batch", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="EngineConfig.async_scheduling (default: the engine's, on for one GPU)")
    p.add_argument("--engine-defaults", action="store_true",
                   help="the engine's own settings (device-sized batches, the model's context); the flags above are ignored")
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    parts = set(args.parts.split(","))
    model_dir = args.model_dir or Path("/tmp/qinfer-models") / args.shape
    t0 = time.perf_counter()
    make_model_dir(args.shape, model_dir)
    cfg = hf_config(args.shape)
    results = dict(shape=args.shape, device=torch.cuda.get_device_name(), args=vars(args) | {"model_dir": str(model_dir)},
                   model_dir_s=time.perf_counter() - t0)
    ceilings = dict(copy_bytes_s=copy_bandwidth(), matmul_flops=matmul_rate())
    results["ceilings"] = ceilings
    if parts & {"throughput", "latency", "breakdown"}:
        from qinfer import ops

        llm = make_llm(model_dir, args)
        results["ops"] = ops.implementations("cuda")
        results["engine"] = dict(max_num_seqs=llm.engine.config.max_num_seqs,
                                 max_num_batched_tokens=llm.engine.config.max_num_batched_tokens,
                                 max_model_len=llm.engine.max_model_len)
        results["attention_backend"] = llm.engine.executor.runner.attn_backend.name
        for name, fn in (("throughput", run_throughput), ("latency", run_latency)):
            if name in parts:
                results[name] = fn(llm, args, ceilings, cfg)
                save(results, args.out)                    # each part kept if a later one fails
        if "breakdown" in parts:
            run_breakdowns(llm, args, results)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    if "hf" in parts:
        results["hf"] = run_hf(model_dir, args)
    save(results, args.out)
    report(results)


def save(results: dict, out_dir: str) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    suffix = "_defaults" if results["args"].get("engine_defaults") else ""
    path = Path(out_dir) / f"bench_engine_{results['shape']}{suffix}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"saved {path}: {[k for k in results if k.split('_')[0] in ('throughput', 'latency', 'breakdown', 'hf')]}",
          flush=True)


def report(r: dict) -> None:
    c = r["ceilings"]
    print(f"\n== {r['shape']} on {r['device']}: copy {c['copy_bytes_s'] / 1e12:.2f} TB/s, "
          f"matmul {c['matmul_flops'] / 1e12:.0f} TFLOP/s; ops {r.get('ops')}, attention {r.get('attention_backend')}")
    print(f"engine settings: {r.get('engine')}")
    if "throughput" in r:
        t = r["throughput"]
        print(f"throughput  {t['num_requests']} req: {t['output_tok_s']:.0f} output tok/s, "
              f"{t['total_tok_s']:.0f} total tok/s ({t['elapsed_s']:.1f} s); compute roofline "
              f"{t['roofline_output_tok_s']:.0f} output tok/s ({t['pct_of_roofline']:.0f}% of it); "
              f"{t['steps']} steps, {t['outside_executor_s']:.1f} s of step() outside execute_model")
    if "hf" in r:
        h = r["hf"]
        print(f"HF generate batch {h['batch']}: {h['output_tok_s']:.0f} output tok/s, "
              f"{h['total_tok_s']:.0f} total tok/s")
    if "latency" in r:
        lat = r["latency"]
        print(f"latency b=1 {lat['decode_ms_per_token']:.2f} ms/token, floor {lat['floor_ms']:.2f} ms "
              f"({lat['ratio_to_floor']:.2f}x); prefill {lat['prefill_ms']:.1f} ms")
    for b in (r[k] for k in r if k.startswith("breakdown_")):
        mode = "async" if b["async_scheduling"] else "sync"
        print(f"decode step b={b['batch']} ({mode}): {b['step_ms']:.2f} ms; GPU forward {b['gpu_forward_ms']:.2f} ms, "
              f"LM head + sampler {b['gpu_lm_head_sampler_ms']:.2f} ms; GPU idle waiting for the CPU "
              f"{b['device_idle_ms']:.2f} ms = {b['cpu_share_pct']:.1f}% of the step; host work "
              f"{b['host_work_ms']:.2f} ms = {b['host_work_pct']:.1f}% (schedule {b['schedule_ms']:.2f}, "
              f"update/output {b['update_output_ms']:.2f}, input prep {b['input_prep_ms']:.2f})")


if __name__ == "__main__":
    main()
