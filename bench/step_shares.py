"""Where a run's step time goes: steps replayed from CUDA graphs vs eager ones, and the sampler.

StepShares(runner) wraps ModelRunner._run_step (the whole step: input copies, forward, LM
head, sampler), runner.sampler and runner.cuda_graphs.run. On a GPU, CUDA events mark each
step's start and end and the sampler's, read once at the end (no sync inside the run); a
step is a graph step when it replayed a graph. On the CPU the clock is perf_counter (every
step eager). Shares are of the summed step time (device time between a step's marks).
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

        def timed_step(*args, **kwargs):
            self._current = dict(start=self.clock.mark(), graph=False, sampler=[])
            result = run_step(*args, **kwargs)
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
                    sampler_ms_per_step=sum(sampler_ms) / max(len(self.steps), 1))
