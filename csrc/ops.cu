// qinfer._C: CUDA twins of qinfer/ops/reference.py, registered with torch as torch.ops.qinfer.*.
//
// Every kernel computes in float32 and rounds once per output, like the reference.
// One thread block per token row; 16-byte vector accesses where rows allow them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <type_traits>

#include "activation.cuh"
#include "pdl.cuh"

namespace qinfer {
namespace {

template <typename T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x) { return static_cast<T>(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f(float x) { return __float2half(x); }

// torch dtype -> CUDA element type.
template <typename T> struct Cuda { using type = T; };
template <> struct Cuda<at::BFloat16> { using type = __nv_bfloat16; };
template <> struct Cuda<at::Half> { using type = __half; };

#define QINFER_DISPATCH(TYPE, NAME, ...)                                        \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, [&] { \
    using T = typename Cuda<scalar_t>::type;                                    \
    __VA_ARGS__();                                                              \
  })

constexpr int kNormThreads = 512;

// 1 / rms of a block's row from each thread's partial sum of squares; every thread gets it.
__device__ __forceinline__ float block_inv_rms(float sq, int hidden, float eps) {
  using Reduce = cub::BlockReduce<float, kNormThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float inv;
  const float total = Reduce(tmp).Sum(sq);
  if (threadIdx.x == 0) inv = rsqrtf(total / hidden + eps);
  __syncthreads();
  return inv;
}

// out[row] = rms_norm(x[row] (+ res[row])) * w; with ADD, res[row] <- x[row] + res[row].
// The row (hidden <= kNormThreads * 16 elements) stays in registers between the passes.
template <typename T, bool ADD>
__global__ void rms_norm_kernel(T* __restrict__ out, const T* __restrict__ x, T* __restrict__ res,
                                const T* __restrict__ w, int64_t stride_o, int64_t stride_x,
                                int64_t stride_r, int hidden, float eps) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh): x is the previous kernel's
  pdl_launch_dependents();
  constexpr int kPer = 16;
  const int64_t row = blockIdx.x;
  float vals[kPer];
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int c = threadIdx.x + j * kNormThreads;
    float v = 0.f;
    if (c < hidden) {
      v = to_f(x[row * stride_x + c]);
      if (ADD) {
        const T s = from_f<T>(v + to_f(res[row * stride_r + c]));  // rounded like torch's x + r
        res[row * stride_r + c] = s;
        v = to_f(s);
      }
    }
    vals[j] = v;
    sq += v * v;
  }
  const float inv = block_inv_rms(sq, hidden, eps);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int c = threadIdx.x + j * kNormThreads;
    if (c < hidden) {
      const float normed = to_f(from_f<T>(vals[j] * inv));  // HF: cast, then times weight
      out[row * stride_o + c] = from_f<T>(normed * to_f(w[c]));
    }
  }
}

// 16 bytes of T: the unit of the vectorised kernels below.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Whether rows of `width` elements can be read as whole Packs: row starts and width on 16 bytes.
bool packs_rows(const at::Tensor& t, int64_t width) {
  const int64_t per = 16 / t.element_size();
  return aligned16(t) && width % per == 0 && t.stride(0) % per == 0;
}

constexpr int kNormPacksPerThread = 2;

// rms_norm_kernel with 16-byte accesses: thread i holds Packs i and i + kNormThreads of the row
// (hidden <= kNormThreads * kNormPacksPerThread * Pack::kSize). Same arithmetic per element.
template <typename T, bool ADD>
__global__ void rms_norm_packed_kernel(T* __restrict__ out, const T* __restrict__ x, T* __restrict__ res,
                                       const T* __restrict__ w, int64_t stride_o, int64_t stride_x,
                                       int64_t stride_r, int hidden, float eps) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh): x is the previous kernel's
  pdl_launch_dependents();
  using P = Pack<T>;
  const int64_t row = blockIdx.x;
  const int packs = hidden / P::kSize;
  float vals[kNormPacksPerThread][P::kSize];
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kNormPacksPerThread; ++j) {
    const int p = threadIdx.x + j * kNormThreads;
    if (p < packs) {
      const P xp = reinterpret_cast<const P*>(x + row * stride_x)[p];
      P rp;
      if (ADD) rp = reinterpret_cast<const P*>(res + row * stride_r)[p];
#pragma unroll
      for (int e = 0; e < P::kSize; ++e) {
        float v = to_f(xp.v[e]);
        if (ADD) {
          rp.v[e] = from_f<T>(v + to_f(rp.v[e]));  // rounded like torch's x + r
          v = to_f(rp.v[e]);
        }
        vals[j][e] = v;
        sq += v * v;
      }
      if (ADD) reinterpret_cast<P*>(res + row * stride_r)[p] = rp;
    }
  }
  const float inv = block_inv_rms(sq, hidden, eps);
