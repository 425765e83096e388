"""Prefix-affinity routing on the CPU: 3 workers, jobs behind a handful of long shared system
prompts with unique user parts, routing on vs off.

    python bench/bench_affinity.py [--jobs 300] [--workers 3] [--prompts 6] [--kv-blocks 96]

Each worker's KV cache holds only a few of the system prompts (--kv-blocks of 16 tokens;
each system prompt is ~400 tokens of the tiny model), as a GPU's cache holds a few of a busy deployment's: with
routing off every worker sees every prompt and evicts; with routing on each sees its share.
Reports the prefix-cache hit rate (prompt tokens found in the cache over tokens looked up,
summed over the workers' heartbeats) and jobs/s. Prints a table, writes
bench/results/affinity.json.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import EmbeddedRedis
from qinfer.fleet import Fleet
from qinfer.testing.tiny_model import make_tiny_model
from qinfer.worker.health import list_workers

MODEL = "affinity-bench"
TOPICS = ["bicycles", "tax law", "sourdough", "glaciers", "chess openings", "jazz harmony", "beekeeping",
          "typography"]


def system_prompt(topic: str) -> str:
    rules = " ".join(f"Rule {i}: when asked about {topic}, answer in one short sentence." for i in range(10))
    return f"You are an assistant who knows {topic}. {rules}"


def jobs(n: int, num_prompts: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    systems = [system_prompt(t) for t in TOPICS[:num_prompts]]
    return [{"model": MODEL, "messages": [{"role": "system", "content": rng.choice(systems)},
                                          {"role": "user", "content": f"Question {i}: what about case {rng.random()}?"}],
             "sampling": {"temperature": 0, "max_tokens": 8, "ignore_eos": True}} for i in range(n)]


def run(model_dir: Path, affinity: bool, args) -> dict:
    env = {"QINFER_AFFINITY_ROUTING": "1" if affinity else "0", "QINFER_LOG_LEVEL": "WARNING",
           "QINFER_HEARTBEAT_TTL_S": "30"}
    with EmbeddedRedis() as server:
        fleet = Fleet(model_dir, server.url, args.workers, env=env,
                      worker_args=("--served-model-name", MODEL, "--num-kv-blocks", str(args.kv_blocks),
                                   "--max-num-seqs", "8", "--max-model-len", "1024"))
        fleet.start().wait_ready()
        client = Client(settings=Settings(redis_url=server.url, affinity_routing=affinity))
        time.sleep(2)                       # every worker has read who owns which lane
        try:
            start = time.perf_counter()
            ids = client.submit_many(jobs(args.jobs, args.prompts))
            results = [client.wait(i, timeout=600) for i in ids]
            elapsed = time.perf_counter() - start
            time.sleep(args.workers)        # a last heartbeat with the final cache counters
            beats = list_workers(client.redis, client.keys)
        finally:
            fleet.stop()
    queries = sum(int(b.get("prefix_cache_queries", 0)) for b in beats)
    hits = sum(int(b.get("prefix_cache_hits", 0)) for b in beats)
    return {"affinity": affinity, "jobs": len(results), "succeeded": sum(r.status.value == "succeeded" for r in results),
            "jobs_per_s": round(len(results) / elapsed, 2), "prefix_hit_rate": round(hits / queries, 3) if queries else 0,
            "workers_used": len({r.worker for r in results})}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--kv-blocks", type=int, default=96)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "affinity.json"))
    args = ap.parse_args(argv)
    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="qinfer-affinity-")), "llama", num_layers=2,
                                hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128,
                                max_position_embeddings=1024)
    rows = [run(model_dir, affinity, args) for affinity in (False, True)]
    columns = list(rows[0])
    print("  ".join(c.ljust(14) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(14) for c in columns))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
