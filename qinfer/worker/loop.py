"""The worker loop: queue <-> engine, one engine step at a time.

Between steps the worker reads cancellations, renews leases, reclaims dead
workers' entries and pulls as many new jobs as the engine can admit now, so
new jobs join the running batch (continuous batching across queue reads).

Retries run alone: a delivery with attempts > 1 may be what crashed the last
worker, so it waits for an empty engine and nothing joins it. A poison job
then only ever takes itself down and reaches the dead-letter stream; its
batch mates of the first crash finish on their retry.

Redis outages are ridden out: while Redis is away the engine keeps stepping its
running jobs, their results wait in memory (`unwritten`), and the worker retries
with backoff (queue/outage.py); on reconnect it writes them (idempotent by job
id), reads the cancel flags it may have missed and renews its leases at once. It
exits (code 18) only past QINFER_REDIS_OUTAGE_LIMIT_S.
"""
from __future__ import annotations

import gc
import logging
import signal
import time
from collections import deque
from typing import Optional

from qinfer import metrics
from qinfer.config import Settings
from qinfer.errors import RedisUnavailableError
from qinfer.queue.consumer import Consumer, Delivery
from qinfer.queue.keys import NUM_LANES
from qinfer.queue.lanes import own_lanes
from qinfer.queue.outage import REDIS_DOWN, REDIS_OUTAGE_EXIT_CODE, Outage
from qinfer.queue.records import delta_fields, error_json, output_json, safe_text
from qinfer.queue.stats import model_stats
from qinfer.queue.unserved import UnservedSweep
from qinfer.queue.writer import Final, ResultWriter
from qinfer.worker import jobs
from qinfer.worker.engine_protocol import Engine
from qinfer.worker.health import Heartbeat, live_worker_names
from qinfer.worker.jobs import InFlight, JobRejected

log = logging.getLogger(__name__)
_RECLAIM_INTERVAL_S = 0.2      # how often a worker looks for dead workers' entries
_AFFINITY_INTERVAL_S = 0.25    # how often a worker re-reads which lanes it owns (until then a joiner's lanes have two)
# `qinfer workers` shows counts at most a second old; a change is sent at once, but a busy
# worker whose counts change every step sends at most one beat per _MIN_BEAT_GAP_S.
_HEARTBEAT_INTERVAL_S, _MIN_BEAT_GAP_S = 1.0, 0.2
# Jobs a batch may grow by per engine step (_intake): 16 fills a 256-sequence batch in 16 steps.
_RAMP_PER_STEP = 16


