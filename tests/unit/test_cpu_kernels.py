"""The compiled CPU decode attention (csrc/cpu, qinfer.ops.cpu_compiled) against the float64 oracle,
and the batched SDPA backend routing its decode rows through it. Wherever a C++ compiler exists the
kernel must build: a broken build fails here instead of silently serving the slower torch path."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from qinfer import ops
from qinfer.layers.attention import sdpa_backend
from qinfer.layers.attention.backend import AttentionMetadata
from qinfer.ops import cpu_compiled
from qinfer.testing.paged_batch import attention_ref, make_batch, poison_blocks_behind_window, rel_err

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the torch path serves")

HEADS = {"mha": (4, 4), "gqa3": (9, 3), "gqa4": (8, 2)}        # (query heads, kv heads)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def decode(q, k_cache, v_cache, block_tables, seq_lens, scale, window=0):
    out = torch.empty_like(q)
    torch.ops.qinfer_cpu.paged_decode_attention(out, q, k_cache, v_cache, block_tables, seq_lens, scale, window)
    return out


def test_the_kernel_builds_and_loads():
    assert cpu_compiled.available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("head_size,block_size", [(16, 4), (64, 16), (80, 5), (20, 3)])
def test_decode_matches_the_oracle(dtype, heads, head_size, block_size):
    """Head sizes with and without a remainder past the kernel's 16 lanes; contexts of 1 token
    up to several blocks, a block boundary inside a block or not."""
    num_heads, num_kv = HEADS[heads]
    assert cpu_compiled.available()
    ctx = [0, 6, 33, 16, 2, 47]
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * len(ctx), ctx, num_heads, num_kv, head_size, block_size,
                                              dtype, seed=head_size)
    got = decode(q, kc, vc, bt, seq_lens, 0.3)
    expected = attention_ref(q.double(), kc.double(), vc.double(), bt, seq_lens, qsl, 0.3)
    assert rel_err(got.double(), expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("window", [1, 5, 16, 1000])
def test_decode_sliding_window_never_reads_behind_it(window):
    assert cpu_compiled.available()
    ctx = [0, 9, 40, 17, 64]
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * len(ctx), ctx, 9, 3, 16, 4, torch.float32, seed=window)
    expected = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25, sliding_window=window)
    poison_blocks_behind_window(kc, vc, bt, seq_lens, qsl, window)
    got = decode(q, kc, vc, bt, seq_lens, 0.25, window)
    assert torch.isfinite(got).all() and rel_err(got, expected) < 1e-5


def test_decode_reads_a_strided_query_and_writes_a_strided_output():
    """The attention layer's query is a view into the fused qkv projection (row stride > heads * D)."""
    assert cpu_compiled.available()
    ctx = [3, 20, 11]
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * len(ctx), ctx, 8, 2, 16, 4, torch.float32, seed=3)
    wide = torch.randn(len(ctx), 12, 16)
    wide[:, :8] = q
    out = torch.zeros(len(ctx), 10, 16)
    torch.ops.qinfer_cpu.paged_decode_attention(out[:, 1:9], wide[:, :8], kc, vc, bt, seq_lens, 0.25, 0)
    assert rel_err(out[:, 1:9], attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25)) < 1e-5
    assert not out[:, 0].any() and not out[:, 9].any()


def test_decode_refuses_bad_arguments_with_a_message():
    assert cpu_compiled.available()
    q, kc, vc, bt, seq_lens, _ = make_batch([1, 1], [4, 5], 4, 2, 16, 4, torch.float32)
    with pytest.raises(RuntimeError, match="int32"):
        decode(q, kc, vc, bt.long(), seq_lens, 0.25)
    with pytest.raises(RuntimeError, match="one dtype"):
        decode(q.double(), kc, vc, bt, seq_lens, 0.25)


