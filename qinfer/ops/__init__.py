"""Hot ops, dispatched to the fastest implementation that is available.

Order: compiled qinfer._C (CUDA, from csrc/) if built and the tensor is on a
GPU, else Triton on a GPU, else the torch reference in reference.py, which is
also the test oracle for the others. `implementations()` reports which one
each op uses on a given device.

Op signatures (every implementation keeps them):
  linear(x [T, K], weight [N, K], bias [N] | None) -> [T, N]   (F.linear; compiled: a GEMV for
      one row, where it beats cuBLAS (compiled.gemv_applies), cuBLAS otherwise)
  rms_norm(x [T, H], weight [H], eps) -> [T, H]
  fused_add_rms_norm(x [T, H], residual [T, H], weight, eps) -> (normed, x + residual)
      may overwrite x and residual in place; callers use only the returned tensors
  rotary_embedding(positions [T] int64, query [T, Hq*D], key [T, Hk*D], head_size,
                   cos_sin_cache [max_pos, D] (cos | sin halves), is_neox) -> (query, key), in place
  silu_and_mul(x [T, 2I]) -> [T, I]
  reshape_and_cache(key [T, Hk, D], value [T, Hk, D], k_cache, v_cache, slot_mapping [T]) -> None
      (caches [num_blocks, block_size, Hk, D]; a negative slot means "do not write")
  rotary_and_cache(positions, query [T, Hq*D], key [T, Hk*D], value [T, Hk*D], k_cache, v_cache,
                   slot_mapping [T], head_size, cos_sin_cache, is_neox) -> (query, key)
      rotary_embedding then reshape_and_cache of the rotated key and the value, in one pass
      (one launch instead of two; the attention layer runs it, the backend then skips its write)
  top_k_top_p_min_p(logits [S, V] float32, top_k [S] long | None, top_p [S] | None, min_p [S] | None)
      -> logits with the tokens each row drops at -inf (semantics: reference.top_k_top_p_min_p);
      may overwrite logits in place. Triton: a threshold search per row, no sort of the vocabulary
"""
from __future__ import annotations

from qinfer.ops.registry import dispatch, implementations, register, use_implementation  # noqa: F401
from qinfer.ops import reference as _reference  # noqa: F401  (registers the torch twins)


def _load_gpu_implementations() -> None:
    """On a CUDA machine: qinfer._C's ops if built (compiled.py), and the Triton twins."""
    import torch

    if not torch.cuda.is_available():
        return
    from qinfer.ops import compiled

    compiled.load()
    try:
        from qinfer.kernels import ops_triton, sampling  # noqa: F401  (register on import)
    except ImportError:  # no triton: the torch reference serves
        pass


_load_gpu_implementations()


def linear(x, weight, bias=None):
    return dispatch("linear", x)(x, weight, bias)


def rms_norm(x, weight, eps):
    return dispatch("rms_norm", x)(x, weight, eps)


def fused_add_rms_norm(x, residual, weight, eps):
    return dispatch("fused_add_rms_norm", x)(x, residual, weight, eps)


def rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    return dispatch("rotary_embedding", query)(positions, query, key, head_size, cos_sin_cache, is_neox)


def silu_and_mul(x):
    return dispatch("silu_and_mul", x)(x)


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
    return dispatch("reshape_and_cache", key)(key, value, k_cache, v_cache, slot_mapping)


def rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                     cos_sin_cache, is_neox=True):
    return dispatch("rotary_and_cache", query)(positions, query, key, value, k_cache, v_cache,
                                               slot_mapping, head_size, cos_sin_cache, is_neox)


def top_k_top_p_min_p(logits, top_k, top_p, min_p):
    return dispatch("top_k_top_p_min_p", logits)(logits, top_k, top_p, min_p)
