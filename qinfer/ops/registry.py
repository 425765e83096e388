"""Registry of op implementations, chosen per device type by priority."""
from __future__ import annotations

import os
from typing import Callable

# op name -> list of (priority, impl name, device types, fn); higher priority wins.
_IMPLS: dict[str, list[tuple[int, str, tuple[str, ...], Callable]]] = {}
# "cpu": the compiled CPU kernels of csrc/cpu (ops/cpu_compiled.py), registered for CPU tensors only.
# "composite": a fused op run as the ops it fuses, each dispatched (ops/composite.py), where no
# kernel of its own serves the device; above the torch reference, which stays pure torch (the oracle).
_PRIORITY = {"cuda": 30, "cpu": 25, "triton": 20, "composite": 15, "torch": 10}
# (op, device type) -> the chosen (impl name, fn); cleared whenever an implementation registers.
_CACHE: dict[tuple[str, str], tuple[str, Callable]] = {}
# op -> impl name that use_implementation() forces (A/B timing of one op in a running engine).
_OVERRIDES: dict[str, str] = {}


def register(op: str, impl: str, device_types: tuple[str, ...] = ("cpu", "cuda")):
    """Decorator: register fn as implementation `impl` ("cuda" | "cpu" | "triton" | "composite" | "torch") of `op`."""
    def wrap(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, []).append((_PRIORITY[impl], impl, device_types, fn))
        _IMPLS[op].sort(key=lambda entry: -entry[0])
        _CACHE.clear()
        return fn
    return wrap


def _choice(op: str, device_type: str) -> tuple[str, Callable]:
    key = (op, device_type)
    if key not in _CACHE:
        # QINFER_OPS_IMPL=torch forces the reference everywhere (debugging, A/B timing).
        forced = forced_implementation(op)
        candidates = [e for e in _IMPLS.get(op, []) if device_type in e[2]]
        if forced:
            candidates = [e for e in candidates if e[1] == forced] or candidates
        if not candidates:
            raise RuntimeError(f"no implementation of op {op!r} for device {device_type!r}")
        _CACHE[key] = (candidates[0][1], candidates[0][3])
    return _CACHE[key]


def forced_implementation(op: str) -> str | None:
    """The implementation use_implementation() or QINFER_OPS_IMPL forces for `op`, if any."""
    return _OVERRIDES.get(op) or os.environ.get("QINFER_OPS_IMPL") or None


def use_implementation(op: str, impl: str | None) -> None:
    """Force `op` to implementation `impl` ("torch", "triton", "cuda", "cpu") where it exists, or
    back to the best one (None): benchmarks compare two implementations in one engine."""
    if impl is None:
        _OVERRIDES.pop(op, None)
    else:
        _OVERRIDES[op] = impl
    _CACHE.clear()


def dispatch(op: str, tensor) -> Callable:
    return _choice(op, tensor.device.type)[1]


def implementations(device_type: str = "cuda") -> dict[str, str]:
    """Which implementation each op uses on `device_type`, e.g. {'rms_norm': 'cuda', ...}."""
    return {op: _choice(op, device_type)[0] for op in sorted(_IMPLS)
            if any(device_type in e[2] for e in _IMPLS[op])}
