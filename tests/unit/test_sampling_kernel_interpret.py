"""The Triton top-k / top-p / min-p kernel on the CPU under TRITON_INTERPRET=1: every case of
sampling_oracle against the direct computation, tiny blocks and few pivots so a row spans
several blocks and the search takes many passes (the scratch compaction included). The
interpreter runs one program per row (it cannot run a row's programs side by side):
tests/gpu/test_sampler_gpu.py covers rows split over several programs.
How it runs under the interpreter: tests/triton_interpreter.py."""
from __future__ import annotations

import pytest

from tests.unit.sampling_oracle import assert_kept_as_expected, cases
from tests.triton_interpreter import in_parent_only, needs_interpret, rerun_under_interpreter

pytest.importorskip("triton")


@in_parent_only
def test_kernel_under_interpreter():
    rerun_under_interpreter(__file__)


@needs_interpret
@pytest.mark.parametrize("case", cases(vocab_size=40, num_rows=4), ids=lambda case: case.name)
def test_kernel_keeps_what_the_direct_computation_keeps(case):
    from qinfer.ops.sampling_triton import top_k_top_p_min_p_triton

    logits = top_k_top_p_min_p_triton(case.logits.clone(), case.top_k, case.top_p, case.min_p,
                                      block=16, num_pivots=4, num_warps=1)
    assert_kept_as_expected(logits > float("-inf"), case, rounding=0.0 if case.exact else 1e-6)
