"""qinfer: an asynchronous LLM inference fleet.

The light import: `import qinfer` pulls in neither torch, triton nor
transformers. `LLM` and the engine load them when first touched.
"""
from __future__ import annotations

from qinfer.errors import InvalidRequestError, QinferError
from qinfer.sampling_params import SamplingParams

__version__ = "0.1.0"

_LAZY = {
    "LLM": ("qinfer.llm", "LLM"),
    "LLMEngine": ("qinfer.engine.llm_engine", "LLMEngine"),
    "Client": ("qinfer.client", "Client"),
    "AsyncClient": ("qinfer.client", "AsyncClient"),
    "Logprob": ("qinfer.engine.outputs", "Logprob"),
}

__all__ = ["SamplingParams", "InvalidRequestError", "QinferError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'qinfer' has no attribute {name!r}")
