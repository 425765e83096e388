"""Where a run's step time goes: steps replayed from CUDA graphs vs eager ones, and the sampler.

StepShares(runner) wraps ModelRunner._run_step (the whole step: input copies, forward, LM
head, sampler), runner.sampler and runner.cuda_graphs.run. On a GPU, CUDA events mark each
step's start and end and the sampler's, read once at the end (no sync inside the run); a
step is a graph step when it replayed a graph. On the CPU the clock is perf_counter (every
step eager). Shares are of the summed step time (device time between a step's marks).
`by_kind` splits that time by what the steps carried: decode-only steps by batch size, steps
with prefill tokens by token count (with their decode rows and mean decode context), so a
run says whether its time went to big prefill steps, full decode batches or a thin tail.
"""
from __future__ import annotations

import time

import torch


class _Clock:
    def __init__(self, device: torch.device):
        self.is_cuda = device.type == "cuda"

    def mark(self):
        if not self.is_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.is_cuda else 1e3 * (end - start)


class StepShares:
    def __init__(self, runner):
        self.runner, self.clock = runner, _Clock(runner.device)
        self.steps: list[dict] = []        # per step: marks and whether it replayed a graph
        self._current: dict | None = None
        self._wrap_step()
        self._wrap_sampler()
        if runner.cuda_graphs is not None:
            self._wrap_graphs(runner.cuda_graphs)

    def _wrap_step(self) -> None:
        run_step = self.runner._run_step

        def timed_step(scheduler_output, *args, **kwargs):
            self._current = dict(start=self.clock.mark(), graph=False, sampler=[], **_composition(scheduler_output))
            result = run_step(scheduler_output, *args, **kwargs)
            self._current["end"] = self.clock.mark()
            self.steps.append(self._current)
            return result
        self.runner._run_step = timed_step

    def _wrap_sampler(self) -> None:
        sampler = self.runner.sampler

        def timed_sampler(logits, md):
            start = self.clock.mark()
            out = sampler(logits, md)
            self._current["sampler"].append((start, self.clock.mark()))
            return out
        self.runner.sampler = timed_sampler

    def _wrap_graphs(self, graphs) -> None:
        replay = graphs.run

        def marked_replay(*args, **kwargs):
            self._current["graph"] = True
            return replay(*args, **kwargs)
        graphs.run = marked_replay

    def reset(self) -> None:
        self.steps = []

    def report(self) -> dict:
        if self.clock.is_cuda:
            torch.cuda.synchronize()
        step_ms = [self.clock.ms(s["start"], s["end"]) for s in self.steps]
        sampler_ms = [sum(self.clock.ms(a, b) for a, b in s["sampler"]) for s in self.steps]
        eager_ms = sum(ms for ms, s in zip(step_ms, self.steps) if not s["graph"])
        total = sum(step_ms) or 1.0
        num_graph = sum(s["graph"] for s in self.steps)
        return dict(steps=len(self.steps), graph_steps=num_graph, eager_steps=len(self.steps) - num_graph,
                    step_time_s=total / 1e3, eager_step_share_pct=100 * eager_ms / total,
                    sampler_share_pct=100 * sum(sampler_ms) / total,
                    sampler_ms_per_step=sum(sampler_ms) / max(len(self.steps), 1),
                    by_kind=_by_kind(self.steps, step_ms))


DECODE_BATCHES = (1, 8, 32, 128, 256, 512, 1024, 1 << 30)
PREFILL_TOKENS = (512, 2048, 8192, 1 << 30)


def _composition(plan) -> dict:
    """Rows, tokens and the decode rows' summed context of one step's plan."""
    counts = plan.num_scheduled_tokens
    decode_rows = sum(1 for n in counts.values() if n == 1)
    cached = {r.req_id: r.num_computed_tokens for r in plan.cached_requests}
    decode_context = sum(cached.get(rid, 0) for rid, n in counts.items() if n == 1)
    return dict(rows=len(counts), tokens=sum(counts.values()), decode_rows=decode_rows, decode_context=decode_context)


def _bucket(value: int, bounds: tuple[int, ...]) -> tuple[int, str]:
    """The bucket of bounds holding value: its lower end (for ordering) and its name."""
    low = 0
    for high in bounds:
        if value <= high:
            return low + 1, (f"{low + 1}-{high}" if high < 1 << 30 else f">{low}")
        low = high
    raise AssertionError(value)


def _by_kind(steps: list[dict], step_ms: list[float]) -> list[dict]:
    """Per kind of step (decode-only by batch size, with prefill tokens by token count): count,
    share of the step time, mean ms, tokens, decode rows and their mean context."""
    groups: dict[tuple, dict] = {}
    total = sum(step_ms) or 1.0
    for s, ms in zip(steps, step_ms):
        is_decode = s["tokens"] == s["rows"]
        low, name = _bucket(s["rows"], DECODE_BATCHES) if is_decode else _bucket(s["tokens"], PREFILL_TOKENS)
        key = (not is_decode, low)
        g = groups.setdefault(key, dict(kind=f"decode, batch {name}" if is_decode else f"prefill, tokens {name}",
                                        steps=0, ms=0.0, tokens=0, decode_rows=0, decode_context=0))
        g["steps"] += 1
        g["ms"] += ms
        for field in ("tokens", "decode_rows", "decode_context"):
            g[field] += s[field]
    return [dict(kind=g["kind"], steps=g["steps"], share_pct=100 * g["ms"] / total, ms_per_step=g["ms"] / g["steps"],
                 tokens_per_step=g["tokens"] / g["steps"], decode_rows_per_step=g["decode_rows"] / g["steps"],
                 mean_decode_context=g["decode_context"] / max(g["decode_rows"], 1))
            for _, g in sorted(groups.items())]


def print_by_kind(rows: list[dict]) -> None:
    print(f"  {'step kind':<26}{'steps':>7}{'share':>8}{'ms/step':>9}{'tokens':>8}{'decodes':>9}{'ctx':>7}")
    for r in rows:
        print(f"  {r['kind']:<26}{r['steps']:>7}{r['share_pct']:>7.1f}%{r['ms_per_step']:>9.2f}"
              f"{r['tokens_per_step']:>8.0f}{r['decode_rows_per_step']:>9.0f}{r['mean_decode_context']:>7.0f}")