#pragma unroll
  for (int j = 0; j < kNormPacksPerThread; ++j) {
    const int p = threadIdx.x + j * kNormThreads;
    if (p < packs) {
      const P wp = reinterpret_cast<const P*>(w)[p];
      P op;
#pragma unroll
      for (int e = 0; e < P::kSize; ++e) {
        const float normed = to_f(from_f<T>(vals[j][e] * inv));  // HF: cast, then times weight
        op.v[e] = from_f<T>(normed * to_f(wp.v[e]));
      }
      reinterpret_cast<P*>(out + row * stride_o)[p] = op;
    }
  }
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, name, ": [T, H] CUDA, rows contiguous");
}

template <bool ADD>
void launch_norm(at::Tensor& out, const at::Tensor& x, at::Tensor& res, const at::Tensor& w, double eps) {
  const int hidden = x.size(1);
  TORCH_CHECK(hidden <= kNormThreads * 16, "rms_norm: hidden size too large");
  if (x.size(0) == 0) return;
  const at::cuda::OptionalCUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  // 16-byte accesses where every row allows them (52-60% of copy bandwidth with 2-byte ones).
  const bool packed = packs_rows(out, hidden) && packs_rows(x, hidden) && packs_rows(res, hidden) &&
                      aligned16(w) && hidden <= kNormThreads * kNormPacksPerThread * (16 / x.element_size());
  QINFER_DISPATCH(x.scalar_type(), "rms_norm", [&] {
    auto kernel = packed ? rms_norm_packed_kernel<T, ADD> : rms_norm_kernel<T, ADD>;
    launch_dependent(kernel, x.size(0), kNormThreads, stream,
                     reinterpret_cast<T*>(out.data_ptr()), reinterpret_cast<const T*>(x.data_ptr()),
                     reinterpret_cast<T*>(res.data_ptr()), reinterpret_cast<const T*>(w.data_ptr()),
                     out.stride(0), x.stride(0), res.stride(0), hidden, static_cast<float>(eps));
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, "rms_norm");
  auto out = at::empty_like(x);
  at::Tensor unused = x;
  launch_norm<false>(out, x, unused, weight.contiguous(), eps);
  return out;
}

// In place: residual <- x + residual, x <- rms_norm(residual) * weight.
void fused_add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_rows(x, "fused_add_rms_norm");
  check_rows(residual, "fused_add_rms_norm");
  launch_norm<true>(x, x, residual, weight.contiguous(), eps);
}

// out[t, i] = silu(x[t, i]) * x[t, I + i]; grid (T, blocks over the row).
template <typename T>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t stride_o,
                                    int64_t stride_x, int inter) {
  const int64_t row = blockIdx.x;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < inter; i += gridDim.y * blockDim.x)
    out[row * stride_o + i] = from_f<T>(silu_mul(to_f(x[row * stride_x + i]), to_f(x[row * stride_x + inter + i])));
}

