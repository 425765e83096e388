// qinfer._C GEMV for batch-1 decode: out[1, N] = x[1, K] . W[N, K]^T (+ bias), and the MLP's
// gated form, out[1, I] = silu(x . Wg^T) * (x . Wu^T) over a [gate; up] weight [2I, K].
//
// At one token a linear layer is one pass over its weight: its time is weight bytes / memory
// bandwidth plus the kernel's ramp-up and tail. Each warp owns one output row and streams it in
// 16-byte vectors, kUnroll loads in flight per lane; weights bypass L1 (read once), x, read by
// every warp, stays in L1/L2. Accumulation in float32, one rounding per output, like F.linear.
// On the H200 it beats cuBLAS on the small Llama-3.1-8B weights (o_proj 10.8 vs 13.9 us,
// qkv_proj 15.2 vs 16.6 us, down_proj 31.6 vs 33.5 us) and ties on the large ones
// (bench/bench_gemv.py); a batch-1 8B forward is 6% faster with it (bench/NOTES.md).
// Launched as programmatic dependents (pdl.cuh): a GEMV's launch overlaps the kernel before it.
// The gated form saves the silu_and_mul launch of every layer (~5 us of a ~140 us layer at one
// token): a warp owns a gate row and its up row, and rounds both to 16 bits before the silu, as
// gemv then silu_and_mul would, so the two paths give the same bits.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <optional>

#include "activation.cuh"
#include "gemv.cuh"
#include "pdl.cuh"

namespace qinfer {
namespace {

using namespace gemv_impl;

// One warp per output row: out[row] = W[row] . x (+ bias[row]).
template <typename T>
__global__ void __launch_bounds__(kGemvThreads, 1)
gemv_kernel(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
            const T* __restrict__ bias, int n, int k) {
  pdl_launch_dependents();
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh): x is the previous kernel's
  const int row = (blockIdx.x * kGemvThreads + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= n) return;
  const int row_vecs = k / kVecElems;
  const uint4* w_rows[1] = {reinterpret_cast<const uint4*>(w) + static_cast<int64_t>(row) * row_vecs};
  float sum[1];
  warp_dots<T, 1>(w_rows, reinterpret_cast<const uint4*>(x), row_vecs, lane, sum);
  if (lane == 0) out[row] = to_t<T>(sum[0] + (bias != nullptr ? to_float(bias[row]) : 0.f));
}

// One warp per output row of the gated form: gate row `row` and up row `inter + row` of W.
template <typename T>
__global__ void __launch_bounds__(kGemvThreads, 1)
gemv_silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                         const T* __restrict__ bias, int inter, int k) {
  pdl_launch_dependents();
  pdl_wait();
  const int row = (blockIdx.x * kGemvThreads + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= inter) return;
  const int row_vecs = k / kVecElems;
  const uint4* w_vecs = reinterpret_cast<const uint4*>(w);
  const uint4* w_rows[2] = {w_vecs + static_cast<int64_t>(row) * row_vecs,
                            w_vecs + static_cast<int64_t>(inter + row) * row_vecs};
  float sums[2];
  warp_dots<T, 2>(w_rows, reinterpret_cast<const uint4*>(x), row_vecs, lane, sums);
  if (lane == 0) {
    const float gate = to_float(to_t<T>(sums[0] + (bias != nullptr ? to_float(bias[row]) : 0.f)));
    const float up = to_float(to_t<T>(sums[1] + (bias != nullptr ? to_float(bias[inter + row]) : 0.f)));
    out[row] = to_t<T>(silu_mul(gate, up));
  }
}

// out [1, rows] from `kernel` over weight w, one warp per output row.
template <typename T, typename Kernel>
void launch(Kernel kernel, at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
            const std::optional<at::Tensor>& bias, int rows) {
  constexpr int rows_per_block = kGemvThreads / kWarpSize;
  const int blocks = (rows + rows_per_block - 1) / rows_per_block;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const T* b = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  launch_dependent(kernel, blocks, kGemvThreads, stream, reinterpret_cast<T*>(out.data_ptr()),
                   reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(w.data_ptr()), b, rows,
                   static_cast<int>(w.size(1)));
}

void check_gemv_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     const char* op) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.size(0) == 1 && weight.dim() == 2,
              op, ": x [1, K] and weight [N, K] on cuda");
  TORCH_CHECK(x.size(1) == weight.size(1) && x.size(1) % kVecElems == 0,
              op, ": K must match and be a multiple of 8");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), op, ": contiguous x and weight");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), op, ": x and weight of one dtype");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              op, ": bf16 or fp16, got ", x.scalar_type());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0, op, ": 16-byte aligned x and weight");
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == weight.size(0) &&
                bias->scalar_type() == x.scalar_type(), op, ": bias [N] of x's dtype");
  }
}

}  // namespace

// x [1, K], weight [N, K], both contiguous bf16 or fp16, K % 8 == 0, 16-byte aligned; bias [N]
// or None.
at::Tensor gemv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_gemv_args(x, weight, bias, "gemv");
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const int n = weight.size(0);
  at::Tensor out = at::empty({1, n}, x.options());
  if (x.scalar_type() == at::kBFloat16) {
    launch<__nv_bfloat16>(gemv_kernel<__nv_bfloat16>, out, x, weight, bias, n);
  } else {
    launch<__half>(gemv_kernel<__half>, out, x, weight, bias, n);
  }
  return out;
}

// silu_and_mul(gemv(x, weight, bias)) in one launch: weight [2I, K] = [gate; up], out [1, I].
at::Tensor gemv_silu_and_mul(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_gemv_args(x, weight, bias, "gemv_silu_and_mul");
  TORCH_CHECK(weight.size(0) % 2 == 0, "gemv_silu_and_mul: weight rows [gate; up] of equal halves");
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const int inter = weight.size(0) / 2;
  at::Tensor out = at::empty({1, inter}, x.options());
  if (x.scalar_type() == at::kBFloat16) {
    launch<__nv_bfloat16>(gemv_silu_and_mul_kernel<__nv_bfloat16>, out, x, weight, bias, inter);
  } else {
    launch<__half>(gemv_silu_and_mul_kernel<__half>, out, x, weight, bias, inter);
  }
  return out;
}

}  // namespace qinfer

TORCH_LIBRARY_FRAGMENT(qinfer, m) {
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("gemv_silu_and_mul(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) {
  m.impl("gemv", &qinfer::gemv);
  m.impl("gemv_silu_and_mul", &qinfer::gemv_silu_and_mul);
}
