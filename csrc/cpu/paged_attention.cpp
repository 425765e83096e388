// CPU paged attention for decode steps: one query token per request, reading the KV blocks in
// place (no gather into a padded context, no mask). Registered as torch.ops.qinfer_cpu.
// Built on first use by qinfer/ops/cpu_compiled.py (g++ -O3 -march=native); the torch path of
// qinfer/layers/attention/sdpa_backend.py (gather + SDPA) is its oracle and its fallback.
//
// Cache layout (qinfer/layers/attention/backend.py): k_cache, v_cache [num_blocks, block_size,
// num_kv_heads, head_size]; token t of request r sits in block block_tables[r, t / block_size].
// One task per request, one pass over its context with an online softmax (the running max and
// sum rescaled as tokens arrive, as flash attention does): each cache row is read once for all
// heads, its K and V together. At 64 requests of ~90 tokens this took the kernel from ~1,350 to
// ~750 us a layer on a 2-core Xeon (6 to 12 GB/s); the two-pass kernel it replaced (all scores, an exact softmax,
// then the V sum through memory) spent most of its time in the V pass's loads and stores and a
// libm exp per score (bench/NOTES.md).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "vectors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// dot(q, k) over n elements: vector FMAs and a reduction in registers (vectors.h). NV > 0: n is
// NV vectors exactly, unrolled.
template <int NV, typename T>
inline float dot(const float* q, const T* k, int64_t n) {
  FloatVec acc = {};
  if constexpr (NV > 0) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc += load_vec(q + v * kVecFloats) * load_vec(k + v * kVecFloats);
    return sum_lanes(acc);
  }
  int64_t d = 0;
  for (; d + kVecFloats <= n; d += kVecFloats) acc += load_vec(q + d) * load_vec(k + d);
  float sum = sum_lanes(acc);
  for (; d < n; ++d) sum += q[d] * static_cast<float>(k[d]);
  return sum;
}

// One query head's running softmax over its context so far: the max score m, the sum l of
// e^(score - m), and acc = sum of e^(score - m) * V (head floats).
struct Running {
  float m, l;
  float* acc;
};

// Folds up to kVecFloats consecutive tokens of one block into one query head's running softmax
// (the online softmax): their scores in one vector, one vector exp, the earlier sum rescaled
// once. The V rows go into acc held in registers when the head is NV whole vectors (NV > 0).
template <int NV, typename T>
inline void attend_tokens(const float* q, const T* k, int64_t k_stride, const T* v, int64_t v_stride, int count,
                          int64_t head, Running& run) {
  alignas(64) float s[kVecFloats];
  float chunk_max = -INFINITY;
  for (int t = 0; t < count; ++t) {
    s[t] = dot<NV>(q, k + t * k_stride, head);
    chunk_max = std::max(chunk_max, s[t]);
  }
  const float m = std::max(run.m, chunk_max);
  const float rescale = std::exp(run.m - m);   // 0 at the first tokens (run.m -inf, acc and l 0)
  FloatVec p = exp_vec(load_vec(s) - m);
  for (int t = count; t < kVecFloats; ++t) p[t] = 0.f;
  run.m = m;
  run.l = run.l * rescale + sum_lanes(p);
  __builtin_memcpy(s, &p, sizeof s);
  if constexpr (NV > 0) {
    FloatVec a[NV];
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i) a[i] = load_vec(run.acc + i * kVecFloats) * rescale;
    for (int t = 0; t < count; ++t)
#pragma GCC unroll 8
      for (int i = 0; i < NV; ++i) a[i] += s[t] * load_vec(v + t * v_stride + i * kVecFloats);
    __builtin_memcpy(run.acc, a, sizeof a);
  } else {
    for (int64_t d = 0; d < head; ++d) run.acc[d] *= rescale;
    for (int t = 0; t < count; ++t)
      for (int64_t d = 0; d < head; ++d) run.acc[d] += s[t] * static_cast<float>(v[t * v_stride + d]);
  }
}

// Prefetches a block's first `rows` K and V rows (row_bytes each, at token strides sk and sv).
template <typename T>
inline void prefetch_block(const T* k, int64_t sk, const T* v, int64_t sv, int64_t rows, int64_t row_bytes) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t b = 0; b < row_bytes; b += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(k + i * sk) + b);
      __builtin_prefetch(reinterpret_cast<const char*>(v + i * sv) + b);
    }
}

