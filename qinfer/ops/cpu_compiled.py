"""CPU kernels of csrc/cpu/, compiled on first use with the machine's C++ compiler, as torch.ops.qinfer_cpu.

    paged_decode_attention(out, query [R, Hq, D], k_cache, v_cache, block_tables [R, B] int32,
                           seq_lens [R] int32, scale, sliding_window (0: none)) -> None
        one query token per request over its paged context, read in place (float32, bfloat16)
    rms_norm, fused_add_rms_norm, rotary_and_cache (elementwise.cpp): the ops of qinfer.ops with
        those names, one pass over the rows each; registered as their "cpu" implementation once the
        library loads, for float32 / bfloat16 rows the kernels take (the torch reference otherwise)
    linear_tiled(x [M, K] float32, packed [ceil(N / 16), K, 16], bias [N] | None, N) -> [M, N]
        (linear.cpp): x W^T (+ bias) over a weight packed by qinfer.ops.cpu_linear
    argmax_rows (argmax.cpp): the "cpu" implementation of ops.argmax (float32 rows)

The library is built once per machine (g++ -O3 -march=native, ~20 s) into the cache folder
QINFER_CPU_OPS_DIR (default ~/.cache/qinfer/cpu_ops), named by a hash of the sources, the torch
version, the flags and the CPU's features, so a changed source, torch or CPU builds anew;
processes that start together wait for one build (a file lock). Without a compiler, or when the
build fails (one warning says why), or when the torch reference is forced (QINFER_OPS_IMPL=torch),
`available()` is False and callers keep their torch path, which is also these kernels' oracle.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

from qinfer.ops.registry import forced_implementation

log = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parents[2] / "csrc" / "cpu"
SOURCES = (_CSRC / "paged_attention.cpp", _CSRC / "elementwise.cpp", _CSRC / "linear.cpp",
           _CSRC / "argmax.cpp")
HEADERS = (_CSRC / "vectors.h",)
# -fopenmp: at::parallel_for is inline and runs on one thread without it; -fno-math-errno: the
# softmax's exp calls need not set errno (the loops around them schedule freely).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-std=c++20", "-shared", "-fPIC", "-w")

_loaded: Optional[bool] = None


def available() -> bool:
    """True once torch.ops.qinfer_cpu is loaded (building it first if needed)."""
    global _loaded
    if forced_implementation("paged_decode_attention") == "torch":
        return False
    if _loaded is None:
        _loaded = _load()
        if _loaded:
            _register_ops()
    return _loaded


_DTYPES = (torch.float32, torch.bfloat16)


def _rows(x: torch.Tensor) -> bool:
    """Whether x is [T, W] with contiguous rows, in a dtype the kernels take."""
    return x.dim() == 2 and x.stride(1) == 1 and x.dtype in _DTYPES


def _register_ops() -> None:
    """The elementwise kernels as the "cpu" implementation of their qinfer.ops ops (above the
    torch reference for CPU tensors), each falling back to the reference where it does not apply."""
    from qinfer.ops import reference
    from qinfer.ops.registry import register

    kernels = torch.ops.qinfer_cpu

    @register("rms_norm", "cpu", ("cpu",))
    def rms_norm(x, weight, eps):
        if not (_rows(x) and weight.dtype == x.dtype):
            return reference.rms_norm(x, weight, eps)
        return kernels.rms_norm(x, weight.contiguous(), eps)

    @register("fused_add_rms_norm", "cpu", ("cpu",))
    def fused_add_rms_norm(x, residual, weight, eps):
        if not (_rows(x) and _rows(residual) and residual.dtype == x.dtype == weight.dtype):
            return reference.fused_add_rms_norm(x, residual, weight, eps)
        kernels.fused_add_rms_norm(x, residual, weight.contiguous(), eps)   # in place, as on the GPU
        return x, residual

    @register("argmax", "cpu", ("cpu",))
    def argmax(x):
        if not (x.dim() == 2 and x.dtype == torch.float32 and x.stride(1) == 1 and x.shape[1] > 0):
            return reference.argmax(x)
        return kernels.argmax_rows(x)

    @register("rotary_and_cache", "cpu", ("cpu",))
    def rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                         cos_sin_cache, is_neox=True):
        if not (_rows(query) and _rows(key) and _rows(value) and cos_sin_cache.shape[1] == head_size
                and cos_sin_cache.dtype in _DTYPES and cos_sin_cache.stride(1) == 1
                and query.dtype == key.dtype == value.dtype == k_cache.dtype == v_cache.dtype
                and k_cache.stride(3) == 1 and k_cache.stride(2) == head_size and v_cache.stride(3) == 1
                and v_cache.stride(2) == head_size):
            return reference.rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping,
                                              head_size, cos_sin_cache, is_neox)
        kernels.rotary_and_cache(positions.long().contiguous(), query, key, value, k_cache, v_cache,
                                 slot_mapping.long().contiguous(), head_size, cos_sin_cache, is_neox)
        return query, key


def _load() -> bool:
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None or not all(s.is_file() for s in SOURCES):
        log.info("CPU kernels not built (%s): the torch path serves",
                 "no C++ compiler" if compiler is None else "csrc/cpu is not in this install")
        return False
    path = _library_path(compiler)
    try:
        if not path.exists():
            _build(compiler, path)
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        detail = (getattr(e, "stderr", None) or str(e)).strip().splitlines() or [type(e).__name__]
        log.warning("CPU kernels unavailable, the torch path serves: %s", detail[-1][:300])
        return False
    return True


def _cache_dir() -> Path:
    configured = os.environ.get("QINFER_CPU_OPS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "qinfer" / "cpu_ops"


def _cpu_features() -> str:
    """The CPU's feature flags (-march=native builds for them): a library never runs on another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _library_path(compiler: str) -> Path:
    digest = hashlib.sha256()
    for part in (*(s.read_bytes() for s in (*SOURCES, *HEADERS)), torch.__version__.encode(),
                 " ".join(FLAGS).encode(), compiler.encode(), _cpu_features().encode()):
        digest.update(part)
    return _cache_dir() / f"qinfer_cpu-{digest.hexdigest()[:16]}.so"


def _build(compiler: str, path: Path) -> None:
    from torch.utils.cpp_extension import include_paths, library_paths

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)         # another process may be building it right now
        if path.exists():
            return
        log.info("building the CPU kernels of csrc/cpu into %s (once per machine)", path)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            built = Path(tmp) / path.name
            subprocess.run([compiler, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                            *(f"-I{p}" for p in include_paths()), *map(str, SOURCES), "-o", str(built),
                            *(f"-L{p}" for p in library_paths()), "-lc10", "-ltorch_cpu", "-ltorch",
                            *(f"-Wl,-rpath,{p}" for p in library_paths())],
                           check=True, capture_output=True, text=True)
            os.replace(built, path)              # whole or not at all, for the processes that wait
