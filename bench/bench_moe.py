"""Mixture-of-experts benchmarks on a GPU (issue 16), one command:

    python bench/bench_moe.py [--parts kernel,engine] [--models qwen3-30b-a3b,mixtral-8x7b]
        [--num-requests 1000] [--input-len 512] [--output-len 256] [--sweep] [--out DIR]
        [--engine-parts latency,profile,throughput] [--use OP=IMPL,...]

kernel  ops.fused_experts alone (Triton grouped GEMMs, compiled alignment) on each model's expert
        shapes at 1 to 4,096 tokens with random routings, and up to 16 tokens the compiled
        experts GEMVs (config "gemv") that serve decode: TFLOP/s (6 T k H I FLOPs)
        against the measured bf16 matmul rate, and GB/s of the expert weights the tokens touch
        against the measured copy bandwidth. Calls are replayed from a CUDA graph, each on another
        routing (so a 1-token call reads its experts from memory, not L2). --sweep times other tile
        configs too (sweep_configs; the default is qinfer.ops.fused_moe_triton.gemm_config); at 4,096
        tokens each Triton config's pieces (alignment, gate/up GEMM, down GEMM, k-sum) are also timed
        alone.
engine  random bf16 weights of the real shapes, filled on the GPU (no checkpoint is written:
        Mixtral-8x7B's 93 GB would not fit the disk; the runner's load_weights is replaced by a
        random fill), then bench_engine_gpu's offline throughput (num_requests random prompts,
        temperature 1.0, ignore_eos) and batch-1 decode against the bandwidth floor: the bytes of
        the weights one decoded token reads (attention, router, the top-k experts, norms, LM head)
        over the copy bandwidth. --engine-parts picks latency, profile (one batch-1 decode step's
        kernels, under torch.profiler) and throughput; --use OP=IMPL forces an op's implementation
        (fused_experts=triton: the grouped GEMMs at every token count).
Prints a table and writes bench_moe.json to --out ($OUT on the device machine).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine_gpu as dense  # noqa: E402  (ceilings, engine parts, tokenizer)

# config.json of each model (as published; the expert counts and widths are what the kernel sees).
MODELS = {
    "qwen3-30b-a3b": dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", vocab_size=151936, hidden_size=2048,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        intermediate_size=6144, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, attention_bias=False,
        hidden_act="silu", bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16"),
    "mixtral-8x7b": dict(
        architectures=["MixtralForCausalLM"], model_type="mixtral", vocab_size=32000, hidden_size=4096,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16"),
}
KERNEL_TOKENS = (1, 2, 4, 8, 16, 256, 4096)
# Token counts at which the experts GEMVs of csrc/moe/experts_gemv.cu are timed next to the grouped
# GEMMs: where they win is where ops.fused_experts routes to them (ops/compiled.py).
GEMV_TOKENS = (1, 2, 4, 8, 16)


def sweep_configs(num_tokens: int, default: dict) -> list[dict]:
    """--sweep's extra tile configs: at every size the default with every tile loaded by pointers
    (TMA off), and at 4,096 tokens the TMA tiles' pipeline depths (session 11 swept the plain tile
    shapes and the tail tiles: bench/NOTES.md)."""
    configs = [dict(default, TMA=False)]
    if num_tokens == 4096:
        down = default.get("down", {})
        configs += [dict(default, num_stages=3), dict(default, down=dict(down, num_stages=3))]
    return configs


def expert_shape(cfg: dict) -> tuple[int, int, int, int]:
    """(num_experts, top_k, hidden, expert intermediate)."""
    num_experts = cfg.get("num_local_experts") or cfg["num_experts"]
    return (num_experts, cfg["num_experts_per_tok"], cfg["hidden_size"],
            cfg.get("moe_intermediate_size") or cfg["intermediate_size"])


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def attention_params(cfg: dict) -> int:
    h, d = cfg["hidden_size"], head_dim(cfg)
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return h * (q + 2 * kv) + q * h


def active_layer_params(cfg: dict) -> int:
    """Parameters one token's pass through a decoder layer multiplies: attention, router, top-k experts."""
    num_experts, top_k, h, inter = expert_shape(cfg)
    return attention_params(cfg) + num_experts * h + top_k * 3 * h * inter