// The same a Pack (16 bytes) of gate, of up and of out per thread.
template <typename T>
__global__ void silu_and_mul_packed_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t stride_o,
                                           int64_t stride_x, int inter) {
  using P = Pack<T>;
  const int p = blockIdx.y * blockDim.x + threadIdx.x;
  if (p >= inter / P::kSize) return;
  const int64_t row = blockIdx.x;
  const P g = reinterpret_cast<const P*>(x + row * stride_x)[p];
  const P u = reinterpret_cast<const P*>(x + row * stride_x + inter)[p];
  P o;
#pragma unroll
  for (int e = 0; e < P::kSize; ++e) o.v[e] = from_f<T>(silu_mul(to_f(g.v[e]), to_f(u.v[e])));
  reinterpret_cast<P*>(out + row * stride_o)[p] = o;
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  check_rows(x, "silu_and_mul");
  const int inter = x.size(1) / 2;
  auto out = at::empty({x.size(0), inter}, x.options());
  if (x.size(0) == 0) return out;
  const at::cuda::OptionalCUDAGuard guard(x.device());
  constexpr int kThreads = 256;
  // Packs where the halves allow them (the 2-byte loads reached 52% of copy bandwidth in prefill).
  const bool packed = packs_rows(x, 2 * inter) && inter % (16 / x.element_size()) == 0 && packs_rows(out, inter);
  const int units = packed ? inter / (16 / x.element_size()) : (inter + 3) / 4;
  const dim3 grid(x.size(0), (units + kThreads - 1) / kThreads);
  QINFER_DISPATCH(x.scalar_type(), "silu_and_mul", [&] {
    auto kernel = packed ? silu_and_mul_packed_kernel<T> : silu_and_mul_kernel<T>;
    kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<T*>(out.data_ptr()), reinterpret_cast<const T*>(x.data_ptr()),
        out.stride(0), x.stride(0), inter);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Rotate one token's heads in place. Pairs (i, i + D/2) (neox) or (2i, 2i + 1);
// cache row [D] = cos | sin of the token's position. Threads stride over (head, i).
// CACHE (rotary_and_cache): the rotated key heads and the value row [Hk * D] also go to
// the token's cache slot (none for a negative slot), saving reshape_and_cache's launch.
struct KvCacheArgs {
  const void* value;
  void* k_cache;
  void* v_cache;
  const int64_t* slots;
  int64_t stride_v, stride_kb, stride_kt, stride_vb, stride_vt;
  int block_size;

  // Token tok's [Hk * D] rows of the K and V caches; both null for a negative slot.
  template <typename T>
  __device__ __forceinline__ void rows(int64_t tok, T*& k_row, T*& v_row) const {
    const int64_t slot = slots[tok];
    k_row = v_row = nullptr;
    if (slot < 0) return;
    const int64_t blk = slot / block_size, off = slot % block_size;
    k_row = static_cast<T*>(k_cache) + blk * stride_kb + off * stride_kt;
    v_row = static_cast<T*>(v_cache) + blk * stride_vb + off * stride_vt;
  }

  // The block's threads copy token tok's value row [width] into v_row.
  template <typename T>
  __device__ __forceinline__ void copy_value(int64_t tok, T* v_row, int width) const {
    const T* v = static_cast<const T*>(value) + tok * stride_v;
    for (int i = threadIdx.x; i < width; i += blockDim.x) v_row[i] = v[i];
  }
};

template <typename T, typename C, bool CACHE>
__global__ void rotary_kernel(const int64_t* __restrict__ positions, T* __restrict__ q,
                              T* __restrict__ k, const C* __restrict__ cache, int64_t stride_q,
                              int64_t stride_k, int64_t stride_c, int num_q, int num_k, int head,
                              bool neox, KvCacheArgs kv) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh): q and k are the previous kernel's
  pdl_launch_dependents();
  const int64_t tok = blockIdx.x;
  const C* row = cache + positions[tok] * stride_c;
  const int half = head / 2;
  T* k_row = nullptr;  // the token's [num_k * head] row of the K cache
  T* v_row = nullptr;
  if (CACHE) kv.rows(tok, k_row, v_row);
  for (int j = threadIdx.x; j < (num_q + num_k) * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    T* base = h < num_q ? q + tok * stride_q + h * head : k + tok * stride_k + (h - num_q) * head;
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float c = to_f(row[i]), s = to_f(row[half + i]);
    const float x1 = to_f(base[a]), x2 = to_f(base[b]);
    const T y1 = from_f<T>(x1 * c - x2 * s), y2 = from_f<T>(x2 * c + x1 * s);
    base[a] = y1;
    base[b] = y2;
    if (CACHE && k_row != nullptr && h >= num_q) {
      k_row[(h - num_q) * head + a] = y1;
      k_row[(h - num_q) * head + b] = y2;
    }
  }
  if (CACHE && v_row != nullptr) kv.copy_value(tok, v_row, num_k * head);
}

