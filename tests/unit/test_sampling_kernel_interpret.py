"""The Triton top-k / top-p / min-p kernel on the CPU under TRITON_INTERPRET=1: every case of
sampling_oracle against the direct computation, tiny blocks and few pivots so a row spans
several blocks and the search takes many passes (the scratch compaction included).

TRITON_INTERPRET must be set before triton is first imported (see
test_triton_attention_interpret.py): unless it was, the one test that runs here re-runs this
file in a child pytest with it set.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.unit.sampling_oracle import assert_kept_as_expected, cases

pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpret = pytest.mark.skipif(not INTERPRET, reason="runs in the child process")


@pytest.mark.skipif(INTERPRET, reason="already under the interpreter")
def test_kernel_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "--noconftest", "-p", "no:cacheprovider",
         os.path.abspath(__file__)],
        env=env, capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]


@needs_interpret
@pytest.mark.parametrize("case", cases(vocab_size=40, num_rows=4), ids=lambda case: case.name)
def test_kernel_keeps_what_the_direct_computation_keeps(case):
    from qinfer.kernels.sampling import top_k_top_p_min_p_triton

    logits = top_k_top_p_min_p_triton(case.logits.clone(), case.top_k, case.top_p, case.min_p,
                                      block=16, num_pivots=4, num_warps=1)
    assert_kept_as_expected(logits > float("-inf"), case, rounding=0.0 if case.exact else 1e-6)