def decode_floor_bytes(cfg: dict) -> int:
    """bf16 bytes one decoded token reads: every layer's active weights and norms, the final norm,
    its embedding row and the LM head."""
    h, d, layers = cfg["hidden_size"], head_dim(cfg), cfg["num_hidden_layers"]
    norms = 2 * h + (2 * d if cfg["model_type"] == "qwen3_moe" else 0)
    return 2 * (layers * (active_layer_params(cfg) + norms) + h + h + cfg["vocab_size"] * h)


def workload_flops(cfg: dict, num_requests: int, input_len: int, output_len: int) -> float:
    """Matmul FLOPs: each fed token through the active weights, the LM head per sampled token,
    causal attention (QK^T and PV) over the context."""
    tokens = input_len + output_len - 1
    linear = 2 * cfg["num_hidden_layers"] * active_layer_params(cfg) * tokens
    lm_head = 2 * cfg["vocab_size"] * cfg["hidden_size"] * output_len
    attention = 4 * cfg["num_attention_heads"] * head_dim(cfg) * cfg["num_hidden_layers"] * tokens * (tokens + 1) / 2
    return num_requests * (linear + lm_head + attention)


# ---- the kernel alone ----------------------------------------------------------------------

def random_routings(num_tokens: int, num_experts: int, top_k: int, count: int):
    """count (weights, ids) pairs: k distinct uniform experts per token, renormalised weights."""
    routings = []
    for _ in range(count):
        ids = torch.rand(num_tokens, num_experts, device="cuda").topk(top_k, dim=-1).indices.int()
        weights = torch.rand(num_tokens, top_k, device="cuda")
        routings.append((weights / weights.sum(-1, keepdim=True), ids))
    return routings


def time_fused_experts(x, w13, w2, routings, config) -> float:
    """Median ms of one fused_experts call, from a CUDA graph of one call per routing. config
    "gemv": the compiled experts GEMVs; otherwise the Triton grouped GEMMs with that tile config
    (None: gemm_config's)."""
    from qinfer.ops.fused_moe_triton import fused_experts_triton

    def calls():
        for weights, ids in routings:
            if config == "gemv":
                torch.ops.qinfer.moe_down_gemv(torch.ops.qinfer.moe_gate_up_gemv(x, w13, ids), w2, weights, ids)
            else:
                fused_experts_triton(x, w13, w2, weights, ids, config=config)

    calls()                                                   # compile, outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    ms = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
    return ms / len(routings)


def time_parts(x, w13, w2, routings, config) -> dict:
    """us per call of each piece of the Triton path (alignment, gate/up GEMM, down GEMM, the k-sum),
    each replayed alone from a CUDA graph over the routings."""
    from qinfer.ops import fused_moe_triton as moe
    from qinfer.ops.registry import dispatch

    top_k, num_experts = routings[0][1].shape[1], w13.shape[0]
    gate_up, down = moe.gemm_configs(config)
    align = dispatch("moe_align_block_size", routings[0][1])
    aligned = [align(ids, num_experts, gate_up["BLOCK_M"]) for _, ids in routings]
    inters = [moe.moe_gate_up(x, w13, a, top_k, gate_up) for a in aligned]
    y = moe.moe_down(inters[0], w2, routings[0][0], aligned[0], down)
    pieces = {
        "align": lambda i: align(routings[i][1], num_experts, gate_up["BLOCK_M"]),
        "gate_up": lambda i: moe.moe_gate_up(x, w13, aligned[i], top_k, gate_up),
        "down": lambda i: moe.moe_down(inters[i], w2, routings[i][0], aligned[i], down),
        "sum": lambda i: moe.moe_sum(y, top_k),
    }
    times = {}
    for name, piece in pieces.items():
        for i in range(len(routings)):
            piece(i)                                           # compile, outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(len(routings)):
                piece(i)
        times[name] = 1e3 * triton.testing.do_bench(graph.replay, warmup=25, rep=200,
                                                    return_mode="median") / len(routings)
    return times


def kernel_row(name, cfg, num_tokens, config, ms, routings, ceilings) -> dict:
    num_experts, top_k, h, inter = expert_shape(cfg)
    flops = 6 * num_tokens * top_k * h * inter
    touched = sum(len(ids.unique()) for _, ids in routings) / len(routings)
    weight_bytes = touched * 3 * h * inter * 2
    return dict(model=name, tokens=num_tokens, config=config or "default", us=ms * 1e3,
                tflops=flops / ms / 1e9, pct_matmul=100 * flops / (ms * 1e-3) / ceilings["matmul_flops"],
                experts_touched=touched, weight_gb_s=weight_bytes / ms / 1e6,
                pct_copy=100 * weight_bytes / (ms * 1e-3) / ceilings["copy_bytes_s"])