template <bool CACHE>
void launch_rotary(const at::Tensor& positions, at::Tensor& query, at::Tensor& key, int64_t head_size,
                   const at::Tensor& cos_sin_cache, bool is_neox, const KvCacheArgs& kv) {
  check_rows(query, "rotary_embedding");
  check_rows(key, "rotary_embedding");
  TORCH_CHECK(positions.scalar_type() == at::kLong, "rotary_embedding: positions int64");
  TORCH_CHECK(cos_sin_cache.stride(1) == 1, "rotary_embedding: cache rows contiguous");
  if (query.size(0) == 0) return;
  const at::cuda::OptionalCUDAGuard guard(query.device());
  const int num_q = query.size(1) / head_size, num_k = key.size(1) / head_size;
  const int threads = std::min(512, (num_q + num_k) * static_cast<int>(head_size) / 2);
  auto stream = at::cuda::getCurrentCUDAStream();
  QINFER_DISPATCH(query.scalar_type(), "rotary_embedding", [&] {
    using QT = T;
    QINFER_DISPATCH(cos_sin_cache.scalar_type(), "rotary_cache", [&] {
      launch_dependent(rotary_kernel<QT, T, CACHE>, query.size(0), threads, stream,
                       positions.data_ptr<int64_t>(), reinterpret_cast<QT*>(query.data_ptr()),
                       reinterpret_cast<QT*>(key.data_ptr()), reinterpret_cast<const T*>(cos_sin_cache.data_ptr()),
                       query.stride(0), key.stride(0), cos_sin_cache.stride(0), num_q, num_k,
                       static_cast<int>(head_size), is_neox, kv);
    });
  });
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key, int64_t head_size,
                      const at::Tensor& cos_sin_cache, bool is_neox) {
  launch_rotary<false>(positions, query, key, head_size, cos_sin_cache, is_neox, KvCacheArgs{});
}

// The cache operands' checks, and their pointers and strides for the kernels.
KvCacheArgs check_cache_args(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                             at::Tensor& v_cache, const at::Tensor& slot_mapping, const char* op) {
  check_rows(value, op);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), op, ": caches contiguous");
  TORCH_CHECK(key.scalar_type() == k_cache.scalar_type() && value.scalar_type() == v_cache.scalar_type()
              && key.scalar_type() == value.scalar_type(), op, ": dtype mismatch");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, op, ": slot_mapping int64");
  TORCH_CHECK(k_cache.size(2) * k_cache.size(3) == key.size(1), op, ": cache heads");
  return KvCacheArgs{value.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                     slot_mapping.data_ptr<int64_t>(), value.stride(0), k_cache.stride(0),
                     k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
                     static_cast<int>(k_cache.size(1))};
}

// rotary_embedding, then the rotated key and the value [T, Hk * D] into the caches at
// slot_mapping (reshape_and_cache's meaning), in one launch.
void rotary_and_cache(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                      const at::Tensor& slot_mapping, int64_t head_size, const at::Tensor& cos_sin_cache,
                      bool is_neox) {
  const KvCacheArgs kv = check_cache_args(key, value, k_cache, v_cache, slot_mapping, "rotary_and_cache");
  launch_rotary<true>(positions, query, key, head_size, cos_sin_cache, is_neox, kv);
}

