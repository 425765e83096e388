"""The tensor-parallel ranks 1..N-1 of an executor: spawned processes that only execute.

Rank 0 (the driver) lives in the engine's process, owns the scheduler and
samples. Each follower rank is a spawned process with its own ModelRunner on
device r, joined to the driver's process group (NCCL on cuda, gloo on the CPU)
for the layers' collectives. The driver talks to it over a pipe: a call is one
pickled message (method name, args), written once and sent to every follower;
calls other than the step answer on the same pipe. A pipe rather than a gloo
broadcast: half the latency or less (bench/bench_tp_plan.py), and a dead peer
is an EOF, not a hung collective.

Failure: a monitor thread on the driver waits on the followers' process
sentinels. A follower that dies outside close() leaves the group unable to
finish any collective (NCCL would wait forever), so the monitor kills the other
followers and ends this process with RANK_DIED_EXIT_CODE after a log line
naming the rank; a worker's in-flight jobs are then reclaimed by other workers
when their leases run out. The driver's own thread does the same if it finds a
follower's pipe closed first (so the exit code never depends on that race). A
follower whose driver dies exits on its own.

One TP group per process (torch.distributed has one default group): a new
FollowerRanks closes the one before it if its owner never did (an `LLM` replaced
without close()); using the closed one then raises a clear error.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import operator
import pickle
import threading
import weakref
from typing import Any, Optional

import torch

from qinfer.distributed.parallel_state import create_store, destroy_tp_group, disable_multicast, init_tp_group
from qinfer.contracts.engine_config import EngineConfig
from qinfer.contracts.scheduler_output import CachedRequestData, SchedulerOutput

log = logging.getLogger(__name__)
RANK_DIED_EXIT_CODE = 17
_JOIN_TIMEOUT_S = 30
_STEP = "execute_model_follower"
_open_group: Optional["weakref.ref[FollowerRanks]"] = None    # this process's TP group, while open


class FollowerRanks:
    def __init__(self, config: EngineConfig):
        """Spawn ranks 1..N-1, then join the group as rank 0 (returns once every rank has joined)."""
        global _open_group
        world_size, device_type = config.tensor_parallel_size, torch.device(config.device).type
        _close_open_group()
        disable_multicast()    # before the spawn: the followers inherit the environment
        store = create_store(world_size)
        self.pipes, self.processes = [], []
        for rank in range(1, world_size):
            self._spawn(config, rank, store.port)
        self._closing = threading.Event()
        self._ending = threading.Lock()    # the monitor or the driver's thread: one of them ends it
        threading.Thread(target=self._watch, name="qinfer-tp-monitor", daemon=True).start()
        atexit.register(self.close)
        init_tp_group(0, world_size, device_type, store=store)
        self._store = store   # kept alive: the group's rendezvous store lives in rank 0
        _open_group = weakref.ref(self)

    def _spawn(self, config: EngineConfig, rank: int, store_port: int) -> None:
        context = mp.get_context("spawn")   # never fork a process that may hold CUDA or gloo state
        driver_end, follower_end = context.Pipe()
        process = context.Process(target=_follower_main, name=f"qinfer-tp-rank{rank}", daemon=True,
                                  args=(config, rank, config.tensor_parallel_size, store_port, follower_end))
        process.start()
        follower_end.close()
        self.pipes.append(driver_end)
        self.processes.append(process)

    def call(self, method: str, *args: Any) -> None:
        """Have every follower run runner.<method>(*args) and answer (read with replies())."""
        self._send((method, args))

    def step(self, scheduler_output: SchedulerOutput, driver_sampled_ids: list[int]) -> None:
        """Have every follower run the step; no answer (the driver has the sampled ids)."""
        self._send((_STEP, (_compact(scheduler_output), driver_sampled_ids)))

    def _send(self, message: Any) -> None:
        if self._closing.is_set():
            raise RuntimeError("this tensor-parallel engine is closed (close() was called, or a newer "
                               "tensor-parallel engine in this process replaced it: one TP group per process)")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)   # once for every follower
        for rank, pipe in enumerate(self.pipes, start=1):
            try:
                pipe.send_bytes(data)
            except OSError:
                self._rank_died(rank)

    def replies(self) -> list[Any]:
        """The answer of every follower to the last call (a call other than the step)."""
        answers = []
        for rank, pipe in enumerate(self.pipes, start=1):
            try:
                answers.append(pipe.recv())
            except (EOFError, OSError):
                self._rank_died(rank)
        return answers

    def close(self) -> None:
        """Stop the followers (they leave the group) and leave it; safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        for pipe in self.pipes:
            with contextlib.suppress(OSError):     # that follower is gone already
                pipe.send_bytes(pickle.dumps(None))
        for process in self.processes:
            process.join(_JOIN_TIMEOUT_S)
            if process.is_alive():
                process.kill()
        destroy_tp_group()
        atexit.unregister(self.close)

    @property
    def is_closed(self) -> bool:
        return self._closing.is_set()

    def _watch(self) -> None:
        by_sentinel = {p.sentinel: rank for rank, p in enumerate(self.processes, start=1)}
        ready = mp.connection.wait(list(by_sentinel))
        if not self._closing.is_set():
            self._rank_died(by_sentinel[ready[0]])

    def _rank_died(self, rank: int) -> None:
        self._ending.acquire()   # never released: the process ends below
        process = self.processes[rank - 1]
        process.join(5)   # reaps it, so its exit code is known
        log.critical("tensor-parallel rank %d (pid %d) died with exit code %s; the group cannot go on: "
                     "exiting with code %d", rank, process.pid, process.exitcode, RANK_DIED_EXIT_CODE)
        for other in self.processes:
            if other.is_alive():
                other.kill()
        os._exit(RANK_DIED_EXIT_CODE)


