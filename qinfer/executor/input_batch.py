"""The runner's persistent batch: one preallocated row per live request, updated by deltas.

Rows hold what the runner must remember between steps (token ids, computed
count, block table, sampling settings). `update(scheduler_output)` applies a
step's changes, `prepare(scheduler_output)` turns the rows into the flat step
inputs and `sampling_metadata(...)` into the sampler's tensors. Host data lives
in numpy arrays; step tensors are staged in (pinned on cuda) CPU buffers and
copied to the device with one non_blocking copy each.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from qinfer.contracts.sampling_metadata import SamplingMetadata
from qinfer.contracts.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput
from qinfer.layers.attention.backend import AttentionMetadata
from qinfer.sampling_params import SamplingParams

# Columns of InputBatch.sampling_values, one float per request setting.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p",
                    "repetition_penalty", "presence_penalty", "frequency_penalty")
_NEUTRAL = {"top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0}


@dataclass
class StepInputs:
    req_ids: list[str]              # scheduled requests, in SchedulerOutput order
    input_ids: torch.Tensor         # [T] long, device
    positions: torch.Tensor         # [T] long, device
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor    # [S] long, device: rows of the hidden states that sample
    is_sampling: np.ndarray         # [R] bool: request r samples a token this step
    sampling_rows: np.ndarray       # [S] batch rows of the sampling requests
    prompt_logprobs: Optional["PromptLogprobsPlan"] = None   # None: no request wants prompt logprobs now


@dataclass
class PromptLogprobsPlan:
    """The step's prompt positions whose logprobs were asked (SamplingParams.prompt_logprobs)."""

    logits_indices: torch.Tensor    # [P] long, device: rows of the hidden states
    next_token_ids: torch.Tensor    # [P] long, device: the prompt token each of them predicts
    max_num_logprobs: int           # the largest k asked
    req_ids: list[str]              # the requests, each owning a run of consecutive rows:
    starts: list[int]               #   prompt index of the token its first row predicts
    counts: list[int]               #   its number of rows
    num_logprobs: list[int]         #   its k


@dataclass
class InFlightIds:
    """The ids the previous step sampled, on the device, not yet on the host (async scheduling)."""

    token_ids: torch.Tensor          # [S] long, device
    req_ids: list[str]               # [S] whose ids they are
    serials: np.ndarray              # [S] InputBatch.serials of the sampling rows: same id, same request
    wait_host: Callable[[], object]  # returns once the ids are in InputBatch.token_ids