def run_kernel(name: str, args, ceilings: dict) -> list[dict]:
    from qinfer.ops.fused_moe_triton import gemm_config

    cfg = MODELS[name]
    num_experts, top_k, h, inter = expert_shape(cfg)
    w13 = torch.randn(num_experts, 2 * inter, h, device="cuda", dtype=torch.bfloat16) * h ** -0.5
    w2 = torch.randn(num_experts, h, inter, device="cuda", dtype=torch.bfloat16) * inter ** -0.5
    rows = []
    for num_tokens in KERNEL_TOKENS:
        x = torch.randn(num_tokens, h, device="cuda", dtype=torch.bfloat16)
        routings = random_routings(num_tokens, num_experts, top_k, 8 if num_tokens <= 256 else 2)
        default = gemm_config(num_tokens * top_k / num_experts)
        configs = ([None] + (sweep_configs(num_tokens, default) if args.sweep else [])
                   + (["gemv"] if num_tokens in GEMV_TOKENS and hasattr(torch.ops.qinfer, "moe_gate_up_gemv") else []))
        for config in configs:
            try:
                ms = time_fused_experts(x, w13, w2, routings, config)
            except Exception as err:                          # a config the chip cannot take
                print(f"{name} T={num_tokens} {config}: {type(err).__name__}: {err}"[:300], flush=True)
                continue
            row = kernel_row(name, cfg, num_tokens, config, ms, routings, ceilings)
            row["default_config"] = default
            if num_tokens == KERNEL_TOKENS[-1] and config != "gemv":
                row["parts_us"] = time_parts(x, w13, w2, routings, config or default)
            rows.append(row)
            print(json.dumps(row), flush=True)
    del w13, w2
    torch.cuda.empty_cache()
    return rows


# ---- the engine ----------------------------------------------------------------------------

def make_config_dir(name: str, out: Path) -> Path:
    """config.json and a word-level tokenizer over the whole vocabulary; no weights."""
    cfg = MODELS[name]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    vocab = cfg["vocab_size"]
    dense.save_tokenizer(out, vocab, (cfg["bos_token_id"], cfg["eos_token_id"], vocab - 1))
    return out


