// CPU twins of the per-layer elementwise ops of qinfer/ops/reference.py, registered as
// torch.ops.qinfer_cpu.* beside the decode attention of paged_attention.cpp (same library, built
// by qinfer/ops/cpu_compiled.py). The torch reference ran each as 5-12 small ATen calls per layer
// (rotary + cache write: 111 us at 64 tokens of SmolLM2-135M in float32, 129 us in bfloat16);
// here each is one pass over its rows. Float32 and bfloat16 tensors; arithmetic in float32 with
// one rounding where the reference rounds.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "vectors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

// Every product rounded on its own, as torch's elementwise ops round them: no fused multiply-add but
// the one the reference's addcmul makes (rotate_heads). The rotary result then equals the torch
// reference bit for bit (the fused layer's cache equals the unfused path's, test_attention_layer).
#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF

namespace {

// Rows per parallel task: about 32k elements, so a small batch is not split into tasks shorter
// than the cost of waking a thread.
int64_t grain(int64_t width) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(width, 1)); }

// One row: sum of squares in float32, then (x / rms) rounded to T, times the weight in T, as
// reference.rms_norm (Hugging Face's Llama). With residual: residual <- round_T(x + residual) first,
// and the norm is of that sum.
template <typename T>
void norm_row(T* out, const T* x, T* residual, const T* w, int64_t hidden, float eps) {
  if (residual != nullptr)
    for (int64_t i = 0; i < hidden; ++i)
      residual[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(residual[i]));
  const T* src = residual != nullptr ? residual : x;
  const float inv = 1.f / std::sqrt(sum_of_squares(src, hidden) / static_cast<float>(hidden) + eps);
  for (int64_t i = 0; i < hidden; ++i) {
    const T normed = static_cast<T>(static_cast<float>(src[i]) * inv);
    out[i] = static_cast<T>(static_cast<float>(normed) * static_cast<float>(w[i]));
  }
}

template <typename T>
void norm_rows(at::Tensor& out, const at::Tensor& x, at::Tensor* residual, const at::Tensor& w, double eps) {
  const int64_t rows = x.size(0), hidden = x.size(1);
  T* o = out.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* rp = residual != nullptr ? residual->data_ptr<T>() : nullptr;
  const T* wp = w.data_ptr<T>();
  const int64_t so = out.stride(0), sx = x.stride(0), sr = residual != nullptr ? residual->stride(0) : 0;
  at::parallel_for(0, rows, grain(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      norm_row(o + r * so, xp + r * sx, rp != nullptr ? rp + r * sr : nullptr, wp, hidden, static_cast<float>(eps));
  });
}

void check_norm(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && w.dim() == 1 && w.is_contiguous() && w.size(0) == x.size(1),
              "rms_norm: x [T, H] with contiguous rows, weight [H]");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "rms_norm: x and weight of one dtype");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kFloat) norm_rows<float>(out, x, nullptr, weight, eps);
  else if (x.scalar_type() == at::kBFloat16) norm_rows<c10::BFloat16>(out, x, nullptr, weight, eps);
  else TORCH_CHECK(false, "rms_norm: float32 or bfloat16, not ", x.scalar_type());
  return out;
}

// In place: residual <- x + residual, x <- rms_norm(residual) * weight.
void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.stride(1) == 1 && residual.scalar_type() == x.scalar_type(),
              "fused_add_rms_norm: residual like x");
  if (x.scalar_type() == at::kFloat) norm_rows<float>(x, x, &residual, weight, eps);
  else if (x.scalar_type() == at::kBFloat16) norm_rows<c10::BFloat16>(x, x, &residual, weight, eps);
  else TORCH_CHECK(false, "fused_add_rms_norm: float32 or bfloat16, not ", x.scalar_type());
}

// Rotate `heads` heads of one token in place; cos / sin: the position's D/2 values each. Neox
// pairs (i, i + D/2), GPT-J pairs (2i, 2i + 1); float32 arithmetic as reference._rotate_.
template <typename T, typename C>
void rotate_heads(T* x, int64_t heads, int64_t d, const C* cos, const C* sin, bool is_neox) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h, x += d) {
    for (int64_t i = 0; i < half; ++i) {
      T* a = is_neox ? x + i : x + 2 * i;
      T* b = is_neox ? x + i + half : x + 2 * i + 1;
      const float x1 = static_cast<float>(*a), x2 = static_cast<float>(*b);
      const float c = static_cast<float>(cos[i]), s = static_cast<float>(sin[i]);
      const float rotated1 = x1 * c - x2 * s;              // reference: two products, one difference
      const float rotated2 = std::fma(x1, s, x2 * c);     // reference: x2 * cos, then addcmul's fma
      *a = static_cast<T>(rotated1);
      *b = static_cast<T>(rotated2);
    }
  }
}