def test_sdpa_backend_sends_decode_rows_to_the_kernel(monkeypatch):
    """A mixed step: the decode rows through the kernel, the chunks through SDPA; the same output as
    the backend's torch path (the kernel forced off) and as the oracle."""
    assert cpu_compiled.available()
    calls = []
    kernel = sdpa_backend._attend_decodes_in_place
    monkeypatch.setattr(sdpa_backend, "_attend_decodes_in_place", lambda *a: calls.append(1) or kernel(*a))
    query_lens, ctx = [1, 9, 1, 4, 1], [40, 0, 5, 11, 0]
    q, kc, vc, bt, seq_lens, qsl = make_batch(query_lens, ctx, 9, 3, 16, 4, torch.float32, seed=5)
    meta = AttentionMetadata(slot_mapping=torch.zeros(len(q), dtype=torch.long), query_start_loc=qsl,
                             seq_lens=seq_lens, block_tables=bt, max_query_len=9, max_seq_len=int(seq_lens.max()))
    run = lambda: sdpa_backend.SdpaAttentionBackend().forward(q, None, None, kc, vc, meta, 0.25,   # noqa: E731
                                                              kv_written=True)
    compiled = run()
    assert calls == [1]
    ops.use_implementation("paged_decode_attention", "torch")
    try:
        torch_path = run()
    finally:
        ops.use_implementation("paged_decode_attention", None)
    assert calls == [1]
    torch.testing.assert_close(compiled, torch_path, atol=1e-5, rtol=1e-5)
    assert rel_err(compiled, attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25)) < 1e-5


def test_a_failing_build_leaves_the_torch_path_and_says_why(tmp_path):
    """A compiler that fails: available() is False, one warning names the failure, and the SDPA
    backend still attends (its torch path). In a fresh process: this one has the kernel loaded."""
    code = ("import logging, torch; logging.basicConfig(level=logging.WARNING)\n"
            "from qinfer.ops import cpu_compiled\n"
            "from qinfer.layers.attention.sdpa_backend import SdpaAttentionBackend\n"
            "from qinfer.layers.attention.backend import AttentionMetadata\n"
            "from qinfer.testing.paged_batch import make_batch\n"
            "assert not cpu_compiled.available() and not cpu_compiled.available()\n"
            "q, kc, vc, bt, sl, qsl = make_batch([1, 1], [3, 7], 4, 2, 16, 4, torch.float32)\n"
            "meta = AttentionMetadata(slot_mapping=torch.zeros(2, dtype=torch.long), query_start_loc=qsl,\n"
            "                         seq_lens=sl, block_tables=bt, max_query_len=1, max_seq_len=int(sl.max()))\n"
            "out = SdpaAttentionBackend().forward(q, None, None, kc, vc, meta, 0.25, kv_written=True)\n"
            "assert torch.isfinite(out).all()\n")
    failing = tmp_path / "cxx"
    failing.write_text("#!/bin/sh\necho 'cxx: cannot build here' >&2\nexit 1\n")
    failing.chmod(0o755)
    env = {**os.environ, "CXX": str(failing), "QINFER_CPU_OPS_DIR": str(tmp_path / "ops")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "CPU kernels unavailable" in line]
    assert len(warnings) == 1 and "cxx: cannot build here" in warnings[0]



# ---- the elementwise kernels (csrc/cpu/elementwise.cpp) against qinfer.ops.reference ----------

def _wide_rows(num_rows: int, width: int, dtype, pad: int = 0) -> torch.Tensor:
    """[num_rows, width] whose rows lie width + pad apart (pad > 0: a view, like the fused qkv's)."""
    return torch.randn(num_rows, width + pad).to(dtype)[:, :width]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,hidden,pad", [(1, 576, 0), (37, 576, 8), (5, 17, 0), (64, 2048, 0)])