def fill_random(model: torch.nn.Module, model_dir) -> None:
    """Stands in for weight_loader.load_weights: norms 1, every other weight N(0, 0.02), on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)


@contextlib.contextmanager
def random_weights():
    from qinfer.executor import model_runner

    original, model_runner.load_weights = model_runner.load_weights, fill_random
    try:
        yield
    finally:
        model_runner.load_weights = original


def profile_batch1(llm, cfg: dict, steps: int = 20) -> dict:
    """GPU time of a batch-1 decode step (512-token prompt) by kernel, under torch.profiler."""
    import bench_decode_steps as steps_bench

    engine = llm.engine
    steps_bench.decode_only_steps(engine, 1, 512, "greedy", "profile", steps)
    profile = steps_bench.profile_kernels(engine, steps, on_gpu=True)
    engine.abort_request(["profile-0"])
    while engine.has_unfinished_requests():
        engine.step()
    layers = cfg["num_hidden_layers"]
    profile["per_layer_us"] = {name: 1e3 * ms / layers for name, ms, _ in profile["top_kernels"]}
    return profile


def print_profile(name: str, profile: dict) -> None:
    print(f"{name} batch-1 decode step: {profile['kernel_ms_per_step']:.3f} ms of kernels; top kernels "
          f"(ms per step, us per layer):")
    for kernel, ms, cls in profile["top_kernels"]:
        print(f"  {ms:8.3f} ms {profile['per_layer_us'][kernel]:7.1f} us  [{cls}] {kernel}")


def run_engine(name: str, args, ceilings: dict) -> dict:
    from qinfer import ops

    for override in filter(None, args.use.split(",")):   # e.g. fused_experts=triton: an A/B in one call
        op, impl = override.split("=")
        ops.use_implementation(op, impl)
    cfg = MODELS[name]
    model_dir = make_config_dir(name, Path("/tmp/qinfer-moe") / name)
    start = time.perf_counter()
    with random_weights():
        llm = dense.make_llm(model_dir, args)
    result = dict(engine_start_s=time.perf_counter() - start, ops=ops.implementations("cuda"),
                  kv_blocks=llm.engine.executor.runner.kv_cache.shape[2])
    # Latency first: it is short, and its figure survives a throughput run cut off by a time limit.
    result["latency"] = dense.run_latency(llm, args, ceilings, cfg, floor_bytes=decode_floor_bytes(cfg),
                                          vocab=cfg["vocab_size"])
    result["latency"]["floor_bytes"] = decode_floor_bytes(cfg)
    print(name, json.dumps(result), flush=True)
    if "profile" in args.engine_parts:
        result["profile"] = profile_batch1(llm, cfg)
        print_profile(name, result["profile"])
    if "throughput" in args.engine_parts:
        flops = workload_flops(cfg, args.num_requests, args.input_len, args.output_len)
        result["throughput"] = dense.run_throughput(llm, args, ceilings, cfg, flops=flops, vocab=cfg["vocab_size"])
        print(name, json.dumps(result["throughput"]), flush=True)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return result


# ---- driver --------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="kernel,engine")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sweep", action="store_true", help="time extra tile configs in the kernel part")
    p.add_argument("--engine-parts", default="latency,throughput",
                   help="of the engine part: latency (always), profile (a batch-1 step by kernel), throughput")
    p.add_argument("--use", default="", help="OP=IMPL[,...]: force op implementations in the engine (A/B)")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    p.set_defaults(engine_defaults=False)   # bench_engine_gpu.make_llm's switch: these runs set every knob
    return p.parse_args()


def save(results: dict, out_dir: str) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "bench_moe.json").write_text(json.dumps(results, indent=1, default=str))


def report(r: dict) -> None:
    c = r["ceilings"]
    print(f"\n== MoE on {r['device']}: copy {c['copy_bytes_s'] / 1e12:.2f} TB/s, "
          f"matmul {c['matmul_flops'] / 1e12:.0f} TFLOP/s")
    if r.get("kernel"):
        print("| model | tokens | config | us | TFLOP/s | % matmul | experts touched | GB/s | % copy |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k in r["kernel"]:
            cfg = k["config"] if isinstance(k["config"], str) else "/".join(str(v) for v in k["config"].values())
            print(f"| {k['model']} | {k['tokens']} | {cfg} | {k['us']:.1f} | {k['tflops']:.0f} | "
                  f"{k['pct_matmul']:.0f}% | {k['experts_touched']:.1f} | {k['weight_gb_s']:.0f} | {k['pct_copy']:.0f}% |")
        for k in r["kernel"]:
            if "parts_us" in k:
                print(f"{k['model']} T={k['tokens']} {k['config']}: us per piece "
                      + ", ".join(f"{n} {us:.1f}" for n, us in k["parts_us"].items()))
    for name, e in r.get("engine", {}).items():
        lat, t = e["latency"], e.get("throughput")
        through = (f"{t['num_requests']} req {t['output_tok_s']:.0f} output tok/s, {t['total_tok_s']:.0f} total "
                   f"({t['elapsed_s']:.1f} s, {t['pct_of_roofline']:.0f}% of compute roofline); " if t else "")
        print(f"{name}: {through}b=1 decode {lat['decode_ms_per_token']:.2f} ms/token, floor {lat['floor_ms']:.2f} ms "
              f"({lat['ratio_to_floor']:.2f}x); engine start {e['engine_start_s']:.0f} s; fused_experts "
              f"{e['ops'].get('fused_experts')}")


def main() -> None:
    args = parse_args()
    parts, names = set(args.parts.split(",")), args.models.split(",")
    results = dict(device=torch.cuda.get_device_name(), args=vars(args),
                   ceilings=dict(copy_bytes_s=dense.copy_bandwidth(), matmul_flops=dense.matmul_rate()))
    if "kernel" in parts:
        results["kernel"] = [row for name in names for row in run_kernel(name, args, results["ceilings"])]
        save(results, args.out)
    if "engine" in parts:
        results["engine"] = {}
        for name in names:
            try:
                results["engine"][name] = run_engine(name, args, results["ceilings"])
            except Exception:                                # the next model still runs
                traceback.print_exc()
            save(results, args.out)
    save(results, args.out)
    report(results)


if __name__ == "__main__":
    main()
