"""Triton kernel tests on the CPU under TRITON_INTERPRET=1.

triton.language defines its own jit helpers (tl.zeros, ...) when triton is first imported,
and TRITON_INTERPRET must be set by then; another test module may have imported triton
already. So, unless the variable was set before pytest started, a module's one test that
runs re-runs the module in a child pytest with it set (rerun_under_interpreter), and its
kernel tests (needs_interpret) run only there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpret = pytest.mark.skipif(not INTERPRET, reason="runs in the child process")
not_under_interpreter = pytest.mark.skipif(INTERPRET, reason="already under the interpreter")


def rerun_under_interpreter(test_file: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "--noconftest", "-p", "no:cacheprovider",
         os.path.abspath(test_file)],
        env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
