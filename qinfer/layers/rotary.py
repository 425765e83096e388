"""Rotary position embedding: a cos|sin cache indexed by position, applied through qinfer.ops.

Rope settings come from the HF config: `rope_parameters` (transformers >= 5) or
the older `rope_scaling` + `rope_theta`. Supported rope types: default, llama3,
longrope (Phi-3; transformers renames Phi-3's older "su" and "yarn" to it).
Partial rotary (partial_rotary_factor < 1) is not supported.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from qinfer import ops


def rope_parameters(hf_config) -> dict:
    """The config's rope settings as one dict with at least rope_type and rope_theta."""
    params = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    params.setdefault("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0))
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    if params["rope_type"] == "longrope":   # Phi-3 keeps the original length next to the rope settings
        params.setdefault("original_max_position_embeddings", hf_config.original_max_position_embeddings)
    return params


def default_inv_freq(head_size: int, theta: float) -> torch.Tensor:
    """[D/2] float32 angular frequencies theta^(-2i/D)."""
    return 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)


def llama3_inv_freq(inv_freq: torch.Tensor, params: dict, max_position: int) -> tuple[torch.Tensor, float]:
    """Llama 3.1 scaling: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled), 1.0


def longrope_inv_freq(inv_freq: torch.Tensor, params: dict, max_position: int) -> tuple[torch.Tensor, float]:
    """Phi-3 LongRoPE: frequency i divided by long_factor[i] when the model runs past its original
    length (max_position > original_max_position_embeddings), else by short_factor[i]; cos and
    sin scaled by the attention factor (sqrt(1 + ln(factor) / ln(original)) unless given).

    One choice for every position, like vLLM: Hugging Face picks per forward call from the
    sequence's length, which would leave a cache of keys rotated by the other factors once a
    sequence crosses the original length.
    """
    original = params["original_max_position_embeddings"]
    use_long = max_position > original
    factors = torch.tensor(params["long_factor" if use_long else "short_factor"], dtype=torch.float32)
    factor = params.get("factor") or max_position / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return inv_freq / factors, attention_factor


_INV_FREQ_SCALINGS = {"default": lambda inv_freq, params, max_position: (inv_freq, 1.0),
                      "llama3": llama3_inv_freq, "longrope": longrope_inv_freq}


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, max_position: int, params: dict, is_neox: bool = True):
        super().__init__()
        rope_type = params["rope_type"]
        if rope_type not in _INV_FREQ_SCALINGS:
            raise ValueError(f"rope_type {rope_type!r}; supported: {sorted(_INV_FREQ_SCALINGS)}")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"partial_rotary_factor={params['partial_rotary_factor']} (rotary over part "
                             "of each head) is not supported; only 1.0")
        inv_freq, attention_factor = _INV_FREQ_SCALINGS[rope_type](
            default_inv_freq(head_size, params["rope_theta"]), params, max_position)
        angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)  # [P, D/2]
        self.head_size, self.is_neox = head_size, is_neox
        # [max_position, D]: cos | sin halves, the layout qinfer.ops.rotary_embedding reads.
        cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1) * attention_factor
        cos_sin = cos_sin.to(torch.get_default_dtype())
        self.register_buffer("cos_sin_cache", cos_sin, persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
        """positions [T]; query [T, Hq*D], key [T, Hk*D] rotated in place and returned."""
        return ops.rotary_embedding(positions, query, key, self.head_size, self.cos_sin_cache, self.is_neox)

    def forward_and_cache(self, positions, query, key, value, k_cache, v_cache, slot_mapping, qk_norm=None):
        """forward, and the rotated key and value [T, Hk*D] written to the paged caches at
        slot_mapping [T] (negative: not written), in one op -> (query, key). qk_norm (q_weight [D],
        k_weight [D], eps): every head RMS-normed first, in the same op (Qwen3)."""
        if qk_norm is not None:
            return ops.qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping,
                                                self.head_size, self.cos_sin_cache, self.is_neox, *qk_norm)
        return ops.rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping,
                                    self.head_size, self.cos_sin_cache, self.is_neox)
