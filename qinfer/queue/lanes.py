"""Prefix-affinity routing: which lane of its model's queue a job goes to, and which live
worker owns which lane.

A producer (light: no tokenizer) derives an affinity text from the request — its
`affinity_key`, else the chat's system message, else the leading characters of the prompt
— and hashes it to one of NUM_LANES lanes, so jobs sharing a prefix share a lane. Live
workers of a model own lanes by rendezvous hashing over the heartbeat set (a worker that
joins or dies moves only the lanes it wins or held). A worker pulls its own lanes first and
the others' with the capacity left, priority by priority: the prefix cache of the owner is
preferred, and no job waits on a busy owner or an orphaned lane.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from qinfer.queue.keys import NUM_LANES, Keys
from qinfer.schema import JobRequest

_PREFIX_TOKEN_IDS = 64      # leading ids of a prompt given as token ids


def affinity_text(req: JobRequest, prefix_chars: int) -> str:
    if req.affinity_key is not None:
        return req.affinity_key
    if req.messages is not None:
        system = [m.content for m in req.messages if m.role in ("system", "developer")]
        return "\n".join(system) if system else req.messages[0].content[:prefix_chars]
    if req.prompt is not None:
        return req.prompt[:prefix_chars]
    return ",".join(map(str, req.prompt_token_ids[:_PREFIX_TOKEN_IDS]))


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def lane_of(text: str) -> int:
    return _hash64(text) % NUM_LANES


def job_lane(req: JobRequest, job_id: str, *, affinity: bool, prefix_chars: int) -> int:
    """The job's lane: by its affinity text, or (routing off) by its id, spreading jobs evenly."""
    return lane_of(affinity_text(req, prefix_chars) if affinity else job_id)


def own_lanes(worker: str, live_workers: Iterable[str], model: str) -> set[int]:
    """The lanes `worker` owns among the live workers of `model` (highest random weight)."""
    workers = sorted(set(live_workers) | {worker})
    return {lane for lane in range(NUM_LANES)
            if max(workers, key=lambda w: _hash64(f"{model}\0{lane}\0{w}")) == worker}


def pull_order(keys: Keys, model: str, max_priority: int, own: set[int], only_own: bool = False) -> list[str]:
    """A model's streams in the order one worker pulls them: per priority, highest first,
    its own lanes, then (unless only_own) the others'."""
    lanes = sorted(own) + ([] if only_own else [lane for lane in range(NUM_LANES) if lane not in own])
    return [keys.queue(model, p, lane) for p in range(max_priority, -1, -1) for lane in lanes]