def test_norms_match_the_reference(dtype, rows, hidden, pad):
    """Widths with and without a remainder past the 16-float vectors; rows apart (a view)."""
    from qinfer.ops import reference
    assert cpu_compiled.available()
    x, residual = _wide_rows(rows, hidden, dtype, pad), _wide_rows(rows, hidden, dtype, pad)
    weight = torch.randn(hidden).to(dtype)
    assert rel_err(torch.ops.qinfer_cpu.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5)) \
        < TOLERANCE[dtype]
    expected, expected_sum = reference.fused_add_rms_norm(x, residual, weight, 1e-5)
    x_in, residual_in = x.clone(), residual.clone()
    torch.ops.qinfer_cpu.fused_add_rms_norm(x_in, residual_in, weight, 1e-5)
    assert torch.equal(residual_in, expected_sum)          # x + residual, rounded once like torch
    assert rel_err(x_in, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_size", [64, 20])
def test_rotary_and_cache_matches_the_reference(dtype, is_neox, head_size):
    """Query and key rotated in place (views of one fused qkv row, as the layer passes them), the
    rotated key and the value written at their slots, a negative slot skipped."""
    from qinfer.layers.rotary import RotaryEmbedding
    from qinfer.ops import reference
    assert cpu_compiled.available()
    num_tokens, num_heads, num_kv, block_size = 11, 9, 3, 4
    cos_sin = RotaryEmbedding(head_size, 64, {"rope_type": "default", "rope_theta": 10000.0}).cos_sin_cache
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv) * head_size).to(dtype)
    positions = torch.randint(0, 64, (num_tokens,))
    slots = torch.randperm(6 * block_size)[:num_tokens]
    slots[3] = -1
    caches = [torch.zeros(6, block_size, num_kv, head_size, dtype=dtype) for _ in range(4)]

    def split(t):
        q_end, k_end = num_heads * head_size, (num_heads + num_kv) * head_size
        return t[:, :q_end], t[:, q_end:k_end], t[:, k_end:]

    expected_qkv, got_qkv = qkv.clone(), qkv.clone()
    reference.rotary_and_cache(positions, *split(expected_qkv), caches[0], caches[1], slots, head_size, cos_sin,
                               is_neox)
    torch.ops.qinfer_cpu.rotary_and_cache(positions, *split(got_qkv), caches[2], caches[3], slots, head_size,
                                          cos_sin, is_neox)
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    assert rel_err(got_qkv, expected_qkv) < tolerance
    assert rel_err(caches[2], caches[0]) < tolerance and torch.equal(caches[3], caches[1])


@pytest.mark.parametrize("width", [49152, 8, 13, 1])
def test_argmax_rows_equals_torch_argmax(width):
    """torch's semantics: the first of equal maxima (in any lane, or the tail), the first NaN, 0 for -inf rows."""
    assert cpu_compiled.available()
    x = torch.randn(9, width + 5)[:, :width]             # rows apart: a view
    x[1] = 3.0                                           # all equal: index 0
    x[2, -1] = 50.0                                      # the tail or the last lane
    if width > 3:
        x[3, [2, width - 1]] = 40.0                      # a tie: the first
        x[4, [1, 3]] = float("nan")                      # the first NaN
    x[5] = float("-inf")
    x[6, 0] = float("inf")
    got = torch.ops.qinfer_cpu.argmax_rows(x)
    assert torch.equal(got, x.argmax(dim=-1))


def test_the_elementwise_kernels_serve_the_cpu_ops():
    """Once the library loads, qinfer.ops dispatches CPU tensors to it, the reference where a
    kernel does not apply (a float64 row)."""
    assert cpu_compiled.available()
    chosen = ops.implementations("cpu")
    assert {chosen[op] for op in ("rms_norm", "fused_add_rms_norm", "rotary_and_cache", "argmax")} \
        == {"cpu"}
    x = torch.randn(3, 8, dtype=torch.float64)
    assert ops.rms_norm(x, torch.ones(8, dtype=torch.float64), 1e-6).dtype == torch.float64


