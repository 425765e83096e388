"""qinfer: an asynchronous LLM inference fleet.

The light import: `import qinfer` pulls in neither torch, triton nor
transformers. `LLM` and the engine load them when first touched.
Every exception a user catches is importable from here.
"""
from __future__ import annotations

from pydantic import ValidationError

from qinfer.errors import (EngineConfigError, IdempotencyConflictError, InvalidRequestError, JobNotFoundError,
                           JobTimeoutError, MissingExtraError, NoRedisError, QinferError, QueueFullError,
                           needs_extra)
from qinfer.sampling_params import SamplingParams

__version__ = "0.1.0"

_LAZY = {
    "LLM": ("qinfer.llm", "LLM"),
    "LLMEngine": ("qinfer.engine.llm_engine", "LLMEngine"),
    "Client": ("qinfer.client", "Client"),
    "AsyncClient": ("qinfer.client", "AsyncClient"),
    "Logprob": ("qinfer.engine.outputs", "Logprob"),
    "CallbackURLRefused": ("qinfer.ssrf", "CallbackURLRefused"),
    "WebhookVerificationError": ("qinfer.signing", "WebhookVerificationError"),
}

__all__ = ["SamplingParams", "QinferError", "InvalidRequestError", "EngineConfigError", "JobNotFoundError",
           "JobTimeoutError", "QueueFullError", "IdempotencyConflictError", "NoRedisError",
           "MissingExtraError", "ValidationError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        with needs_extra(f"qinfer.{name}"):          # qinfer.LLM on the light install
            return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'qinfer' has no attribute {name!r}")

