"""Mixture-of-experts layers: the router and the fused experts (ops.fused_experts)."""
from qinfer.layers.moe.fused_moe import FusedMoE, SparseMoeBlock  # noqa: F401