// qk_norm_rotary_and_cache (Qwen3): each q and k head RMS-normed (weights [D]), then rotated, the
// key heads and the value row cached as rotary_and_cache does, in one launch where the norms alone
// took two (and, past one token, two copies out of the fused projection). One warp per head (the
// token's Hq + Hk heads over the block's warps); lane l holds pairs l, l + 32, ... (PAIRS of them:
// D / 64), so the head's sum of squares is one warp reduction. Rounded as rms_norm then
// rotary_embedding round: normed to 16 bits, times the weight to 16 bits, then rotated.
template <typename T, typename C, int PAIRS>
__global__ void qk_norm_rotary_kernel(const int64_t* __restrict__ positions, T* __restrict__ q,
                                      T* __restrict__ k, const C* __restrict__ cache, int64_t stride_q,
                                      int64_t stride_k, int64_t stride_c, int num_q, int num_k, bool neox,
                                      const T* __restrict__ q_w, const T* __restrict__ k_w, float eps,
                                      KvCacheArgs kv) {
  pdl_wait();  // q and k are the previous kernel's (pdl.cuh)
  pdl_launch_dependents();
  constexpr int kHalf = PAIRS * 32, kHead = 2 * kHalf;
  const int64_t tok = blockIdx.x;
  const C* row = cache + positions[tok] * stride_c;
  T* k_row;
  T* v_row;
  kv.rows(tok, k_row, v_row);
  const int lane = threadIdx.x % 32;
  for (int h = threadIdx.x / 32; h < num_q + num_k; h += blockDim.x / 32) {
    const bool is_q = h < num_q;
    T* base = is_q ? q + tok * stride_q + h * kHead : k + tok * stride_k + (h - num_q) * kHead;
    const T* w = is_q ? q_w : k_w;
    float x1[PAIRS], x2[PAIRS];
    float sq = 0.f;
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
      const int i = lane + 32 * p, a = neox ? i : 2 * i, b = neox ? i + kHalf : 2 * i + 1;
      x1[p] = to_f(base[a]);
      x2[p] = to_f(base[b]);
      sq += x1[p] * x1[p] + x2[p] * x2[p];
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sq += __shfl_xor_sync(0xffffffff, sq, offset);
    const float inv = rsqrtf(sq / kHead + eps);
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
      const int i = lane + 32 * p, a = neox ? i : 2 * i, b = neox ? i + kHalf : 2 * i + 1;
      const float n1 = to_f(from_f<T>(to_f(from_f<T>(x1[p] * inv)) * to_f(w[a])));
      const float n2 = to_f(from_f<T>(to_f(from_f<T>(x2[p] * inv)) * to_f(w[b])));
      const float c = to_f(row[i]), s = to_f(row[kHalf + i]);
      const T y1 = from_f<T>(n1 * c - n2 * s), y2 = from_f<T>(n2 * c + n1 * s);
      base[a] = y1;
      base[b] = y2;
      if (!is_q && k_row != nullptr) {
        k_row[(h - num_q) * kHead + a] = y1;
        k_row[(h - num_q) * kHead + b] = y2;
      }
    }
  }
  if (v_row != nullptr) kv.copy_value(tok, v_row, num_k * kHead);
}

// head_size 64, 128 or 256 (PAIRS 1, 2, 4); q_weight and k_weight [head_size] of query's dtype.
void qk_norm_rotary_and_cache(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                              const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& slot_mapping, int64_t head_size, const at::Tensor& cos_sin_cache,
                              bool is_neox, const at::Tensor& q_weight, const at::Tensor& k_weight, double eps) {
  const char* op = "qk_norm_rotary_and_cache";
  check_rows(query, op);
  check_rows(key, op);
  const KvCacheArgs kv = check_cache_args(key, value, k_cache, v_cache, slot_mapping, op);
  TORCH_CHECK(head_size == 64 || head_size == 128 || head_size == 256, op, ": head_size 64, 128 or 256");
  TORCH_CHECK(positions.scalar_type() == at::kLong, op, ": positions int64");
  TORCH_CHECK(cos_sin_cache.stride(1) == 1 && cos_sin_cache.size(1) == head_size, op, ": cache rows [D] contiguous");
  for (const at::Tensor* w : {&q_weight, &k_weight})
    TORCH_CHECK(w->is_cuda() && w->is_contiguous() && w->numel() == head_size && w->scalar_type() == query.scalar_type(),
                op, ": norm weights [head_size], contiguous, of query's dtype");
  if (query.size(0) == 0) return;
  const at::cuda::OptionalCUDAGuard guard(query.device());
  const int num_q = query.size(1) / head_size, num_k = key.size(1) / head_size;
  const int threads = 32 * std::min(16, num_q + num_k);
  auto stream = at::cuda::getCurrentCUDAStream();
  QINFER_DISPATCH(query.scalar_type(), "qk_norm_rotary_and_cache", [&] {
    using QT = T;
    QINFER_DISPATCH(cos_sin_cache.scalar_type(), "rotary_cache", [&] {
      auto launch = [&](auto kernel) {
        launch_dependent(kernel, query.size(0), threads, stream, positions.data_ptr<int64_t>(),
                         reinterpret_cast<QT*>(query.data_ptr()), reinterpret_cast<QT*>(key.data_ptr()),
                         reinterpret_cast<const T*>(cos_sin_cache.data_ptr()), query.stride(0), key.stride(0),
                         cos_sin_cache.stride(0), num_q, num_k, is_neox,
                         reinterpret_cast<const QT*>(q_weight.data_ptr()),
                         reinterpret_cast<const QT*>(k_weight.data_ptr()), static_cast<float>(eps), kv);
      };
      if (head_size == 64) launch(qk_norm_rotary_kernel<QT, T, 1>);
      else if (head_size == 128) launch(qk_norm_rotary_kernel<QT, T, 2>);
      else launch(qk_norm_rotary_kernel<QT, T, 4>);
    });
  });
}

