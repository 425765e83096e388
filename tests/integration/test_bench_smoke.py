"""The issue-13 benchmarks' CPU smoke modes, a few jobs each: they run end to end (the tiny
demo model; the varied bench in-process, the arrival-rate bench through a real fleet on an
embedded Redis, the decode-step profile) and write the JSON their tables come from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--device", "cpu", "--out", str(tmp_path), *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / script.replace(".py", ".json")).read_text())


def test_varied_in_process(tmp_path):
    result = run_bench("bench_varied.py", tmp_path, "--jobs", "3", "--modes", "inprocess", "--samplers", "sort")
    run = result["inprocess"]["sort"]
    assert run["output_tok_s"] > 0 and run["steps"] == run["eager_steps"] > 0     # no graphs on the CPU
    assert 0 < run["sampler_share_pct"] < 100


def test_arrivals_through_the_fleet(tmp_path):
    pytest.importorskip("redis")
    result = run_bench("bench_arrivals.py", tmp_path, "--rates", "2", "--duration-s", "1.5")
    (rate,) = result["rates"]
    assert rate["jobs"] == 3 and rate["ttft_ms_p50"] <= rate["e2e_ms_p50"]


def test_sampler(tmp_path):
    result = run_bench("bench_sampler.py", tmp_path, "--batches", "2", "--vocab", "500", "--repeats", "1")
    assert {row["setting"] for row in result["masks"]} >= {"top_p 0.95", "top_k 50"}


def test_decode_steps(tmp_path):
    result = run_bench("bench_decode_steps.py", tmp_path, "--points", "3x24:top_p,1x8:greedy", "--steps", "3")
    rows = {row["point"]: row for row in result["steps"]}
    assert set(rows) == {"3x24:top_p", "1x8:greedy"} and not any("error" in row for row in rows.values())
    assert all(row["wall_ms_per_step"] > 0 and row["classes_ms"].get("gemm", 0) > 0 for row in rows.values())
    assert "sampler mask" in rows["3x24:top_p"]["classes_ms"] or "sampler other" in rows["3x24:top_p"]["classes_ms"]
