"""Run a test file's Triton kernels on the CPU under TRITON_INTERPRET=1.

triton.language defines its own jit helpers (tl.zeros, ...) when triton is first imported, and
TRITON_INTERPRET must be set by then; another test module may have imported triton already. So,
unless the variable was set before pytest started, a module's one in-process test re-runs the
file in a child pytest with it set (`rerun_under_interpreter(__file__)`); its other tests carry
`needs_interpret` and run only in the child.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpret = pytest.mark.skipif(not INTERPRET, reason="runs in the child process")
in_parent_only = pytest.mark.skipif(INTERPRET, reason="already under the interpreter")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rerun_under_interpreter(test_file: str) -> None:
    """Run test_file in a child pytest under the interpreter; fail with its output if it fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "--noconftest", "-p", "no:cacheprovider",
         os.path.abspath(test_file)],
        env=env, capture_output=True, text=True, timeout=600, cwd=_ROOT)
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