// Copy token t's [Hk * D] key and value rows into cache slot slots[t] (skip negative slots).
// Both sides are contiguous per token, so each thread moves 16 bytes when widths allow.
template <typename V>
__global__ void reshape_and_cache_kernel(const V* __restrict__ key, const V* __restrict__ value,
                                         V* __restrict__ k_cache, V* __restrict__ v_cache,
                                         const int64_t* __restrict__ slots, int64_t stride_k,
                                         int64_t stride_v, int64_t stride_kb, int64_t stride_kt,
                                         int64_t stride_vb, int64_t stride_vt, int block_size,
                                         int width) {
  const int64_t tok = blockIdx.x;
  const int64_t slot = slots[tok];
  if (slot < 0) return;
  const int64_t blk = slot / block_size, off = slot % block_size;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    k_cache[blk * stride_kb + off * stride_kt + i] = key[tok * stride_k + i];
    v_cache[blk * stride_vb + off * stride_vt + i] = value[tok * stride_v + i];
  }
}

bool heads_contiguous(const at::Tensor& x) {  // [T, H, D] with each token's H*D contiguous
  return x.stride(2) == 1 && x.stride(1) == x.size(2);
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                       at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  TORCH_CHECK(heads_contiguous(key) && heads_contiguous(value), "reshape_and_cache: key/value layout");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "reshape_and_cache: caches contiguous");
  TORCH_CHECK(key.scalar_type() == k_cache.scalar_type(), "reshape_and_cache: dtype mismatch");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, "reshape_and_cache: slot_mapping int64");
  if (key.size(0) == 0) return;
  const at::cuda::OptionalCUDAGuard guard(key.device());
  const int64_t esize = key.element_size();
  const int64_t width_bytes = key.size(1) * key.size(2) * esize;
  // 16-byte vectors when every row start and width is a multiple of 16 bytes.
  const bool vec = width_bytes % 16 == 0 && (key.stride(0) * esize) % 16 == 0 &&
                   (value.stride(0) * esize) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(key.data_ptr()) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(value.data_ptr()) % 16 == 0;
  const int64_t unit = vec ? 16 : esize;
  const int width = width_bytes / unit;
  const int threads = std::min(256, std::max(32, width));
  auto launch = [&](auto* tag) {
    using V = std::remove_pointer_t<decltype(tag)>;
    reshape_and_cache_kernel<V><<<key.size(0), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const V*>(key.data_ptr()), reinterpret_cast<const V*>(value.data_ptr()),
        reinterpret_cast<V*>(k_cache.data_ptr()), reinterpret_cast<V*>(v_cache.data_ptr()),
        slot_mapping.data_ptr<int64_t>(), key.stride(0) * esize / unit, value.stride(0) * esize / unit,
        k_cache.stride(0) * esize / unit, k_cache.stride(1) * esize / unit,
        v_cache.stride(0) * esize / unit, v_cache.stride(1) * esize / unit, k_cache.size(1), width);
  };
  if (vec) launch(static_cast<uint4*>(nullptr));
  else if (esize == 2) launch(static_cast<uint16_t*>(nullptr));
  else launch(static_cast<uint32_t*>(nullptr));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace qinfer

TORCH_LIBRARY(qinfer, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, "
        "Tensor cos_sin_cache, bool is_neox) -> ()");
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slot_mapping) -> ()");
  m.def("rotary_and_cache(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor value, "
        "Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor slot_mapping, int head_size, "
        "Tensor cos_sin_cache, bool is_neox) -> ()");
  m.def("qk_norm_rotary_and_cache(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor value, "
        "Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor slot_mapping, int head_size, "
        "Tensor cos_sin_cache, bool is_neox, Tensor q_weight, Tensor k_weight, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) {
  m.impl("rms_norm", &qinfer::rms_norm);
  m.impl("fused_add_rms_norm", &qinfer::fused_add_rms_norm);
  m.impl("silu_and_mul", &qinfer::silu_and_mul);
  m.impl("rotary_embedding", &qinfer::rotary_embedding);
  m.impl("reshape_and_cache", &qinfer::reshape_and_cache);
  m.impl("rotary_and_cache", &qinfer::rotary_and_cache);
  m.impl("qk_norm_rotary_and_cache", &qinfer::qk_norm_rotary_and_cache);
}
