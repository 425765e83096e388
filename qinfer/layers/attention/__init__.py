"""Attention backends by name: "reference" (torch, per request: the oracle), "sdpa" (torch,
batched: the CPU default) and "triton" (GPU, qinfer.kernels).

Backends are imported lazily so importing this package pulls in neither triton nor kernels.
"""
from __future__ import annotations

import importlib

from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata  # noqa: F401

# name -> "module:Class"
_BACKENDS = {
    "reference": "qinfer.layers.attention.reference:ReferenceAttentionBackend",
    "sdpa": "qinfer.layers.attention.sdpa_backend:SdpaAttentionBackend",
    "triton": "qinfer.layers.attention.triton_backend:TritonAttentionBackend",
}


def available_attention_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_attention_backend(name: str) -> AttentionBackend:
    """A new instance of backend `name`; ValueError naming the known ones otherwise."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {available_attention_backends()}")
    module, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def is_attention_backend_importable(name: str) -> bool:
    """True when backend `name` is registered and its module imports (e.g. triton installed)."""
    try:
        get_attention_backend(name)
    except (ImportError, ValueError):
        return False
    return True
