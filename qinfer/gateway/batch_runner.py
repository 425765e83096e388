"""The batch lifecycle, advanced by a runner thread in every gateway process.

    validating -> in_progress -> finalizing -> completed
               -> failed (bad lines)      \\-> expired (past the window; unfinished lines: batch_expired)
    validating | in_progress -> cancelling -> cancelled

A runner takes a batch's lease (QINFER_BATCH_LEASE_S, renewed while it works) and
keeps it; if its gateway dies, another replica's runner (or the restarted one)
takes the batch over once the lease lapses and resumes from the state in Redis:
- enqueueing: every line's job carries an idempotency key per (batch, custom_id),
  so re-submitting the chunk a dead runner was in returns the jobs it had made;
  lines are recorded once (BATCH_RECORD) and counted once (BATCH_SETTLE);
- finalizing: the output and error files are rewritten from the job results
  under fixed file ids and published atomically, then the batch ends in one
  MULTI/EXEC with its webhook (the callbacks outbox).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterable, Iterator, Optional

from qinfer import metrics
from qinfer.batch_types import BatchErrors, BatchLineError, BatchStatus
from qinfer.queue.writer import enqueue_callback
from qinfer.client import Client
from qinfer.config import Settings
from qinfer.errors import JobNotFoundError, QueueFullError
from qinfer.gateway.batch_lines import BatchLine, ParsedInput, line_job, parse_input
from qinfer.gateway.batch_output import answered_line, unfinished_line
from qinfer.gateway.file_store import FileStore, FileWriter
from qinfer.gateway.models import ModelDirectory
from qinfer.queue.batch_store import BatchStore
from qinfer.queue.producer import chunks
from qinfer.schema import TERMINAL_STATUSES

log = logging.getLogger(__name__)
S = BatchStatus
SETTLE_WINDOW = 100        # open jobs whose status a settle step reads at once


class LeaseLost(Exception):
    """Another runner holds the batch now (ours lapsed): stop touching it."""


def output_file_ids(batch_id: str) -> tuple[str, str]:
    """Fixed per batch, so a finalize redone after a crash replaces, never duplicates."""
    return f"file-{batch_id}-output", f"file-{batch_id}-errors"


def _lines(chunks_: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks_:
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


class BatchRunner:
    def __init__(self, settings: Settings, store: BatchStore, files: FileStore, client: Client,
                 models: ModelDirectory):
        self.settings, self.store, self.files, self.client, self.models = settings, store, files, client, models
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()

    # --- the loop ---
    def run(self) -> None:
        """Until stop is set: advance every active batch this runner can lease."""
        while not self.stop.is_set():
            try:
                self.run_once()
            except Exception:   # a Redis outage or a bug in one pass must not end the thread
                log.exception("batch runner pass failed; retrying")
            self.stop.wait(self.settings.batch_poll_interval_s)

    def run_once(self) -> None:
        for batch_id in self.store.active():
            if self.stop.is_set() or not self.store.claim(batch_id, self.name, self.settings.batch_lease_s):
                continue
            try:
                self.advance(batch_id)
            except LeaseLost:
                log.warning("batch %s: lease lost to another runner", batch_id)

    def advance(self, batch_id: str) -> None:
        batch = self.store.get(batch_id)
        steps = {S.VALIDATING: self._validate, S.IN_PROGRESS: self._progress,
                 S.FINALIZING: self._finalize, S.CANCELLING: self._cancel}
        step = steps.get(S(batch["status"])) if batch else None
        if step is not None:
            step(batch)

    # --- validating ---
    def _validate(self, batch: dict) -> None:
        parsed = self._parse(batch, check_models=True)
        now = f"{time.time():.3f}"
        if parsed is None or parsed.num_errors:
            errors = parsed.reported_errors() if parsed else [
                BatchLineError(code="file_not_found", message=f"input file {batch['input_file_id']} is gone")]
            self._end(batch, (S.VALIDATING,), S.FAILED,
                      {"failed_at": now, "errors": BatchErrors(data=errors).model_dump_json()})
            return
        models = sorted({line.job.model for line in parsed.lines})
        if self.store.transition(batch["id"], (S.VALIDATING,), S.IN_PROGRESS,
                                 {"in_progress_at": now, "total": len(parsed.lines), "model": ",".join(models)}):
            self._progress(self.store.get(batch["id"]), parsed)      # enqueue now, not a poll later

    def _parse(self, batch: dict, check_models: bool = False):
        """The input file's lines (None if the file is gone). Resuming skips the model
        check: lines validated once are enqueued even while their workers restart."""
        served = self.models.served() if check_models else None
        try:
            raw = _lines(self.files.chunks(batch["input_file_id"]))
            return parse_input(raw, batch["endpoint"], self.settings,
                               (lambda model: model in served) if check_models else (lambda model: True))
        except FileNotFoundError:
            return None

    # --- in_progress ---
    def _progress(self, batch: dict, parsed: Optional[ParsedInput] = None) -> None:
        batch_id = batch["id"]
        if time.time() >= float(batch["expires_at"]):
            self._expire(batch)
            return
        if int(batch.get("enqueued") or 0) < int(batch["total"]):
            self._enqueue(batch, parsed or self._parse(batch))
        num_open = self._settle(batch_id)
        batch = self.store.get(batch_id)
        if num_open == 0 and int(batch.get("enqueued") or 0) >= int(batch["total"]):
            if self.store.transition(batch_id, (S.IN_PROGRESS,), S.FINALIZING,
                                     {"finalizing_at": f"{time.time():.3f}", "outcome": S.COMPLETED.value}):
                self._finalize(self.store.get(batch_id))

    def _enqueue(self, batch: dict, parsed: Optional[ParsedInput]) -> None:
        """Submit the lines after the cursor, a chunk per round trip, while still in_progress."""
        if parsed is None:
            return
        enqueued = int(batch.get("enqueued") or 0)
        for chunk in chunks(parsed.lines[enqueued:], self.settings.batch_chunk_size):
            self._renew(batch["id"])
            if self.store.status(batch["id"]) != S.IN_PROGRESS.value:
                return      # cancelled meanwhile: the cancelling step takes over
            try:
                job_ids = self.client.submit_many([line_job(line, batch) for line in chunk])
            except QueueFullError as e:
                log.info("batch %s: admission refused (%s); retrying next pass", batch["id"], e)
                return
            lines = [(line.custom_id, job_id, enqueued + i) for i, (line, job_id) in enumerate(zip(chunk, job_ids))]
            enqueued += len(chunk)
            self.store.record_jobs(batch["id"], enqueued, lines)
            self._pause()

    def _settle(self, batch_id: str) -> int:
        """Count the jobs that finished since the last pass; returns how many are still open.
        A pass looks at the earliest open lines, SETTLE_WINDOW at a time, and stops at the
        first window with an unfinished job: jobs finish about in queue order, so the cost follows
        the jobs that finished, not the batch's size (a job finishing out of order is
        counted once the window before it has finished)."""
        while True:
            window = self.store.open_jobs(batch_id, SETTLE_WINDOW)
            finished = {job_id: "completed" if status == "succeeded" else "failed"
                        for job_id, status in zip(window, self.store.job_statuses(window))
                        if status is None or status in TERMINAL_STATUSES}
            self.store.settle(batch_id, finished)
            if not window or len(finished) < len(window):
                return self.store.num_open(batch_id)

    def _expire(self, batch: dict) -> None:
        self._cancel_open(batch)
        if self.store.transition(batch["id"], (S.IN_PROGRESS,), S.FINALIZING,
                                 {"finalizing_at": f"{time.time():.3f}", "outcome": S.EXPIRED.value}):
            self._finalize(self.store.get(batch["id"]))

    # --- cancelling ---
    def _cancel(self, batch: dict) -> None:
        """Cancel every unfinished job once, then wait for running ones to stop."""
        if not batch.get("cancel_sent"):
            self._cancel_open(batch)
            self.store.set_fields(batch["id"], cancel_sent=1)
        if self._settle(batch["id"]) == 0:
            self._finalize({**self.store.get(batch["id"]), "outcome": S.CANCELLED.value})

    def _cancel_open(self, batch: dict) -> None:
        self._adopt_unrecorded(batch)
        for job_id in self.store.open_jobs(batch["id"]):
            try:
                self.client.cancel(job_id)
            except JobNotFoundError:
                pass        # its result expired: settled as failed

    def _adopt_unrecorded(self, batch: dict) -> None:
        """Record jobs a dead runner submitted but had not recorded (at most the chunk after
        the cursor), found through their idempotency keys, so that they are cancelled too."""
        unsent = self._unsent(batch)[:self.settings.batch_chunk_size]
        jobs = [line_job(line, batch) for line in unsent]
        found = self.store.submitted_jobs([(job.model, job.idempotency_key) for job in jobs])
        enqueued = int(batch.get("enqueued") or 0)
        lines = [(line.custom_id, job_id, enqueued + i) for i, (line, job_id) in enumerate(zip(unsent, found))
                 if job_id]
        if lines:
            self.store.record_jobs(batch["id"], 0, lines)

    def _unsent(self, batch: dict) -> list[BatchLine]:
        """Lines past the cursor with no recorded job."""
        enqueued, total = int(batch.get("enqueued") or 0), int(batch.get("total") or 0)
        parsed = self._parse(batch) if enqueued < total else None
        if parsed is None:
            return []
        rest = parsed.lines[enqueued:]
        return [line for line, seen in zip(rest, self.store.recorded(batch["id"], [x.custom_id for x in rest]))
                if not seen]

    # --- finalizing ---
    def _finalize(self, batch: dict) -> None:
        """Write the output and error files from the job results, then end the batch."""
        output_id, error_id = output_file_ids(batch["id"])
        owner, outcome = batch.get("owner", ""), batch["outcome"]
        output = self.files.create(f"{batch['id']}_output.jsonl", "batch_output", owner, output_id)
        errors = self.files.create(f"{batch['id']}_errors.jsonl", "batch_output", owner, error_id)
        try:
            num_output, num_errors = self._write_lines(batch, outcome, output, errors)
            fields = {f"{outcome}_at": f"{time.time():.3f}", "completed": num_output, "failed": num_errors,
                      "output_file_id": output.commit().id if num_output else "",
                      "error_file_id": errors.commit().id if num_errors else ""}
        finally:
            output.abort()       # no-ops after a commit; drop the temporaries otherwise
            errors.abort()
        if self._end(batch, (S.FINALIZING, S.CANCELLING), S(outcome), fields):
            metrics.gateway_batch_lines.labels("completed").inc(num_output)
            metrics.gateway_batch_lines.labels("failed").inc(num_errors)

    def _write_lines(self, batch: dict, outcome: str, output: FileWriter, errors: FileWriter) -> tuple[int, int]:
        counts = [0, 0]      # output, errors
        for chunk in self.store.line_jobs(batch["id"], self.settings.batch_chunk_size):
            self._renew(batch["id"])
            hashes = self.store.job_hashes([job_id for _, job_id in chunk])
            for (custom_id, job_id), job_hash in zip(chunk, hashes):
                ok, line = answered_line(custom_id, job_id, job_hash, batch["endpoint"], outcome)
                (output if ok else errors).write(json.dumps(line).encode() + b"\n")
                counts[0 if ok else 1] += 1
            self.store.set_fields(batch["id"], finalized=sum(counts))
            self._pause()
        for line in self._unsent(batch):
            errors.write(json.dumps(unfinished_line(line.custom_id, outcome)).encode() + b"\n")
            counts[1] += 1
        return counts[0], counts[1]

    # --- shared ---
    def _end(self, batch: dict, sources: tuple[S, ...], target: S, fields: dict) -> bool:
        """The terminal transition, with the batch's webhook queued in the same MULTI/EXEC."""
        on_commit = None
        if batch.get("callback_url"):
            on_commit = lambda pipe: enqueue_callback(pipe, self.store.keys, batch["id"])  # noqa: E731
        ended = self.store.transition(batch["id"], sources, target, fields, on_commit)
        if ended:
            metrics.gateway_batches.labels(target.value).inc()
            log.info("batch %s %s", batch["id"], target.value)
        return ended

    def _renew(self, batch_id: str) -> None:
        if not self.store.claim(batch_id, self.name, self.settings.batch_lease_s):
            raise LeaseLost(batch_id)

    def _pause(self) -> None:
        if self.settings.batch_chunk_delay_s:
            self.stop.wait(self.settings.batch_chunk_delay_s)
