"""Per-step CPU cost of the engine around the model: scheduling, input prep, sampler, outputs.

    python bench/bench_step_overhead.py [--batch-sizes 64 256 --steps 60 --repeat 3]
    python bench/bench_step_overhead.py --device-ms 2 --async-scheduling   # vs. without the flag

A real LLMEngine on a tiny model directory, with the model forward replaced by a stub that
returns ready-made random logits, so what is timed is the engine's own per-step Python (and
numpy/torch host work). Scenarios per batch size B:
  decode        B running requests, one token each per step, no stop strings
  decode+stop   the same with a stop string per request (text is needed every step)
  mixed         B decodes plus two new 512-token prompts prefilled in the same step
Prints a table (median microseconds per step) and writes bench/results/step_overhead.json.
"sampler" is the sampler call: on the CPU mostly its arithmetic (random draws over [B, V]), which
on a GPU runs on the device; "total_host" is total_cpu without it (the Python/numpy host work).
sampling_md is the host-side building of the sampler's inputs.

--device-ms D emulates a device that needs D ms per forward + sampling, launched without blocking
(the sampler is then an argmax standing in for the device's): the host waits for a step's ids only
where it copies them (synchronous: at once; --async-scheduling: after launching the next step).
"step_wall" is then the wall time per step and "device_idle" the share of it the emulated device
had no forward to run: synchronous ~ host / (host + D), async
~ max(0, host - D) / max(host, D) (over all measured steps: a slow outlier step idles it too).
"device_wait" is excluded from total_cpu. "mixed" adds its prompts between steps, untimed: the
async device keeps running meanwhile, so its step_wall there reads low.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "step_overhead.json"
PROMPT_LEN, MIXED_PROMPT_LEN, NUM_MIXED = 128, 512, 2
# Component -> (object path on the engine, method names). "forward" is the stub, not CPU work.
COMPONENTS = {
    "schedule": ("scheduler", ["schedule"]),
    "input_prep": ("executor.runner.input_batch", ["update", "prepare"]),
    "forward_stub": ("executor.runner", ["_forward"]),
    "sampling_md": ("executor.runner.input_batch", ["sampling_metadata"]),
    "runner_output": ("executor.runner", ["_runner_output"]),
    "update_from_output": ("scheduler", ["update_from_output"]),
    "output_processing": ("output_processor", ["process"]),
}
COLUMNS = ["schedule", "input_prep", "sampling_md", "sampler", "runner_output", "update_from_output",
           "output_processing", "total_cpu", "total_host"]
DEVICE_COLUMNS = ["step_wall", "device_idle"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=60, help="measured steps per scenario")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each scenario this many times, keep the lowest median (steadier on a busy machine)")
    p.add_argument("--label", default="", help="stored with the results (e.g. before / after)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--async-scheduling", action="store_true", help="EngineConfig.async_scheduling=True")
    p.add_argument("--device-ms", type=float, default=0.0,
                   help="emulated device time per forward (0: none; the host never waits)")
    return p.parse_args()


class Timers:
    """Wraps methods of live objects; accumulates nanoseconds per component while enabled."""

    def __init__(self):
        self.ns: dict[str, int] = defaultdict(int)
        self.enabled = False

    def wrap(self, obj, method: str, component: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            if not self.enabled:
                return inner(*args, **kwargs)
            start = time.perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                self.ns[component] += time.perf_counter_ns() - start

        setattr(obj, method, timed)

    def wrap_sampler(self, runner) -> None:
        sampler, timers = runner.sampler, self

        class TimedSampler:
            def __getattr__(self, name):
                return getattr(sampler, name)

            def __call__(self, *args, **kwargs):
                start = time.perf_counter_ns()
                try:
                    return sampler(*args, **kwargs)
                finally:
                    if timers.enabled:
                        timers.ns["sampler"] += time.perf_counter_ns() - start

        runner.sampler = TimedSampler()


def resolve(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def stub_forward(runner, vocab_size: int) -> None:
    """The model costs nothing: logits are drawn once and reused (rows cycled between steps)."""
    import torch

    pool = torch.randn(4, 1024, vocab_size, generator=torch.Generator().manual_seed(0))
    counter = iter(range(10**12))

    def forward(inputs):
        num_sampling = len(inputs.sampling_rows)
        return (pool[next(counter) % 4, :num_sampling] if num_sampling else None), None   # no prompt logprobs

    runner._forward = forward


class EmulatedDevice:
    """A device running one forward + sampling after the other, device_s each.

    Hooks the runner and the executor: the (stub) forward books the device; the host blocks
    (busy-waits, counted as device_wait) where it needs the step's ids: at the end of
    execute_model, or in get() of an async step's output.
    """

    def __init__(self, device_s: float, timers: Timers):
        self.device_s, self.timers = device_s, timers
        self.free_at = self.busy_s = 0.0

    def launch(self) -> None:
        start = max(time.perf_counter(), self.free_at)
        self.free_at = start + self.device_s
        if self.timers.enabled:
            self.busy_s += self.device_s

    def wait(self, ready_at: float) -> None:
        start = time.perf_counter_ns()
        while time.perf_counter() < ready_at:
            pass
        self.timers.ns["device_wait"] += time.perf_counter_ns() - start

    def attach(self, executor) -> None:
        from qinfer.executor.sampler import SamplerOutput

        runner = executor.runner
        forward, execute, execute_async = runner._forward, executor.execute_model, executor.execute_model_async

        def launched_forward(inputs):
            self.launch()
            return forward(inputs)

        def execute_model(scheduler_output):
            output = execute(scheduler_output)
            self.wait(self.free_at)
            return output

        def execute_model_async(scheduler_output):
            output = execute_async(scheduler_output)
            get, ready_at = output.get, self.free_at
            output.get = lambda: (self.wait(ready_at), get())[1]
            return output

        runner._forward = launched_forward
        runner.sampler = lambda logits, md: SamplerOutput(logits.argmax(dim=-1), None)
        executor.execute_model, executor.execute_model_async = execute_model, execute_model_async


def make_engine(model_dir: Path, max_num_seqs: int, async_scheduling: bool, device_ms: float):
    from qinfer.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_kwargs(str(model_dir), dtype="float32", max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=2048, num_kv_blocks=16384,
                                   async_scheduling=async_scheduling)
    stub_forward(engine.executor.runner, engine.vocab_size)
    timers = Timers()
    device = EmulatedDevice(device_ms / 1000, timers)
    if device_ms:
        device.attach(engine.executor)
    for component, (path, methods) in COMPONENTS.items():
        for method in methods:
            timers.wrap(resolve(engine, path), method, component)
    timers.wrap_sampler(engine.executor.runner)
    return engine, timers, device


def prompts(rng: random.Random, n: int, length: int, vocab_size: int) -> list[list[int]]:
    return [[rng.randrange(3, vocab_size) for _ in range(length)] for _ in range(n)]


def run_scenario(model_dir: Path, batch: int, scenario: str, args: argparse.Namespace) -> dict:
    from qinfer import SamplingParams

    num_steps = args.steps
    engine, timers, device = make_engine(model_dir, batch + NUM_MIXED, args.async_scheduling, args.device_ms)
    rng = random.Random(0)
    stop = ["\n\nUser:"] if scenario == "decode+stop" else []
    params = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=2000, stop=stop, seed=None)
    for i, prompt in enumerate(prompts(rng, batch, PROMPT_LEN, engine.vocab_size)):
        engine.add_request(f"r{i}", None, params, prompt_token_ids=prompt)
    while len(engine.scheduler.running) < batch or engine.scheduler.waiting:
        engine.step()
    for _ in range(5):  # warm: every request decoding
        engine.step()
    per_step: dict[str, list[float]] = defaultdict(list)
    num_emitted, device.busy_s, wall_start = 0, 0.0, time.perf_counter()
    short = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=1)
    for step in range(num_steps):
        if scenario == "mixed":
            for j, prompt in enumerate(prompts(rng, NUM_MIXED, MIXED_PROMPT_LEN, engine.vocab_size)):
                engine.add_request(f"m{step}_{j}", None, short, prompt_token_ids=prompt)
        timers.ns.clear()
        timers.enabled = True
        start = time.perf_counter_ns()
        outputs = engine.step()
        elapsed_ns = time.perf_counter_ns() - start
        timers.enabled = False
        num_emitted += len(outputs)
        for name in COLUMNS[:-2]:
            per_step[name].append(timers.ns[name] / 1000)
        per_step["total_cpu"].append((elapsed_ns - timers.ns["forward_stub"] - timers.ns["device_wait"]) / 1000)
        per_step["total_host"].append(per_step["total_cpu"][-1] - timers.ns["sampler"] / 1000)
        per_step["step_wall"].append(elapsed_ns / 1000)
    result = {name: round(statistics.median(values), 1) for name, values in per_step.items()}
    if args.device_ms:   # busy time booked for the measured steps over their wall time
        result["device_idle"] = round(100 * max(0.0, 1 - device.busy_s / (time.perf_counter() - wall_start)), 1)
    result["total_cpu_mean"] = round(statistics.mean(per_step["total_cpu"]), 1)
    result["outputs_per_step"] = num_emitted / num_steps
    return result


def print_table(results: dict, args: argparse.Namespace) -> None:
    columns = COLUMNS + (DEVICE_COLUMNS if args.device_ms else [])
    mode = "async scheduling" if args.async_scheduling else "synchronous"
    device = f", emulated device {args.device_ms} ms per forward (device_idle in %)" if args.device_ms else ""
    print(f"median CPU microseconds per engine step (model forward stubbed out; {mode}{device})")
    print(f"{'scenario':<18}" + "".join(f"{c:>19}" for c in columns))
    for key, row in results.items():
        print(f"{key:<18}" + "".join(f"{row[c]:>19.1f}" for c in columns))


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(1)   # steadier sampler arithmetic; the host work is single-threaded anyway
    from qinfer.testing.tiny_model import make_tiny_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(tmp, "llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                    intermediate_size=128, max_position_embeddings=4096)
        for batch in args.batch_sizes:
            for scenario in ("decode", "decode+stop", "mixed"):
                runs = [run_scenario(model_dir, batch, scenario, args) for _ in range(args.repeat)]
                results[f"{scenario} B={batch}"] = {name: min(run[name] for run in runs) for name in runs[0]}
    print_table(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"label": args.label, "steps": args.steps, "repeat": args.repeat,
                                    "async_scheduling": args.async_scheduling, "device_ms": args.device_ms,
                                    "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
