"""A `qinfer worker --tp 2` process (rank 0 + one spawned gloo rank) serving the queue end to end,
and what happens when its second rank is killed: the worker exits non-zero naming the rank, and its
jobs finish on another worker; and when the worker itself is killed: its rank follows."""
import os
import signal
import subprocess
from pathlib import Path

import pytest

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.executor.multiproc_executor import RANK_DIED_EXIT_CODE
from qinfer.fleet import Fleet, worker_command
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from qinfer.worker.health import list_workers
from tests.fixtures_redis import TEST_ENV, wait_until

MODEL = "tiny"
GREEDY = {"temperature": 0, "max_tokens": 12}
LONG = {"temperature": 0, "max_tokens": 60, "ignore_eos": True}
PROMPTS = [f"{s} number {i}" for i, s in enumerate(["The quick brown fox", "A small robot", "The river",
                                                     "My old teacher", "Every engine", "The red kettle"])]
WORKER_ARGS = ("--served-model-name", MODEL, "--num-kv-blocks", "256", "--max-num-seqs", "8")


@pytest.fixture
def tp_worker(redis_url, tiny_llama_dir, client, tmp_path):
    """The worker process, ready; its stderr is in tmp_path / "worker.log"."""
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(worker_command(tiny_llama_dir, redis_url, *WORKER_ARGS, "--tp", "2"),
                                  env={**os.environ, **TEST_ENV}, stderr=log)
    wait_until(lambda: list_workers(client.redis, Keys()) or worker.poll() is not None, timeout=60)
    assert worker.poll() is None, (tmp_path / "worker.log").read_text()
    yield worker
    ranks = follower_ranks(worker.pid) if worker.poll() is None else []
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) in (0, RANK_DIED_EXIT_CODE, -signal.SIGKILL)
    wait_until(lambda: not any(is_running(pid) for pid in ranks), timeout=10)   # no rank outlives its worker


@pytest.fixture
def client(redis_url):
    return Client(settings=Settings(redis_url=redis_url))


def offline(model_dir, prompts, sampling):
    from qinfer import LLM, SamplingParams

    llm = LLM(str(model_dir), num_kv_blocks=256)
    return [(o.outputs[0].text, o.outputs[0].token_ids)
            for o in llm.generate(prompts, SamplingParams(**sampling), use_tqdm=False)]


def follower_ranks(worker_pid: int) -> list[int]:
    """Pids of the worker's spawned TP ranks (not multiprocessing's helper processes)."""
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"     # a zombie has ended, only its parent has not reaped it


def submit(client, prompts, sampling):
    return client.submit_many([{"model": MODEL, "prompt": p, "sampling": sampling} for p in prompts])


def test_tp2_worker_serves_jobs_like_offline_generate(tp_worker, client, tiny_llama_dir):
    assert len(follower_ranks(tp_worker.pid)) == 1
    results = [client.wait(i, timeout=60) for i in submit(client, PROMPTS, GREEDY)]
    assert all(r.status is JobStatus.SUCCEEDED for r in results)
    assert [(r.text, r.token_ids) for r in results] == offline(tiny_llama_dir, PROMPTS, GREEDY)


def test_killed_rank_ends_the_worker_and_its_jobs_finish_elsewhere(tp_worker, client, tiny_llama_dir,
                                                                   redis_url, tmp_path):
    worker = tp_worker
    ids = submit(client, PROMPTS, LONG)
    wait_until(lambda: all(client.get(i).status is JobStatus.RUNNING for i in ids), timeout=30, interval=0.01)
    [rank1] = follower_ranks(worker.pid)
    os.kill(rank1, signal.SIGKILL)
    exit_code = worker.wait(timeout=30)
    log = (tmp_path / "worker.log").read_text()
    assert exit_code == RANK_DIED_EXIT_CODE, log
    assert f"tensor-parallel rank 1 (pid {rank1}) died with exit code -9" in log
    rescue = Fleet(tiny_llama_dir, redis_url, 1, worker_args=WORKER_ARGS,
                   env={**TEST_ENV, "QINFER_REDIS_URL": redis_url}).start()
    try:
        results = [client.wait(i, timeout=90) for i in ids]
    finally:
        rescue.stop(timeout=30)
    assert all(r.status is JobStatus.SUCCEEDED and r.attempts == 2 for r in results), results
    assert [(r.text, r.token_ids) for r in results] == offline(tiny_llama_dir, PROMPTS, LONG)


def test_killed_worker_takes_its_rank_with_it(tp_worker):
    [rank1] = follower_ranks(tp_worker.pid)
    tp_worker.kill()
    tp_worker.wait()
    wait_until(lambda: not is_running(rank1), timeout=10)