class _Staging:
    """CPU staging buffers (pinned on cuda) with numpy views, copied to `device` on demand.

    Copies from pinned memory are asynchronous: before a step overwrites the buffers it waits
    for the copies of the last step that used them (an event recorded after the step's inputs
    and again after its sampler inputs; InputBatch alternates two sets, so that is the step
    before the previous one, long done).
    """

    def __init__(self, device: torch.device):
        self.device, self.pin = device, device.type == "cuda"
        self.buffers: dict[str, torch.Tensor] = {}
        # name -> the last staged view of its buffer, as a tensor and as numpy: a step of the same
        # shape (every decode step of a batch) reuses them instead of slicing the buffer again.
        self.views: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        self.copies_done = torch.cuda.Event() if self.pin else None

    def wait_reusable(self) -> None:
        if self.pin:
            self.copies_done.synchronize()

    def mark_copied(self) -> None:
        if self.pin:
            self.copies_done.record()

    def to_device(self, name: str, values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        view = self.views.get(name)
        if view is None or view[1].shape != values.shape or view[0].dtype != dtype:
            view = self._new_view(name, values, dtype)
        staged, staged_numpy = view
        staged_numpy[...] = values
        return staged.to(self.device, non_blocking=True)

    def _new_view(self, name: str, values: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
        flat_len = values.size
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < flat_len or buffer.dtype != dtype:
            buffer = torch.empty(max(flat_len, 64), dtype=dtype, pin_memory=self.pin)
            self.buffers[name] = buffer
        staged = buffer[:flat_len].view(values.shape)
        view = self.views[name] = (staged, staged.numpy())
        return view


class InputBatch:
    def __init__(self, max_num_seqs: int, max_model_len: int, block_size: int, vocab_size: int,
                 device: torch.device, eos_token_ids: list[int]):
        self.block_size, self.vocab_size, self.device = block_size, vocab_size, device
        self.eos_token_ids = eos_token_ids
        max_num_blocks = -(-max_model_len // block_size)
        # +1: room for the token sampled at the last position before the scheduler stops the request.
        self.token_ids = np.zeros((max_num_seqs, max_model_len + 1), dtype=np.int64)
        self.num_tokens = np.zeros(max_num_seqs, dtype=np.int64)           # prompt + output known
        self.num_prompt_tokens = np.zeros(max_num_seqs, dtype=np.int64)
        self.num_computed_tokens = np.zeros(max_num_seqs, dtype=np.int64)  # KV in the cache
        self.block_table = np.zeros((max_num_seqs, max_num_blocks), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_seqs, dtype=np.int64)
        self.sampling_values = np.zeros((max_num_seqs, len(_SAMPLING_FIELDS)), dtype=np.float32)
        # Each field's value that changes nothing (temperature has none: NaN differs from every value).
        self.neutral_values = np.array([_NEUTRAL.get(name, np.nan) for name in _SAMPLING_FIELDS], dtype=np.float32)
        self.neutral_values[_SAMPLING_FIELDS.index("top_k")] = vocab_size
        self.min_tokens = np.zeros(max_num_seqs, dtype=np.int64)
        self.num_logprobs = np.full(max_num_seqs, -1, dtype=np.int64)  # -1: logprobs not asked
        self.num_prompt_logprobs = np.full(max_num_seqs, -1, dtype=np.int64)  # -1: not asked
        self.is_seeded = np.zeros(max_num_seqs, dtype=bool)
        self.sampling_params: list[SamplingParams | None] = [None] * max_num_seqs
        self.req_ids: list[str | None] = [None] * max_num_seqs
        self.row_of: dict[str, int] = {}
        # Seeded generators by request id; they outlive preemption, dropped when the request finishes.
        self.generators: dict[str, torch.Generator] = {}
        # Tells apart two requests that held the same id in turn (ids sampled for the first, still in
        # flight, must not reach the second).
        self.serials = np.zeros(max_num_seqs, dtype=np.int64)
        self._serial_counter = itertools.count(1)
        # Two sets of staging buffers, used in turn: while a step runs on the device (async scheduling)
        # the next one is prepared in the other set.
        self._stagings = (_Staging(device), _Staging(device))
        self.staging = self._stagings[0]

    @property
    def num_reqs(self) -> int:
        return len(self.row_of)

    # ---- incremental updates -------------------------------------------------------------

    def update(self, scheduler_output: SchedulerOutput) -> None:
        for req_id in scheduler_output.finished_req_ids:
            self.generators.pop(req_id, None)
            self.remove(req_id)
        for req_id in scheduler_output.preempted_req_ids:
            self.remove(req_id)
        if scheduler_output.finished_req_ids or scheduler_output.preempted_req_ids:   # else no row was freed: nothing to move
            self.condense()
        for new in scheduler_output.new_requests:
            self.add(new)
        self.update_cached_many(scheduler_output.cached_requests)

    def add(self, new: NewRequestData) -> None:
        if new.req_id in self.row_of:  # a resumed request replaces any stale row
            self.remove(new.req_id)
            self.condense()
        row = self.num_reqs
        if row >= len(self.req_ids):
            raise RuntimeError(f"more than max_num_seqs={len(self.req_ids)} requests in the batch")
        tokens = new.prompt_token_ids + new.output_token_ids
        self.token_ids[row, :len(tokens)] = tokens
        self.num_tokens[row], self.num_prompt_tokens[row] = len(tokens), len(new.prompt_token_ids)
        self.num_computed_tokens[row] = new.num_computed_tokens
        self.block_table[row, :len(new.block_ids)] = new.block_ids
        self.num_blocks[row] = len(new.block_ids)
        self._set_sampling(row, new.req_id, new.sampling_params)
        self.req_ids[row], self.row_of[new.req_id] = new.req_id, row
        self.serials[row] = next(self._serial_counter)

    def _set_sampling(self, row: int, req_id: str, params: SamplingParams) -> None:
        top_k = params.top_k if 0 < params.top_k < self.vocab_size else self.vocab_size   # vocab_size: off
        self.sampling_values[row] = [params.temperature, params.top_p, top_k, params.min_p,
                                     params.repetition_penalty, params.presence_penalty,
                                     params.frequency_penalty]
        self.min_tokens[row] = params.min_tokens
        self.num_logprobs[row] = -1 if params.logprobs is None else params.logprobs
        self.num_prompt_logprobs[row] = -1 if params.prompt_logprobs is None else params.prompt_logprobs
        self.is_seeded[row] = params.seed is not None
        self.sampling_params[row] = params
        if params.seed is not None and req_id not in self.generators:
            self.generators[req_id] = torch.Generator(device=self.device).manual_seed(params.seed)

    def update_cached_many(self, cached_requests: list[CachedRequestData]) -> None:
        """The step's running requests: one vectorized write of the computed counts; only
        requests that got blocks (one decode step in block_size) touch their block table."""
        if not cached_requests:
            return
        row_of = self.row_of
        rows = np.fromiter((row_of[c.req_id] for c in cached_requests), dtype=np.int64, count=len(cached_requests))
        self.num_computed_tokens[rows] = np.fromiter((c.num_computed_tokens for c in cached_requests),
                                                     dtype=np.int64, count=len(cached_requests))
        for cached, row in zip(cached_requests, rows.tolist()):
            if cached.new_block_ids:
                start, num_new = self.num_blocks[row], len(cached.new_block_ids)
                self.block_table[row, start:start + num_new] = cached.new_block_ids
                self.num_blocks[row] += num_new

    def remove(self, req_id: str) -> None:
        row = self.row_of.pop(req_id, None)
        if row is not None:
            self.req_ids[row], self.sampling_params[row] = None, None

    def condense(self) -> None:
        """Move the last live rows into holes so rows 0..num_reqs-1 are the live ones."""
        holes = [row for row in range(self.num_reqs) if self.req_ids[row] is None]
        tail = [row for row in range(len(self.req_ids) - 1, self.num_reqs - 1, -1) if self.req_ids[row] is not None]
        for hole, src in zip(holes, tail):
            self._move_row(src, hole)

    def _move_row(self, src: int, dst: int) -> None:
        for array in (self.token_ids, self.num_tokens, self.num_prompt_tokens, self.num_computed_tokens,
                      self.block_table, self.num_blocks, self.sampling_values, self.min_tokens,
                      self.num_logprobs, self.num_prompt_logprobs, self.is_seeded, self.serials):
            array[dst] = array[src]
        self.sampling_params[dst], self.sampling_params[src] = self.sampling_params[src], None
        req_id = self.req_ids[src]
        self.req_ids[dst], self.req_ids[src] = req_id, None
        self.row_of[req_id] = dst

    def append_sampled(self, rows: np.ndarray, token_ids: list[int]) -> None:
        """Record the tokens sampled this step at the end of their rows."""
        self.token_ids[rows, self.num_tokens[rows]] = token_ids
        self.num_tokens[rows] += 1

    def reserve_sampled(self, rows: np.ndarray) -> np.ndarray:
        """Count the tokens sampled this step before their ids are known; returns their positions."""
        positions = self.num_tokens[rows]   # fancy indexing: a copy
        self.num_tokens[rows] += 1
        return positions

    def write_sampled(self, req_ids: list[str], serials: np.ndarray, positions: np.ndarray,
                      token_ids: list[int]) -> None:
        """Fill in ids counted by reserve_sampled, by request (rows move when others leave); ids of
        requests that left the batch since are dropped."""
        rows = np.fromiter(map(self.row_of.get, req_ids, itertools.repeat(-1)), dtype=np.int64, count=len(req_ids))
        is_live = rows >= 0
        is_live[is_live] = self.serials[rows[is_live]] == serials[is_live]
        self.token_ids[rows[is_live], positions[is_live]] = np.asarray(token_ids, dtype=np.int64)[is_live]

    # ---- step inputs ---------------------------------------------------------------------

    def prepare(self, scheduler_output: SchedulerOutput, in_flight: Optional[InFlightIds] = None) -> StepInputs:
        """The flat inputs of the step; in_flight: ids of the previous step that are inputs of this one."""
        self.staging = self._stagings[self.staging is self._stagings[0]]   # the other set
        self.staging.wait_reusable()
        req_ids = list(scheduler_output.num_scheduled_tokens)
        rows = np.fromiter(map(self.row_of.__getitem__, req_ids), dtype=np.int64, count=len(req_ids))
        num_scheduled = np.fromiter(scheduler_output.num_scheduled_tokens.values(), dtype=np.int64, count=len(req_ids))
        seq_lens = self.num_computed_tokens[rows] + num_scheduled
        if (seq_lens > self.num_tokens[rows]).any():
            raise ValueError("scheduled past the tokens the runner knows for a request")
        query_ends = np.cumsum(num_scheduled)
        positions, token_rows = self._token_positions(rows, num_scheduled, query_ends)
        is_sampling = seq_lens == self.num_tokens[rows]  # reached the end of the known tokens
        meta = self._attn_metadata(rows, token_rows, positions, query_ends, seq_lens, num_scheduled)
        input_ids = self.staging.to_device("input_ids", self.token_ids[token_rows, positions], torch.long)
        if in_flight is not None:
            self._feed_in_flight(input_ids, req_ids, rows, query_ends, in_flight)
        inputs = StepInputs(
            req_ids=req_ids,
            input_ids=input_ids,
            positions=self.staging.to_device("positions", positions, torch.long),
            attn_metadata=meta,
            logits_indices=self.staging.to_device("logits_indices", query_ends[is_sampling] - 1, torch.long),
            is_sampling=is_sampling,
            sampling_rows=rows[is_sampling],
            prompt_logprobs=self._prompt_logprobs_plan(req_ids, rows, num_scheduled, query_ends))
        self.staging.mark_copied()
        return inputs

    def _prompt_logprobs_plan(self, req_ids: list[str], rows: np.ndarray, num_scheduled: np.ndarray,
                              query_ends: np.ndarray) -> Optional[PromptLogprobsPlan]:
        """Position p predicts token p + 1: a prompt token for p < num_prompt_tokens - 1."""
        num_logprobs = self.num_prompt_logprobs[rows]
        if num_logprobs.max() < 0:   # the common case: nobody asked
            return None
        computed = self.num_computed_tokens[rows]
        counts = np.minimum(computed + num_scheduled, self.num_prompt_tokens[rows] - 1) - computed
        asking = np.flatnonzero((num_logprobs >= 0) & (counts > 0))
        if not len(asking):
            return None
        counts, computed = counts[asking], computed[asking]
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)   # 0.. per request
        positions = np.repeat(computed, counts) + offsets
        query_starts = (query_ends - num_scheduled)[asking]
        next_token_ids = self.token_ids[np.repeat(rows[asking], counts), positions + 1]
        return PromptLogprobsPlan(
            logits_indices=self.staging.to_device("prompt_logits_indices",
                                                  np.repeat(query_starts, counts) + offsets, torch.long),
            next_token_ids=self.staging.to_device("prompt_next_ids", next_token_ids, torch.long),
            max_num_logprobs=int(num_logprobs[asking].max()),
            req_ids=[req_ids[i] for i in asking.tolist()],
            starts=(computed + 1).tolist(), counts=counts.tolist(),
            num_logprobs=num_logprobs[asking].tolist())

    def _feed_in_flight(self, input_ids: torch.Tensor, req_ids: list[str], rows: np.ndarray,
                        query_ends: np.ndarray, in_flight: InFlightIds) -> None:
        """Copy, on the device, the ids still in flight into input_ids (the host has stale values there).

        A request that sampled in the previous step and runs again decodes exactly that token: the
        scheduler plans one token past the ids it knows, so it is the last token of the request's query.
        """
        if (len(input_ids) == len(in_flight.req_ids) and req_ids == in_flight.req_ids
                and np.array_equal(self.serials[rows], in_flight.serials)):
            input_ids.copy_(in_flight.token_ids)   # steady decoding: every input is an id in flight
            return
        index_of = {r: i for i, r in enumerate(in_flight.req_ids)}
        src = np.fromiter(map(index_of.get, req_ids, itertools.repeat(-1)), dtype=np.int64, count=len(req_ids))
        is_fed = src >= 0
        is_fed[is_fed] = self.serials[rows[is_fed]] == in_flight.serials[src[is_fed]]
        if not is_fed.any():
            return
        dst = self.staging.to_device("in_flight_dst", query_ends[is_fed] - 1, torch.long)
        src = self.staging.to_device("in_flight_src", src[is_fed], torch.long)
        input_ids.index_copy_(0, dst, in_flight.token_ids[src])

    def _token_positions(self, rows, num_scheduled, query_ends):
        """Position [T] and batch row [T] of every token of the flat batch."""
        if query_ends[-1] == len(rows):   # one token per request (each has >= 1): a decode-only step
            return self.num_computed_tokens[rows], rows
        token_req = np.repeat(np.arange(len(rows)), num_scheduled)
        offsets = np.arange(query_ends[-1]) - np.repeat(query_ends - num_scheduled, num_scheduled)
        return self.num_computed_tokens[rows][token_req] + offsets, rows[token_req]

    def _attn_metadata(self, rows, token_rows, positions, query_ends, seq_lens, num_scheduled):
        block_ids = self.block_table[token_rows, positions // self.block_size].astype(np.int64)
        max_num_blocks = -(-int(seq_lens.max()) // self.block_size)
        is_prefill = num_scheduled > 1
        return AttentionMetadata(
            slot_mapping=self.staging.to_device("slot_mapping", block_ids * self.block_size
                                                + positions % self.block_size, torch.long),
            query_start_loc=self.staging.to_device("query_start_loc", np.concatenate(([0], query_ends)),
                                                   torch.int32),
            seq_lens=self.staging.to_device("seq_lens", seq_lens, torch.int32),
            block_tables=self.staging.to_device("block_tables", self.block_table[rows, :max_num_blocks],
                                                torch.int32),
            max_query_len=int(num_scheduled.max()),
            max_seq_len=int(seq_lens.max()),
            num_prefills=int(np.count_nonzero(is_prefill)),
            prefills_are_fresh=bool(np.all(seq_lens[is_prefill] == num_scheduled[is_prefill])))

    # ---- sampling --------------------------------------------------------------------------

    def sampling_metadata(self, rows: np.ndarray, in_flight: Optional[InFlightIds] = None) -> SamplingMetadata:
        """Sampler inputs for batch rows `rows` (the requests that sample this step), in that order."""
        values = self.sampling_values[rows]  # [S, fields]
        temperature = values[:, 0]
        # Per field: does any request set it off its neutral value? (One test for all the fields.)
        is_used = dict(zip(_SAMPLING_FIELDS, (values != self.neutral_values).any(axis=0).tolist()))
        device_values = self.staging.to_device("sampling_values", values, torch.float32)
        per_field = dict(zip(_SAMPLING_FIELDS, device_values.unbind(1)))
        md = SamplingMetadata(temperature=per_field["temperature"],
                              all_greedy=bool((temperature == 0).all()),
                              all_random=bool((temperature > 0).all()),
                              banned_token_ids=self._banned_token_ids(rows),
                              generators=self._row_generators(rows),
                              max_num_logprobs=self._max_num_logprobs(rows))
        if is_used["top_k"]:
            md.top_k = per_field["top_k"].long()
        for name in ("top_p", "min_p"):
            if is_used[name]:
                setattr(md, name, per_field[name])
        if any(is_used[name] for name in _SAMPLING_FIELDS[4:]):
            if in_flight is not None:
                in_flight.wait_host()   # penalties count the output ids, read on the host
            self._add_penalty_inputs(md, rows, per_field)
        self.staging.mark_copied()
        return md

    def _add_penalty_inputs(self, md: SamplingMetadata, rows: np.ndarray, per_field) -> None:
        md.repetition_penalty = per_field["repetition_penalty"]
        md.presence_penalty = per_field["presence_penalty"]
        md.frequency_penalty = per_field["frequency_penalty"]
        md.prompt_token_ids = self._padded_tokens(rows, 0, self.num_prompt_tokens[rows], "prompt_ids")
        md.output_token_ids = self._padded_tokens(rows, self.num_prompt_tokens[rows], self.num_tokens[rows],
                                                  "output_ids")

    def _padded_tokens(self, rows, starts, ends, name: str) -> torch.Tensor:
        """token_ids[row, start:end] per row as [S, max_len] long, padded with vocab_size."""
        starts = np.broadcast_to(starts, rows.shape)
        width = max(int((ends - starts).max()), 1)
        cols = starts[:, None] + np.arange(width)[None, :]
        is_valid = cols < ends[:, None]
        padded = np.where(is_valid, self.token_ids[rows[:, None], np.minimum(cols, self.token_ids.shape[1] - 1)],
                          self.vocab_size)
        return self.staging.to_device(name, padded, torch.long)

    def _banned_token_ids(self, rows: np.ndarray) -> list[tuple[int, list[int]]]:
        """(sampling index, stop ids + EOS unless ignore_eos) for requests below their min_tokens."""
        num_output = self.num_tokens[rows] - self.num_prompt_tokens[rows]
        below_min = np.nonzero(num_output < self.min_tokens[rows])[0]
        return [(int(i), self._stop_token_ids(self.sampling_params[rows[i]])) for i in below_min]

    def _stop_token_ids(self, params: SamplingParams) -> list[int]:
        return list(params.stop_token_ids) + ([] if params.ignore_eos else self.eos_token_ids)

    def _row_generators(self, rows: np.ndarray) -> dict[int, torch.Generator]:
        """sampling index -> generator, for seeded requests that sample at random (greedy draws nothing)."""
        if not self.generators:   # no seeded request in the batch
            return {}
        is_random_seeded = self.is_seeded[rows] & (self.sampling_values[rows, 0] != 0)
        return {int(i): self.generators[self.req_ids[rows[i]]] for i in np.nonzero(is_random_seeded)[0]}

    def _max_num_logprobs(self, rows: np.ndarray):
        num_logprobs = int(self.num_logprobs[rows].max())
        return None if num_logprobs < 0 else num_logprobs