def _close_open_group() -> None:
    previous = _open_group() if _open_group is not None else None
    if previous is not None and not previous.is_closed:
        log.warning("closing the tensor-parallel engine made before this one, which was never closed "
                    "(one TP group per process: call LLM.close(), or use `with LLM(...)`)")
        previous.close()


# ---- the follower process ------------------------------------------------------------------

def _follower_main(config: EngineConfig, rank: int, world_size: int, store_port: int,
                   pipe: mp.connection.Connection) -> None:
    from qinfer.executor.model_runner import ModelRunner

    _exit_with_driver()
    if torch.device(config.device).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # ranks share the cores
    init_tp_group(rank, world_size, torch.device(config.device).type, store_port=store_port)
    runner = ModelRunner(config, rank, world_size)
    while (message := pickle.loads(pipe.recv_bytes())) is not None:
        method, args = message
        if method == _STEP:
            scheduler_output, driver_sampled_ids = args
            runner.execute_model_follower(_expanded(scheduler_output), driver_sampled_ids)
        else:
            pipe.send(getattr(runner, method)(*args))
    destroy_tp_group()


# A step carries one CachedRequestData per running request; as plain tuples they pickle several
# times faster than as dataclasses (~80 vs ~500 us for 256 requests).
_cached_request_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(CachedRequestData)))


def _compact(scheduler_output: SchedulerOutput) -> SchedulerOutput:
    return dataclasses.replace(scheduler_output, cached_requests=[_cached_request_fields(c) for c in scheduler_output.cached_requests])


def _expanded(scheduler_output: SchedulerOutput) -> SchedulerOutput:
    scheduler_output.cached_requests = [CachedRequestData(*fields) for fields in scheduler_output.cached_requests]
    return scheduler_output


def _exit_with_driver() -> None:
    """Exit as soon as the driver process is gone (killed: it never sends the closing message)."""
    driver = mp.parent_process()

    def wait_and_exit() -> None:
        driver.join()
        os._exit(1)

    threading.Thread(target=wait_and_exit, name="qinfer-tp-driver-watch", daemon=True).start()
