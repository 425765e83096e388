"""The varied workload of the speed benchmarks (issue 13): what a queue fleet sees, not lockstep.

- prompt and output lengths lognormal (median and sigma below), clipped to [min, max]:
  most jobs short, a long tail up to max_prompt_len / max_output_len (3k / 1k at full size);
- a share of the jobs (40%) start with one of a few long shared system prompts (prefix
  caching territory), the rest of their prompt their own;
- every job samples with temperature 0.8 and top_p 0.95, ignore_eos so the drawn output
  length is the real one (random weights would stop anywhere).

`scale` shrinks every length for the CPU smoke runs (a tiny model of 256 positions).
Token contents come from their own seed: two runs can share lengths (the same work) while
their system prompts differ (no prefix-cache hits from the other run).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

FULL = dict(max_prompt_len=3072, max_output_len=1024, prompt_median=384, output_median=160,
            system_lens=(1536, 1024, 768, 512))
SIGMA = 0.9                 # lognormal shape: p99 ~ 8x the median
SHARED_SHARE = 0.4
SAMPLING = dict(temperature=0.8, top_p=0.95, ignore_eos=True)


@dataclass
class Job:
    prompt_token_ids: list[int]
    max_tokens: int
    system_prompt: int | None      # which shared system prompt it starts with (None: none)

    def sampling(self) -> dict:
        return dict(SAMPLING, max_tokens=self.max_tokens)


def lognormal_len(rng: random.Random, median: float, low: int, high: int) -> int:
    return max(low, min(high, round(rng.lognormvariate(0.0, SIGMA) * median)))


def varied_jobs(n: int, vocab_size: int, seed: int = 0, content_seed: int | None = None,
                scale: float = 1.0) -> list[Job]:
    """n jobs; lengths from `seed`, token ids from `content_seed` (default: seed)."""
    rng, ids = random.Random(seed), random.Random(seed if content_seed is None else content_seed)
    size = {k: ([max(1, round(x * scale)) for x in v] if isinstance(v, tuple) else max(1, round(v * scale)))
            for k, v in FULL.items()}
    token = lambda: ids.randrange(vocab_size)                                     # noqa: E731
    systems = [[token() for _ in range(length)] for length in size["system_lens"]]
    jobs = []
    for _ in range(n):
        system = rng.randrange(len(systems)) if rng.random() < SHARED_SHARE else None
        prefix = systems[system] if system is not None else []
        own = lognormal_len(rng, size["prompt_median"], 4, size["max_prompt_len"] - len(prefix))
        max_tokens = lognormal_len(rng, size["output_median"], 1, size["max_output_len"])
        jobs.append(Job(prefix + [token() for _ in range(own)], max_tokens, system))
    return jobs


def summary(jobs: list[Job]) -> dict:
    prompts = sorted(len(j.prompt_token_ids) for j in jobs)
    outputs = sorted(j.max_tokens for j in jobs)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]                   # noqa: E731
    return dict(jobs=len(jobs), prompt_tokens=sum(prompts), output_tokens=sum(outputs),
                prompt_p50=pick(prompts, 0.5), prompt_p99=pick(prompts, 0.99), prompt_max=prompts[-1],
                output_p50=pick(outputs, 0.5), output_p99=pick(outputs, 0.99), output_max=outputs[-1],
                shared_prefix_share=sum(j.system_prompt is not None for j in jobs) / len(jobs))
