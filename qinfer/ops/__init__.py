"""Hot ops, dispatched to the fastest implementation that is available.

Order: compiled qinfer._C (CUDA, from csrc/) if built and the tensor is on a
GPU, else Triton on a GPU; on the CPU the kernels of csrc/cpu once they load
(ops/cpu_compiled.py: norms, rotary + cache write); else the torch reference in
reference.py, which is also the test oracle for the others. `implementations()`
reports which one each op uses on a given device.

Op signatures (every implementation keeps them):
  linear(x [T, K], weight [N, K], bias [N] | None) -> [T, N]   (F.linear; compiled: a GEMV for
      one row, where it beats cuBLAS (compiled.gemv_applies), cuBLAS otherwise). On the CPU the
      linear layers bypass it: they hold packed weights (cpu_linear.py: float32 tiles of
      csrc/cpu/linear.cpp, oneDNN for bfloat16)
  rms_norm(x [T, H], weight [H], eps) -> [T, H]
  fused_add_rms_norm(x [T, H], residual [T, H], weight, eps) -> (normed, x + residual)
      may overwrite x and residual in place; callers use only the returned tensors
  rotary_embedding(positions [T] int64, query [T, Hq*D], key [T, Hk*D], head_size,
                   cos_sin_cache [max_pos, D] (cos | sin halves), is_neox) -> (query, key), in place
  silu_and_mul(x [T, 2I]) -> [T, I]
  linear_silu_and_mul(x [T, K], weight [2I, K] (gate | up), bias [2I] | None) -> [T, I]
      silu_and_mul(linear(x, weight, bias)); compiled: one GEMV launch at one row, same bits
  reshape_and_cache(key [T, Hk, D], value [T, Hk, D], k_cache, v_cache, slot_mapping [T]) -> None
      (caches [num_blocks, block_size, Hk, D]; a negative slot means "do not write")
  rotary_and_cache(positions, query [T, Hq*D], key [T, Hk*D], value [T, Hk*D], k_cache, v_cache,
                   slot_mapping [T], head_size, cos_sin_cache, is_neox) -> (query, key)
      rotary_embedding then reshape_and_cache of the rotated key and the value, in one pass
      (one launch instead of two; the attention layer runs it, the backend then skips its write)
  qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                           cos_sin_cache, is_neox, q_weight [D], k_weight [D], eps) -> (query, key)
      rms_norm of every query and key head, then rotary_and_cache (Qwen3); callers use the returned
      tensors. Compiled: one launch, in place on the strided views; elsewhere "composite"
      (composite.py): the norms and rotary_and_cache, each dispatched

Sampling:
  argmax(x [S, V]) -> [S] int64: x.argmax(dim=-1) (first index of the maximum, a NaN counting as the
      largest); on the CPU a compiled pass over float32 rows (ops/cpu_compiled.py)
  top_k_top_p_min_p(logits [S, V] float32, top_k [S] long | None, top_p [S] | None, min_p [S] | None)
      -> logits with the tokens each row drops at -inf (semantics: reference.top_k_top_p_min_p);
      may overwrite logits in place. Triton: a threshold search per row, no sort of the vocabulary

Mixture of experts (torch twins in moe_reference.py; the Triton kernel in fused_moe_triton.py):
  topk_softmax(gating [T, E], top_k, renormalize) -> (topk_weights [T, k] float32, topk_ids [T, k] int32)
      softmax over the experts in float32, the k largest (ties: lower id), renormalised to sum 1
  moe_align_block_size(topk_ids [T, k], num_experts, block_size)
      -> (sorted_token_ids [P] int32, expert_ids [P / block_size] int32, num_tokens_post_padded [1] int32)
      slots t * k + j grouped by expert, each group padded to whole blocks with the sentinel T * k;
      expert_ids[b] is block b's expert (-1 past the used blocks); P = max_padded_slots(T * k, E,
      block_size) depends on the sizes only, so the op is CUDA-graph safe. The order of slots inside
      a group is unspecified (the reference keeps token order).
  fused_experts(hidden [T, H], w13 [E, 2I, H] (gate | up), w2 [E, H, I], topk_weights, topk_ids) -> [T, H]
      sum_k topk_weights[t, k] * w2_e(silu(gate_e x_t) * up_e x_t), e = topk_ids[t, k]
"""
from __future__ import annotations

from qinfer.ops.registry import dispatch, implementations, register, use_implementation  # noqa: F401
from qinfer.ops import composite as _composite  # noqa: F401  (fused ops as their parts)
from qinfer.ops import moe_reference as _moe_reference  # noqa: F401  (registers the torch twins)
from qinfer.ops import reference as _reference  # noqa: F401


def _load_gpu_implementations() -> None:
    """On a CUDA machine: qinfer._C's ops if built (compiled.py), and the Triton twins."""
    import torch

    if not torch.cuda.is_available():
        return
    from qinfer.ops import compiled

    compiled.load()
    try:
        from qinfer.ops import fused_moe_triton, sampling_triton, triton_ops  # noqa: F401  (register on import)
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


def linear_silu_and_mul(x, weight, bias=None):
    return dispatch("linear_silu_and_mul", x)(x, weight, bias)


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
    return dispatch("reshape_and_cache", key)(key, value, k_cache, v_cache, slot_mapping)


def rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                     cos_sin_cache, is_neox=True):
    return dispatch("rotary_and_cache", query)(positions, query, key, value, k_cache, v_cache,
                                               slot_mapping, head_size, cos_sin_cache, is_neox)


def qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                             cos_sin_cache, is_neox, q_weight, k_weight, eps):
    return dispatch("qk_norm_rotary_and_cache", query)(positions, query, key, value, k_cache, v_cache, slot_mapping,
                                                       head_size, cos_sin_cache, is_neox, q_weight, k_weight, eps)


def topk_softmax(gating, top_k, renormalize):
    return dispatch("topk_softmax", gating)(gating, top_k, renormalize)


def moe_align_block_size(topk_ids, num_experts, block_size):
    return dispatch("moe_align_block_size", topk_ids)(topk_ids, num_experts, block_size)


def fused_experts(hidden, w13, w2, topk_weights, topk_ids):
    return dispatch("fused_experts", hidden)(hidden, w13, w2, topk_weights, topk_ids)


def argmax(x):
    return dispatch("argmax", x)(x)


def top_k_top_p_min_p(logits, top_k, top_p, min_p):
    return dispatch("top_k_top_p_min_p", logits)(logits, top_k, top_p, min_p)
