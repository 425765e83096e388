"""The step's attention metadata, handed to every Attention layer without threading it
through model forward signatures (like vLLM's set_forward_context)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata


@dataclass
class ForwardContext:
    attn_metadata: AttentionMetadata
    attn_backend: AttentionBackend


_CONTEXT: Optional[ForwardContext] = None


@contextmanager
def set_forward_context(attn_metadata: AttentionMetadata, attn_backend: AttentionBackend) -> Iterator[None]:
    global _CONTEXT
    previous, _CONTEXT = _CONTEXT, ForwardContext(attn_metadata, attn_backend)
    try:
        yield
    finally:
        _CONTEXT = previous


def get_forward_context() -> ForwardContext:
    if _CONTEXT is None:
        raise RuntimeError("attention called outside set_forward_context(...)")
    return _CONTEXT