template <typename T, typename C>
void rotary_and_cache_rows(const at::Tensor& positions, at::Tensor& query, at::Tensor& key, const at::Tensor& value,
                           at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots, int64_t d,
                           const at::Tensor& cos_sin, bool is_neox) {
  const int64_t tokens = query.size(0), q_heads = query.size(1) / d, kv_width = key.size(1);
  const int64_t block_size = k_cache.size(1);
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const C* table = cos_sin.data_ptr<C>();
  T* q = query.data_ptr<T>();
  T* k = key.data_ptr<T>();
  const T* v = value.data_ptr<T>();
  T* kc = k_cache.data_ptr<T>();
  T* vc = v_cache.data_ptr<T>();
  const int64_t sq = query.stride(0), sk = key.stride(0), sv = value.stride(0), st = cos_sin.stride(0);
  const int64_t skb = k_cache.stride(0), skt = k_cache.stride(1), svb = v_cache.stride(0), svt = v_cache.stride(1);
  at::parallel_for(0, tokens, grain(query.size(1) + 2 * kv_width), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const C* cos = table + pos[t] * st;
      rotate_heads(q + t * sq, q_heads, d, cos, cos + d / 2, is_neox);
      rotate_heads(k + t * sk, kv_width / d, d, cos, cos + d / 2, is_neox);
      if (slot[t] < 0) continue;     // a negative slot: not written (padding)
      const int64_t b = slot[t] / block_size, row = slot[t] % block_size;
      std::copy_n(k + t * sk, kv_width, kc + b * skb + row * skt);
      std::copy_n(v + t * sv, kv_width, vc + b * svb + row * svt);
    }
  });
}

// reference.rotary_and_cache: rotary_embedding of query [T, Hq*D] and key [T, Hk*D] in place, then
// the rotated key and the value into the caches [blocks, block_size, Hk, D] at slot_mapping.
void rotary_and_cache(const at::Tensor& positions, at::Tensor query, at::Tensor key, const at::Tensor& value,
                      at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& slot_mapping, int64_t head_size,
                      const at::Tensor& cos_sin_cache, bool is_neox) {
  TORCH_CHECK(query.dim() == 2 && key.dim() == 2 && value.sizes() == key.sizes() && query.stride(1) == 1 &&
                  key.stride(1) == 1 && value.stride(1) == 1 && query.size(1) % head_size == 0 &&
                  key.size(1) % head_size == 0 && head_size % 2 == 0,
              "rotary_and_cache: query [T, Hq*D], key and value [T, Hk*D], rows contiguous");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() &&
                  k_cache.size(2) * k_cache.size(3) == key.size(1) && k_cache.stride(2) == k_cache.size(3) &&
                  k_cache.stride(3) == 1 && v_cache.stride(2) == v_cache.size(3) && v_cache.stride(3) == 1,
              "rotary_and_cache: caches [blocks, block_size, Hk, D], each token's row contiguous");
  TORCH_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.size(1) == head_size && cos_sin_cache.stride(1) == 1,
              "rotary_and_cache: cos_sin_cache [max_pos, D] (the whole head rotated)");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() &&
                  slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() &&
                  positions.size(0) == query.size(0) && slot_mapping.size(0) == query.size(0),
              "rotary_and_cache: positions and slot_mapping [T] int64");
  const auto dtype = query.scalar_type();
  TORCH_CHECK(key.scalar_type() == dtype && value.scalar_type() == dtype && k_cache.scalar_type() == dtype &&
                  v_cache.scalar_type() == dtype,
              "rotary_and_cache: query, key, value and caches of one dtype");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "rotary_and_cache: float32 or bfloat16, not ", dtype);
  const auto table_dtype = cos_sin_cache.scalar_type();
  TORCH_CHECK(table_dtype == at::kFloat || table_dtype == at::kBFloat16,
              "rotary_and_cache: a float32 or bfloat16 cos_sin_cache, not ", table_dtype);
  auto run = [&](auto* data, auto* table) {
    using T = std::remove_pointer_t<decltype(data)>;
    using C = std::remove_pointer_t<decltype(table)>;
    rotary_and_cache_rows<T, C>(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                                cos_sin_cache, is_neox);
  };
  auto with_table = [&](auto* data) {
    if (table_dtype == at::kFloat) run(data, static_cast<float*>(nullptr));
    else run(data, static_cast<c10::BFloat16*>(nullptr));
  };
  if (dtype == at::kFloat) with_table(static_cast<float*>(nullptr));
  else with_table(static_cast<c10::BFloat16*>(nullptr));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qinfer_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("rotary_and_cache(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor value, Tensor(c!) k_cache, "
        "Tensor(d!) v_cache, Tensor slot_mapping, int head_size, Tensor cos_sin_cache, bool is_neox) -> ()");
}

TORCH_LIBRARY_IMPL(qinfer_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("rotary_and_cache", &rotary_and_cache);
}
