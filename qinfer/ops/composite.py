"""Fused ops run as the ops they fuse, each dispatched to its best implementation on the device:
the "composite" implementation serves where no kernel of the fused op's own is registered (the
CPU; a GPU without qinfer._C), so the fusion costs nothing there, and the torch reference stays
pure torch (the tests' oracle).
"""
from __future__ import annotations

from qinfer.ops.registry import dispatch, register


@register("qk_norm_rotary_and_cache", "composite", ("cpu", "cuda"))
def qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                             cos_sin_cache, is_neox, q_weight, k_weight, eps):
    rms_norm = dispatch("rms_norm", query)
    # [T, H * D] -> [T * H, D] rows: a copy where q and k are strided views of a fused projection.
    query = rms_norm(query.reshape(-1, head_size), q_weight, eps).view(query.shape)
    key = rms_norm(key.reshape(-1, head_size), k_weight, eps).view(key.shape)
    return dispatch("rotary_and_cache", query)(positions, query, key, value, k_cache, v_cache, slot_mapping,
                                               head_size, cos_sin_cache, is_neox)
