"""CPU linears with oneDNN-packed weights against the reference op (F.linear), and the layers
that pack themselves: same outputs, the dense copy freed, the reference kept when forced."""
from __future__ import annotations

import pytest
import torch

from qinfer import ops
from qinfer.layers.embedding import LMHead
from qinfer.layers.linear import MergedColumnParallelLinear, RowParallelLinear, pack_linears_for_cpu
from qinfer.ops import onednn_linear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
torch.manual_seed(0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_the_reference(dtype, atol, rows, bias):
    if not onednn_linear.packs(dtype):
        pytest.skip(f"this CPU's oneDNN does not pack {dtype} (test_unpackable_dtype_stays_dense covers it)")
    x, weight = torch.randn(rows, 96, dtype=dtype), torch.randn(80, 96, dtype=dtype) / 10
    b = torch.randn(80, dtype=dtype) if bias else None
    packed = onednn_linear.pack(weight, batch_hint=16)
    torch.testing.assert_close(onednn_linear.packed_linear(x, packed, b), ops.linear(x, weight, b),
                               atol=atol, rtol=atol)


def test_packed_linear_takes_leading_dimensions():
    x, weight = torch.randn(2, 3, 32), torch.randn(48, 32)
    out = onednn_linear.packed_linear(x, onednn_linear.pack(weight, 4))
    torch.testing.assert_close(out, x @ weight.T, atol=1e-5, rtol=1e-5)


def _layers():
    torch.manual_seed(1)
    merged = MergedColumnParallelLinear(32, [24, 24], bias=True, tp_rank=0, tp_size=1)
    row = RowParallelLinear(48, 32, bias=True, tp_rank=0, tp_size=1)
    head = LMHead(100, 32)
    for p in (*merged.parameters(), *row.parameters(), *head.parameters()):
        p.data.normal_()
    return torch.nn.ModuleList([merged, row, head])


def test_packed_layers_give_the_outputs_of_the_dense_ones():
    layers, x, x_row = _layers(), torch.randn(5, 32), torch.randn(5, 48)
    with torch.inference_mode():
        dense = [layers[0](x), layers[1](x_row), layers[2](x)]
        assert pack_linears_for_cpu(layers, batch_hint=8) == 3
        packed = [layers[0](x), layers[1](x_row), layers[2](x)]
    for a, b in zip(dense, packed):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert layers[0].weight.numel() == 0 and layers[1].weight.numel() == 0   # only the packed copy is kept
    assert layers[2].weight.shape == (100, 32)                              # may be the tied embedding


def test_gated_activation_of_merged_layer_dense_and_packed():
    """MergedColumnParallelLinear.silu_and_mul(x) is silu(gate) * up of the layer's [gate; up]
    output, computed here directly, with the dense weight and with the packed one."""
    merged, x = _layers()[0], torch.randn(5, 32)
    with torch.inference_mode():
        gate, up = (x @ merged.weight.T + merged.bias).chunk(2, dim=-1)
        expected = gate * torch.sigmoid(gate) * up
        torch.testing.assert_close(merged.silu_and_mul(x), expected, atol=1e-5, rtol=1e-5)
        assert merged.pack_for_cpu(batch_hint=8)
        torch.testing.assert_close(merged.silu_and_mul(x), expected, atol=1e-4, rtol=1e-4)


def test_forcing_the_reference_keeps_dense_weights(monkeypatch):
    monkeypatch.setenv("QINFER_OPS_IMPL", "torch")
    layers = _layers()
    assert pack_linears_for_cpu(layers, batch_hint=8) == 0
    assert all(layer.packed_weight is None for layer in layers)


def test_unpackable_dtype_stays_dense():
    """A dtype this CPU's oneDNN refuses (bfloat16 without AVX-512, float16 anywhere) is never
    packed: the layers keep their dense weights and still compute (F.linear)."""
    dtype = torch.bfloat16 if not onednn_linear.packs(torch.bfloat16) else torch.float16
    assert not onednn_linear.packs(dtype)
    layers, x = _layers().to(dtype), torch.randn(5, 32, dtype=dtype)
    with torch.inference_mode():
        dense = layers[0](x)
        assert pack_linears_for_cpu(layers, batch_hint=8) == 0
        assert all(layer.packed_weight is None for layer in layers)
        torch.testing.assert_close(layers[0](x), dense)