class Worker:
    def __init__(self, engine: Engine, consumer: Consumer, writer: ResultWriter, heartbeat: Heartbeat,
                 settings: Settings, model_name: str):
        self.engine, self.consumer, self.writer, self.heartbeat = engine, consumer, writer, heartbeat
        self.settings, self.model_name = settings, model_name
        self.in_flight: dict[str, InFlight] = {}        # engine request id -> job
        self.backlog: deque[Delivery] = deque()          # retries waiting to run alone
        self.isolated: Optional[str] = None              # request id of the retry running alone
        self.draining_until: Optional[float] = None
        self.num_engine_failures = 0
        # terminal writes and stream deltas not yet in Redis; each final with its job (None: never ran)
        self.unwritten: list[tuple[Final, Optional[InFlight]]] = []
        self.unwritten_deltas: list[tuple[str, dict]] = []
        self.is_connected = False
        self.outage = Outage(settings.redis_outage_limit_s, f"worker {consumer.name}")
        self.sweep = UnservedSweep(consumer.redis, consumer.keys, settings, model_name)
        self._next_lease_tick = self._next_reclaim = self._next_affinity_tick = self._last_beat = 0.0
        self._beat_counts: Optional[dict] = None
        self._own_lanes = set(range(NUM_LANES))         # what the consumer starts with (prefix affinity)
        self._last_batch_size = 0                        # jobs in the engine at the last step
        self._pubsub = consumer.redis.pubsub(ignore_subscribe_messages=True)
        self._labels = {"model_name": model_name}

    # --- lifecycle ---
    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain: finish or hand back within the grace period."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # The model, tokenizer and imports live as long as the worker: keep their ~300k objects out
        # of full collections, which the per-job garbage (deliveries, requests, replies) triggers:
        # one took ~0.2 s per 1,000 tiny-model jobs, where LLM.generate on the same jobs ran none.
        gc.freeze()
        log.info("worker %s serving %r", self.consumer.name, self.model_name)
        while not self._done():
            self._tick()
        self._shutdown()

    def _on_signal(self, signum, frame) -> None:
        if self.draining_until is None:
            log.info("signal %d: draining for up to %.1fs", signum, self.settings.drain_grace_s)
            self.draining_until = time.monotonic() + self.settings.drain_grace_s
        else:       # a second signal (a second Ctrl-C on `qinfer up`): hand back what is left now
            log.info("signal %d again: handing back the running jobs now", signum)
            self.draining_until = time.monotonic()

    def _done(self) -> bool:
        if self.draining_until is None:
            return False
        idle = not self.in_flight and not self.unwritten
        return idle or time.monotonic() >= self.draining_until

    def _shutdown(self) -> None:
        try:
            self._flush()
            leftovers = self._held()
            if leftovers:
                log.info("handing back %d jobs", len(leftovers))
                self.consumer.hand_back(leftovers, graceful=True)
            self.heartbeat.stop()
            self.consumer.forget()
        except REDIS_DOWN as e:     # nothing is lost: the entries stay pending and are reclaimed
            log.warning("Redis unreachable while stopping (%s): %d results unwritten; other workers "
                        "rerun these jobs once their leases run out", e, len(self.unwritten))
        self._pubsub.close()

    # --- one turn of the loop ---
    def _tick(self) -> None:
        try:
            if not self.is_connected:
                if not self.outage.retry_due():
                    self._offline_tick()
                    return
                self._connect()
            self._online_tick()
        except REDIS_DOWN as e:
            self.is_connected = False
            try:
                self.outage.failed(e)
            except RedisUnavailableError as gone:
                log.critical("%s; exiting with code %d (held jobs are reclaimed by other workers once "
                             "Redis is back)", gone, REDIS_OUTAGE_EXIT_CODE)
                raise SystemExit(REDIS_OUTAGE_EXIT_CODE) from None

    def _connect(self) -> None:
        """(Re)join Redis: groups and cancel channel (redis-py re-subscribes a dropped one), the
        results computed meanwhile, cancellations published meanwhile, leases renewed at once."""
        self.consumer.ensure_groups()
        if not self._pubsub.channels:
            self._pubsub.subscribe(self.consumer.keys.cancel_channel())
        self._flush()
        for d in self.consumer.cancel_flags([j.delivery for j in self._live()]):
            self._cancel(d.job_id)
        self._next_lease_tick = 0.0
        self.is_connected = True
        self.outage.ended()

    def _offline_tick(self) -> None:
        """Redis is away: running jobs go on; their results wait for the reconnect."""
        self._enforce_run_timeouts()
        if self.engine.has_unfinished_requests():
            self._step()
        else:
            time.sleep(min(self.outage.seconds_until_retry(), self.settings.idle_block_s))

    def _online_tick(self) -> None:
        self._lease_tick()
        self._heartbeat_tick()
        self._affinity_tick()
        self._read_cancels()
        self._enforce_run_timeouts()
        if self.draining_until is None:
            self._admit()
        if self.engine.has_unfinished_requests():
            self._step()
        elif self.draining_until is None and not self.backlog:
            self._last_batch_size = 0       # idle: the next burst starts its own ramp (_intake)
            self._accept(self.consumer.wait_for_entries(self.settings.idle_block_s))

    def _lease_tick(self) -> None:
        """Every lease/3: renew what we hold, gauges."""
        now = time.monotonic()
        if now < self._next_lease_tick:
            return
        self._next_lease_tick = now + self.settings.lease_seconds / 3
        for d in self.consumer.renew(self._held()):
            self._lost(d)
        if num_failed := self.sweep.maybe_run():
            log.info("failed %d jobs of models no worker served for %.0fs (unknown_model)", num_failed,
                     self.settings.unknown_model_timeout_s)
        self._update_gauges(self.engine.stats)
        metrics.set_queue_gauges(model_stats(self.consumer.redis, self.consumer.keys, self.model_name,
                                             self.settings.max_priority))

    def _affinity_tick(self) -> None:
        """Own the lanes this worker wins among the live workers of its model (prefix affinity)."""
        now = time.monotonic()
        if now < self._next_affinity_tick or not self.settings.affinity_routing:
            return
        self._next_affinity_tick = now + _AFFINITY_INTERVAL_S
        peers = live_worker_names(self.consumer.redis, self.consumer.keys, self.model_name,
                                  self.settings.heartbeat_ttl_s)
        lanes = own_lanes(self.consumer.name, peers, self.model_name)
        if lanes != self._own_lanes:
            self._own_lanes = lanes
            self.consumer.set_own_lanes(lanes)
            self._beat_counts = None         # the next beat tells `qinfer workers` (and tests) at once

    def _heartbeat_tick(self) -> None:
        counts = {"running": len(self.in_flight), "waiting": len(self.backlog)}
        since = time.monotonic() - self._last_beat
        if since < _HEARTBEAT_INTERVAL_S and (counts == self._beat_counts or since < _MIN_BEAT_GAP_S):
            return
        self._beat_counts, self._last_beat = counts, time.monotonic()
        stats = self.engine.stats            # prefix-cache totals ride along (bench/bench_affinity.py reads them)
        self.heartbeat.beat(**counts, lanes=",".join(map(str, sorted(self._own_lanes))),
                            prefix_cache_queries=stats.prefix_cache_queries,
                            prefix_cache_hits=stats.prefix_cache_hits)

    def _live(self) -> list[InFlight]:
        return [j for j in self.in_flight.values() if j.stop_reason is None]

    def _held(self) -> list[Delivery]:
        """Entries this worker holds: in the engine, waiting to run alone, or finished and unwritten."""
        return [j.delivery for j in self._live()] + list(self.backlog) + [f.delivery for f, _ in self.unwritten]

    def _lost(self, d: Delivery) -> None:
        log.warning("job %s: lease lost to another worker", d.job_id)
        metrics.queue_lease_lost.labels(**self._labels).inc()
        if d in self.backlog:
            self.backlog.remove(d)
        for job in self.in_flight.values():
            if job.delivery is d:
                self._abort(job, "lease_lost")

    def _reclaim(self) -> None:
        """Take over one entry of a dead worker; retries queue up in the backlog to run alone."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return
        self._next_reclaim = now + _RECLAIM_INTERVAL_S
        for d in self.consumer.reclaim(1):
            metrics.queue_reclaimed.labels(**self._labels).inc()
            log.info("job %s: reclaimed (attempt %d)", d.job_id, d.attempts)
            self._accept([d])

    # --- admission ---
    def _admit(self) -> None:
        if self.isolated is not None:
            return
        if not self.backlog:
            self._reclaim()
        if self.backlog:
            if not self.in_flight:
                self._accept([self.backlog.popleft()], alone=True)
            return
        self._accept(self.consumer.pull(self._intake()))

    def _intake(self) -> int:
        """New jobs to pull now: what the engine can admit, but a batch grows by at most
        _RAMP_PER_STEP jobs over the last step's. A burst then spreads over the fleet's idle
        workers in proportion to their speed, instead of filling the first one that pulls; jobs
        that finish are replaced at once, and a lone worker fills its batch in a few steps."""
        limit = max(len(self.in_flight), self._last_batch_size) + _RAMP_PER_STEP - len(self.in_flight)
        return min(self.engine.num_admissible(), limit)

    def _accept(self, deliveries: list[Delivery], alone: bool = False) -> None:
        finals, skipped = [], []
        for d in deliveries:
            if d.attempts > 1 and not alone and d.attempts <= self.settings.max_attempts:
                self.backlog.append(d)     # a retry: run it alone
                continue
            if d.status is not None and d.status not in ("queued", "running"):
                skipped.append(d)          # cancelled while queued, or finished by another worker
                continue
            final = self._try_start(d)
            if final is not None:
                finals.append((final, None))
            elif alone and jobs.engine_request_id(d) in self.in_flight:
                self.isolated = jobs.engine_request_id(d)
        self._write([], finals)       # first: these must survive a failing ack below
        if skipped:
            self.writer.ack_skipped(skipped)

    def _try_start(self, d: Delivery) -> Optional[Final]:
        """Start d in the engine; or the Final that ends it without running."""
        if d.job_id is None:
            return self._fail(d, "malformed_payload", "stream entry has no job id (field 'id': 1-128 letters, "
                                                      "digits, '.', '_' or '-')", dead_letter=True)
        if d.attempts > self.settings.max_attempts:
            return self._dead_letter(d)
        try:
            return self._start(d, jobs.parse_request(d, self.model_name, self.settings))
        except JobRejected as e:
            metrics.jobs_rejected.labels(code=e.code, **self._labels).inc()
            log.info("job %s rejected: %s", d.job_id, e.message)
            return self._fail(d, e.code, e.message)
        except Exception as e:      # the engine failed on this job alone: retry it, then dead-letter
            log.exception("job %s: engine error on admission; handing it back", d.job_id)
            metrics.engine_errors.labels(**self._labels).inc()
            d.last_error = safe_text(f"{type(e).__name__}: {e}")
            self.consumer.hand_back([d], graceful=False)
            return None

    def _start(self, d: Delivery, req) -> Optional[Final]:
        now = time.time()
        queued_at = d.queued_at or now
        if now > jobs.queue_deadline(req, queued_at, self.settings.queue_timeout_s):
            return Final(d, "expired", {"error": error_json(
                "queue_timeout", f"waited {now - queued_at:.1f}s in the queue, past its queue timeout")})
        if d.cancel_requested:
            return Final(d, "cancelled")
        request_id = jobs.engine_request_id(d)
        jobs.add_to_engine(self.engine, req, request_id)
        run_timeout = min(self.settings.run_timeout_s, req.run_timeout_s or self.settings.run_timeout_s)
        self.in_flight[request_id] = InFlight(d, req, request_id, now, time.monotonic() + run_timeout)
        metrics.request_queue_time.labels(**self._labels).observe(max(0.0, now - queued_at))
        return None

    def _fail(self, d: Delivery, code: str, message: str, dead_letter: bool = False) -> Final:
        return Final(d, "failed", {"error": error_json(code, message)},
                     dead_letter_reason=message if dead_letter else None, model=self.model_name)

    def _dead_letter(self, d: Delivery) -> Final:
        why = f"; last error: {d.last_error}" if d.last_error else " (its worker crashed or was killed each time)"
        message = (f"dead-lettered after {self.settings.max_attempts} attempts without a result{why}")
        log.error("job %s %s", d.job_id, message)
        metrics.queue_dead_lettered.labels(**self._labels).inc()
        return self._fail(d, "dead_letter", message, dead_letter=True)

    # --- the engine step ---
    def _step(self) -> None:
        self._last_batch_size = len(self.in_flight)
        try:
            outputs = self.engine.step()
        except Exception as e:      # an engine bug or a poison job: hand back, never lose jobs
            self._engine_failed(e)
            return
        self.num_engine_failures = 0
        deltas, finals = [], []
        for out in outputs:
            job = self.in_flight.get(out.request_id)
            if job is not None:
                self._collect(job, out, deltas, finals)
        self._write(deltas, finals)

    def _engine_failed(self, e: Exception) -> None:
        self.num_engine_failures += 1
        metrics.engine_errors.labels(**self._labels).inc()
        live = self._live()
        log.exception("engine step failed with jobs %s; handing them back", [j.delivery.job_id for j in live])
        if self.num_engine_failures > 2 and not live:
            raise SystemExit("engine keeps failing with no job of its own: exiting for a fresh start")
        for job in live:
            job.delivery.last_error = safe_text(f"{type(e).__name__}: {e}")
            self._abort(job, "handback")
        self.consumer.hand_back([j.delivery for j in live], graceful=False)

    def _collect(self, job: InFlight, out, deltas: list, finals: list) -> None:
        if job.first_token_at is None and any(c.token_ids for c in out.outputs):
            job.first_token_at = time.time()
        if job.request.stream and job.stop_reason is None:
            deltas.extend((job.delivery.job_id, delta_fields(c.index, c.new_text, list(c.new_token_ids)))
                          for c in out.outputs if c.new_text or c.new_token_ids)
        if out.finished:
            final = self._final(job, out)
            self._forget(job)       # out of the engine; its final is held until written
            if final is not None:
                finals.append((final, job))

    def _final(self, job: InFlight, out) -> Optional[Final]:
        if job.stop_reason in ("lease_lost", "handback"):
            return None        # another delivery of this job owns the result
        status, fields = "succeeded", {}
        if job.stop_reason == "cancel":
            status = "cancelled"
        elif job.stop_reason == "timeout":
            status = "failed"
            fields["error"] = error_json("run_timeout", "stopped at its run timeout; the partial output is kept")
        usage = jobs.usage(out)
        self._observe_tokens(job, usage)
        fields["output"] = output_json(self._completions(job, out), usage, jobs.prompt_logprobs(out))
        fields["started_at"] = f"{job.started_at:.6f}"
        fields["finished_at"] = f"{time.time():.6f}"      # the engine's finish, before the write
        if job.first_token_at is not None:
            fields["first_token_at"] = f"{job.first_token_at:.6f}"
        return Final(job.delivery, status, fields)

    def _observe_tokens(self, job: InFlight, usage) -> None:
        metrics.prompt_tokens.labels(**self._labels).inc(usage.prompt_tokens)
        metrics.generation_tokens.labels(**self._labels).inc(usage.completion_tokens)
        if job.first_token_at is not None:
            metrics.time_to_first_token.labels(**self._labels).observe(job.first_token_at - job.started_at)
            if usage.completion_tokens > 1:
                metrics.time_per_output_token.labels(**self._labels).observe(
                    (time.time() - job.first_token_at) / (usage.completion_tokens - 1))

    def _completions(self, job: InFlight, out):
        done = jobs.completions(out, job.request.sampling.logprobs)
        if job.stop_reason == "timeout":
            for c in done:
                c.finish_reason = "timeout"
        return done

    # --- writes and bookkeeping ---
    def _write(self, deltas: list, finals: list[tuple[Final, Optional[InFlight]]]) -> None:
        """Queue deltas and terminals for writing, and write them unless Redis is away."""
        self.unwritten_deltas += deltas
        self.unwritten += finals
        if self.is_connected:
            self._flush()

    def _flush(self) -> None:
        """Write what waits, in one round trip; kept for the next try if Redis fails meanwhile."""
        if not self.unwritten and not self.unwritten_deltas:
            return
        written = self.writer.flush(self.unwritten_deltas, [final for final, _ in self.unwritten])
        finals, self.unwritten, self.unwritten_deltas = self.unwritten, [], []
        for (final, job), ok in zip(finals, written):
            self._observe(final, job, ok)

    def _observe(self, final: Final, job: Optional[InFlight], written: bool) -> None:
        if not written:
            metrics.queue_duplicate_results.labels(**self._labels).inc()
            log.info("job %s: finished again after its result was written (duplicate counted)",
                     final.delivery.job_id)
            return
        metrics.request_success.labels(status=final.status, **self._labels).inc()
        if job is not None and job.delivery.queued_at:
            metrics.e2e_request_latency.labels(**self._labels).observe(time.time() - job.delivery.queued_at)

    def _forget(self, job: InFlight) -> None:
        self.in_flight.pop(job.request_id, None)
        if self.isolated == job.request_id:
            self.isolated = None

    def _abort(self, job: InFlight, reason: str) -> None:
        if job.stop_reason is None:
            job.stop_reason = reason
            self.engine.abort_request(job.request_id)

    def _read_cancels(self) -> None:
        while (msg := self._pubsub.get_message(timeout=0)) is not None:
            self._cancel(msg["data"].decode())

    def _cancel(self, job_id: str) -> None:
        for job in self.in_flight.values():
            if job.delivery.job_id == job_id:
                log.info("job %s: cancelled while running", job_id)
                self._abort(job, "cancel")

    def _enforce_run_timeouts(self) -> None:
        now = time.monotonic()
        for job in self.in_flight.values():
            if now > job.run_deadline:
                self._abort(job, "timeout")

    def _update_gauges(self, stats) -> None:
        metrics.num_requests_running.labels(**self._labels).set(len(self.in_flight))
        metrics.num_requests_waiting.labels(**self._labels).set(len(self.backlog))
        metrics.kv_cache_usage_perc.labels(**self._labels).set(stats.kv_cache_usage)
        metrics.prefix_cache_queries.labels(**self._labels).set(stats.prefix_cache_queries)
        metrics.prefix_cache_hits.labels(**self._labels).set(stats.prefix_cache_hits)
