// Device helpers of the 16-bit GEMVs (gemv.cu's dense ones, moe/experts_gemv.cu's per expert):
// a warp streams weight rows in 16-byte vectors, kUnroll loads in flight per lane, weights
// bypassing L1 (read once), and dots them with an activation row in float32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace qinfer {
namespace gemv_impl {

constexpr int kWarpSize = 32;
constexpr int kGemvThreads = 256;
constexpr int kVecElems = 8;   // 16 bytes of bf16/fp16
constexpr int kUnroll = 4;     // 16-byte weight loads in flight per lane

__device__ __forceinline__ uint4 load_streaming(const uint4* ptr) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// sum + dot(8 packed 16-bit floats of a, of b), in float32.
template <typename T>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b, float sum) {
  const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 fa, fb;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      fa = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wa[i]));
      fb = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wb[i]));
    } else {
      fa = __half22float2(*reinterpret_cast<const __half2*>(&wa[i]));
      fb = __half22float2(*reinterpret_cast<const __half2*>(&wb[i]));
    }
    sum = fmaf(fa.x, fb.x, sum);
    sum = fmaf(fa.y, fb.y, sum);
  }
  return sum;
}

template <typename T> __device__ __forceinline__ T to_t(float x);
template <> __device__ __forceinline__ __nv_bfloat16 to_t(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half to_t(float x) { return __float2half(x); }
template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// sum_u of `rows` weight rows . x, ROWS rows streamed together (they share x's loads), one float per row
// reduced over the warp. w_rows[r]: row r's first 16-byte vector.
template <typename T, int ROWS>
__device__ __forceinline__ void warp_dots(const uint4* const (&w_rows)[ROWS], const uint4* x_vecs, int row_vecs,
                                          int lane, float (&out)[ROWS]) {
  // One accumulator per unrolled vector and __launch_bounds__(.., 1): with a single FMA chain,
  // or held to few registers, ptxas issues each load just before its FMAs (~1 load in flight).
  float sums[ROWS][kUnroll] = {};
  int v = lane;
  for (; v + (kUnroll - 1) * kWarpSize < row_vecs; v += kUnroll * kWarpSize) {
    uint4 wv[ROWS][kUnroll], xv[kUnroll];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[r][u] = load_streaming(w_rows[r] + v + u * kWarpSize);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) xv[u] = __ldg(x_vecs + v + u * kWarpSize);
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) sums[r][u] = dot8<T>(wv[r][u], xv[u], sums[r][u]);
  }
  for (; v < row_vecs; v += kWarpSize) {  // the last < kUnroll * 32 vectors of the row
    const uint4 xv = __ldg(x_vecs + v);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) sums[r][0] = dot8<T>(load_streaming(w_rows[r] + v), xv, sums[r][0]);
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    float sum = 0.f;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) sum += sums[r][u];
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    out[r] = sum;
  }
}

}  // namespace gemv_impl
}  // namespace qinfer
