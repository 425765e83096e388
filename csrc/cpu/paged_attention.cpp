// CPU paged attention for decode steps: one query token per request, reading the KV blocks in
// place (no gather into a padded context, no mask). Registered as torch.ops.qinfer_cpu.
// Built on first use by qinfer/ops/cpu_compiled.py (g++ -O3 -march=native); the torch path of
// qinfer/layers/attention/sdpa_backend.py (gather + SDPA) is its oracle and its fallback.
//
// Cache layout (qinfer/layers/attention/backend.py): k_cache, v_cache [num_blocks, block_size,
// num_kv_heads, head_size]; token t of request r sits in block block_tables[r, t / block_size].
// One task per request: scores of every query head over the whole context, an exact softmax,
// then the weighted V sum; each cache row is read once for all heads.
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

// Vectors of the target's width (vectors.h), so the dot product is vector FMAs and a reduction
// in registers: the array of 16 lanes it replaced was reduced through the stack, a third of the
// kernel's time on an AVX-512 CPU (perf, 64 requests).
template <typename T>
inline float dot(const float* q, const T* k, int64_t n) {
  FloatVec acc = {};
  int64_t d = 0;
  for (; d + kVecFloats <= n; d += kVecFloats) acc += load_vec(q + d) * load_vec(k + d);
  float sum = sum_lanes(acc);
  for (; d < n; ++d) sum += q[d] * static_cast<float>(k[d]);
  return sum;
}

template <typename T>
inline void axpy(float* acc, float p, const T* v, int64_t n) {
  for (int64_t d = 0; d < n; ++d) acc[d] += p * static_cast<float>(v[d]);
}

// f(t, block, row) for the context's tokens lo .. lo + n - 1 (t counts from 0), a block at a
// time: one table read and no division per token. Before a block's rows, the next block's rows
// (row_bytes each, from row_ptr(block, row)) are prefetched: the blocks of a request lie apart
// in memory, and each layer's cache comes from DRAM (30 layers' caches outgrow the CPU's caches).
template <typename RowPtr, typename F>
inline void for_each_row(int64_t lo, int64_t n, int64_t block_size, const int32_t* table, int64_t row_bytes,
                         RowPtr&& row_ptr, F&& f) {
  int64_t t = 0;
  while (t < n) {
    const int64_t pos = lo + t, block = table[pos / block_size], first = pos % block_size;
    const int64_t rows = std::min(block_size - first, n - t);
    if (t + rows < n) {
      const int64_t next = table[(pos + rows) / block_size];
      for (int64_t i = 0; i < std::min(block_size, n - t - rows); ++i) {
        const char* row = reinterpret_cast<const char*>(row_ptr(next, i));
        for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(row + b);
      }
    }
    for (int64_t i = 0; i < rows; ++i) f(t + i, block, first + i);
    t += rows;
  }
}

// Bytes of a request's first K and V rows prefetched before its scores (see decode).
constexpr int64_t kPrefetchBytes = 256 << 10;

// One task per request: each cache row (all KV heads of a token, contiguous) is read once, in
// order through each block, for every query head.
template <typename T>
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
  int64_t max_len = 1;
  for (int64_t r = 0; r < num_reqs; ++r) max_len = std::max<int64_t>(max_len, lens[r]);
  if (window > 0) max_len = std::min(max_len, window);
  const float fscale = static_cast<float>(scale);
  auto k_row = [&](int64_t block, int64_t row) { return k_base + block * sk0 + row * sk1; };
  auto v_row = [&](int64_t block, int64_t row) { return v_base + block * sv0 + row * sv1; };

  at::parallel_for(0, num_reqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(num_heads * head), acc(num_heads * head), scores(num_heads * max_len), inv(num_heads);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t len = lens[r];
      const int64_t lo = window > 0 ? std::max<int64_t>(len - window, 0) : 0;
      const int64_t n = len - lo;
      const int32_t* table = tables + r * st0;
      // Its first blocks of K and of V, before the scores: for_each_row looks only one block
      // ahead, so a request started on blocks no prefetch had reached (10-15% off the kernel at
      // 64 requests of 100 tokens). A long context is not fetched whole: it would not stay in the
      // core's cache until its V rows are read.
      const int64_t ahead = std::min(n, kPrefetchBytes / (2 * row_bytes));
      for (int64_t b = lo / block_size; ahead > 0 && b <= (lo + ahead - 1) / block_size; ++b) {
        const char* kb = reinterpret_cast<const char*>(k_row(table[b], 0));
        const char* vb = reinterpret_cast<const char*>(v_row(table[b], 0));
        for (int64_t off = 0; off < block_size * row_bytes; off += 64) {
          __builtin_prefetch(kb + off);
          __builtin_prefetch(vb + off);
        }
      }
      for (int64_t qh = 0; qh < num_heads; ++qh) {
        const T* q = q_base + r * sq0 + qh * sq1;
        for (int64_t d = 0; d < head; ++d) qf[qh * head + d] = static_cast<float>(q[d]) * fscale;
      }
      for_each_row(lo, n, block_size, table, row_bytes, k_row, [&](int64_t t, int64_t block, int64_t row) {
        const T* k = k_row(block, row);
        for (int64_t kvh = 0, qh = 0; kvh < num_kv_heads; ++kvh)   // no division per head and token
          for (int64_t g = 0; g < group; ++g, ++qh) scores[qh * n + t] = dot(&qf[qh * head], k + kvh * sk2, head);
      });
      for (int64_t qh = 0; qh < num_heads; ++qh) {
        float* s = &scores[qh * n];
        const float m = n ? *std::max_element(s, s + n) : 0.f;
        float sum = 0.f;
        for (int64_t t = 0; t < n; ++t) {
          s[t] = std::exp(s[t] - m);
          sum += s[t];
        }
        inv[qh] = sum > 0.f ? 1.f / sum : 0.f;   // an empty context gives zeros
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for_each_row(lo, n, block_size, table, row_bytes, v_row, [&](int64_t t, int64_t block, int64_t row) {
        const T* v = v_row(block, row);
        for (int64_t kvh = 0, qh = 0; kvh < num_kv_heads; ++kvh)
          for (int64_t g = 0; g < group; ++g, ++qh)
            axpy(&acc[qh * head], scores[qh * n + t] * inv[qh], v + kvh * sv2, head);
      });
      for (int64_t qh = 0; qh < num_heads; ++qh) {
        T* o = out_base + r * so0 + qh * so1;
        for (int64_t d = 0; d < head; ++d) o[d] = static_cast<T>(acc[qh * head + d]);
      }
    }
  });
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
    decode<float>(out, query, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
  } else if (query.scalar_type() == at::kBFloat16) {
    decode<c10::BFloat16>(out, query, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
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