// One task per request, one pass over its context, a block at a time: each block's K and V rows
// are read together (the next block prefetched: a request's blocks lie apart in memory, and
// each layer's cache comes from DRAM), kVecFloats tokens at a time for every query head.
// NV: head_size / kVecFloats where the head is whole vectors, else 0 (the general loops).
template <typename T, int NV>
void decode(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
            const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, int64_t window) {
  const int64_t num_reqs = query.size(0), num_heads = query.size(1), head = query.size(2);
  const int64_t block_size = k_cache.size(1), num_kv_heads = k_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const T* q_base = query.data_ptr<T>();
  const T* k_base = k_cache.data_ptr<T>();
  const T* v_base = v_cache.data_ptr<T>();
  T* out_base = out.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int64_t sq0 = query.stride(0), sq1 = query.stride(1), so0 = out.stride(0), so1 = out.stride(1);
  const int64_t sk0 = k_cache.stride(0), sk1 = k_cache.stride(1), sk2 = k_cache.stride(2);
  const int64_t sv0 = v_cache.stride(0), sv1 = v_cache.stride(1), sv2 = v_cache.stride(2);
  const int64_t st0 = block_tables.stride(0);
  const int64_t row_bytes = num_kv_heads * head * static_cast<int64_t>(sizeof(T));
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, num_reqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(num_heads * head), acc(num_heads * head);
    std::vector<Running> runs(num_heads);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t len = lens[r];
      const int64_t lo = window > 0 ? std::max<int64_t>(len - window, 0) : 0;
      const int32_t* table = tables + r * st0;
      for (int64_t qh = 0; qh < num_heads; ++qh) {
        const T* q = q_base + r * sq0 + qh * sq1;
        for (int64_t d = 0; d < head; ++d) qf[qh * head + d] = static_cast<float>(q[d]) * fscale;
        runs[qh] = {-INFINITY, 0.f, &acc[qh * head]};
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t pos = lo; pos < len;) {
        const int64_t block = table[pos / block_size], first = pos % block_size;
        const int64_t rows = std::min(block_size - first, len - pos);
        const T* k = k_base + block * sk0 + first * sk1;
        const T* v = v_base + block * sv0 + first * sv1;
        if (pos == lo) prefetch_block(k, sk1, v, sv1, rows, row_bytes);
        if (pos + rows < len) {   // the next block, while this one is folded in
          const int64_t next = table[(pos + rows) / block_size];
          prefetch_block(k_base + next * sk0, sk1, v_base + next * sv0, sv1, std::min(block_size, len - pos - rows),
                         row_bytes);
        }
        for (int64_t t = 0; t < rows; t += kVecFloats) {
          const int count = static_cast<int>(std::min<int64_t>(kVecFloats, rows - t));
          for (int64_t kvh = 0, qh = 0; kvh < num_kv_heads; ++kvh)   // no division per head
            for (int64_t g = 0; g < group; ++g, ++qh)
              attend_tokens<NV>(&qf[qh * head], k + t * sk1 + kvh * sk2, sk1, v + t * sv1 + kvh * sv2, sv1, count,
                                head, runs[qh]);
        }
        pos += rows;
      }
      for (int64_t qh = 0; qh < num_heads; ++qh) {
        const float inv = runs[qh].l > 0.f ? 1.f / runs[qh].l : 0.f;   // an empty context gives zeros
        T* o = out_base + r * so0 + qh * so1;
        for (int64_t d = 0; d < head; ++d) o[d] = static_cast<T>(acc[qh * head + d] * inv);
      }
    }
  });
}

// decode<T, NV> for the head size: NV = head / kVecFloats (1-8 whole vectors), else 0.
template <typename T>
void decode_head_size(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, int64_t window) {
  const int64_t head = query.size(2);
  const int64_t nv = head % kVecFloats == 0 ? head / kVecFloats : 0;
  switch (nv) {
#define QINFER_DECODE_CASE(N) \
  case N: return decode<T, N>(out, query, k_cache, v_cache, block_tables, seq_lens, scale, window);
    QINFER_DECODE_CASE(1) QINFER_DECODE_CASE(2) QINFER_DECODE_CASE(3) QINFER_DECODE_CASE(4)
    QINFER_DECODE_CASE(5) QINFER_DECODE_CASE(6) QINFER_DECODE_CASE(7) QINFER_DECODE_CASE(8)
#undef QINFER_DECODE_CASE
    default: return decode<T, 0>(out, query, k_cache, v_cache, block_tables, seq_lens, scale, window);
  }
}

void paged_decode_attention(at::Tensor out, const at::Tensor& query, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                            double scale, int64_t sliding_window) {
  TORCH_CHECK(query.dim() == 3 && out.sizes() == query.sizes(), "query and out: [num_reqs, num_heads, head_size]");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "caches: [blocks, block_size, kv_heads, head]");
  TORCH_CHECK(query.size(2) == k_cache.size(3) && query.size(1) % k_cache.size(2) == 0, "head sizes / GQA group");
  TORCH_CHECK(query.stride(2) == 1 && out.stride(2) == 1 && k_cache.stride(3) == 1 && v_cache.stride(3) == 1,
              "the head dimension must be contiguous");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt &&
                  seq_lens.is_contiguous() && block_tables.stride(1) == 1 && seq_lens.size(0) == query.size(0) &&
                  block_tables.size(0) == query.size(0),
              "block_tables [num_reqs, max_blocks] and seq_lens [num_reqs]: int32");
  TORCH_CHECK(query.scalar_type() == k_cache.scalar_type() && out.scalar_type() == query.scalar_type(),
              "query, caches and out: one dtype");
  if (query.scalar_type() == at::kFloat) {
    decode_head_size<float>(out, query, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
  } else if (query.scalar_type() == at::kBFloat16) {
    decode_head_size<c10::BFloat16>(out, query, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
  } else {
    TORCH_CHECK(false, "paged_decode_attention: float32 or bfloat16, not ", query.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY(qinfer_cpu, m) {
  m.def("paged_decode_attention(Tensor(a!) out, Tensor query, Tensor k_cache, Tensor v_cache, "
        "Tensor block_tables, Tensor seq_lens, float scale, int sliding_window) -> ()");
}

TORCH_LIBRARY_IMPL(qinfer_cpu, CPU, m) { m.impl("paged_decode_attention", &paged_decode_attention); }