# ---- float32 linear layers over 16-column tiles (csrc/cpu/linear.cpp, qinfer.ops.cpu_linear) ----

@pytest.mark.parametrize("rows", [1, 5, 16, 17, 33, 64, 129])
@pytest.mark.parametrize("n, k", [(96, 64), (1000, 72), (37, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_tiled_linear_matches_float64(rows, n, k, bias):
    """Row counts across the kernel's row blocks (one, two near-equal ones, several), N off the
    16-column tiles (the padded last tile), K off any vector width."""
    from qinfer.ops.cpu_linear import PackedWeight

    assert cpu_compiled.available()
    torch.manual_seed(rows * n + k)
    x, weight = torch.randn(rows, k), torch.randn(n, k) / k ** 0.5
    b = torch.randn(n) if bias else None
    packed = PackedWeight(weight, batch_hint=16)
    assert packed.tiles.shape == (-(-n // 16), k, 16)
    expected = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    out = torch.ops.qinfer_cpu.linear_tiled(x, packed.tiles, b, n)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed(x, b).double(), expected, atol=1e-5, rtol=1e-5)   # tiles or oneDNN


def test_tiled_linear_takes_strided_rows_and_leading_dimensions():
    from qinfer.ops.cpu_linear import PackedWeight

    weight = torch.randn(48, 32)
    packed = PackedWeight(weight, batch_hint=16)
    assert packed.tiles is not None
    wide = torch.randn(7, 64)
    torch.testing.assert_close(packed(wide[:, :32]), wide[:, :32] @ weight.T, atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(packed(x), x @ weight.T, atol=1e-5, rtol=1e-5)


def test_inputs_past_the_tiles_share_go_to_onednn(monkeypatch):
    """The row limit is measured once per weight shape (16 rows at least, then each candidate the
    tiles time no slower than oneDNN on); inputs past it go to oneDNN."""
    from qinfer.ops import cpu_linear, onednn_linear

    if not onednn_linear.packs(torch.float32):
        pytest.skip("this torch has no oneDNN")
    real_tiles_win, timed = cpu_linear._tiles_win, []
    monkeypatch.setattr(cpu_linear, "_MAX_ROWS", {})
    monkeypatch.setattr(cpu_linear, "_tiles_win", lambda tiled, onednn: timed.append(tiled) or False)
    packed = cpu_linear.PackedWeight(torch.randn(48, 32), batch_hint=16)
    assert packed.tiled_max_rows == cpu_linear.WEIGHT_BOUND_ROWS and len(timed) == 1   # lost at the first candidate
    cpu_linear.PackedWeight(torch.randn(48, 32), batch_hint=16)
    assert len(timed) == 1                                                            # measured once per shape
    monkeypatch.setattr(cpu_linear, "_tiles_win", real_tiles_win)
    monkeypatch.setattr(cpu_linear, "_best_us", lambda fn, calls=1: 0.0)              # ties: the tiles keep them
    assert cpu_linear.PackedWeight(torch.randn(40, 32), batch_hint=16).tiled_max_rows == cpu_linear.CANDIDATE_ROWS[-1]
    limit = packed.tiled_max_rows
    sent, packed_linear = [], onednn_linear.packed_linear
    monkeypatch.setattr(onednn_linear, "packed_linear", lambda x, *rest: sent.append(len(x)) or packed_linear(x, *rest))
    for rows in (1, limit, limit + 1):
        packed(torch.randn(rows, 32))
    assert sent == [limit + 1]


def test_tiled_linear_refuses_a_weight_of_another_width():
    from qinfer.ops.cpu_linear import PackedWeight

    packed = PackedWeight(torch.randn(48, 32), batch_hint=16)
    with pytest.raises(RuntimeError, match="linear_tiled"):
        torch.ops.qinfer_cpu.linear_tiled(torch.randn(2, 31), packed.tiles, None, 48)
