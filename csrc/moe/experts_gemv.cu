// qinfer._C fused experts for a few tokens (decode): ops.fused_experts as two GEMV launches, with
// no alignment by expert and no separate sum over the k choices.
//
// At one token Qwen3-30B-A3B's MoE op reads 8 experts' 9.4 MB each; the grouped GEMM of
// fused_moe_triton.py pads that one row to a 16-row tile, runs 96 programs on 132 SMs and needs
// four launches (align, gate/up, down, sum): 37 us against a 17.8 us floor (bench/NOTES.md).
// Here a slot (token t's j-th choice, slot t * k + j) indexes its expert's weights directly:
//   moe_gate_up_gemv: inter[slot, r] = silu(x_t . gate_e[r]) * (x_t . up_e[r]), one warp per
//       (slot, r), the gate and up rows streamed together (gemv.cuh's warp_dots), both rounded to
//       16 bits before the silu as gemv_silu_and_mul does;
//   moe_down_gemv: out[t, h] = sum_j w[t, j] * (inter[t * k + j] . down_e_j[h]), one warp per
//       (t, h) streaming all k down rows at once (k * I / 8 vectors, kDownUnroll in flight per lane),
//       summed in float32 and rounded once, as the torch reference does.
// Each slot reads its expert's weights whether or not another token chose it too, and the grouped
// GEMM, which reads each chosen expert once, streams near copy bandwidth once its tiles fill:
// ops.fused_experts ("cuda", qinfer/ops/compiled.py) routes here while T * k <= E / 8, where these
// win on the H200 (bench/bench_moe.py's kernel part, config "gemv"; bench/NOTES.md).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../activation.cuh"
#include "../gemv.cuh"
#include "../pdl.cuh"

namespace qinfer {
namespace {

using namespace gemv_impl;

constexpr int kRowsPerBlock = kGemvThreads / kWarpSize;
constexpr int kMaxTopK = 64;
// The down GEMV's 16-byte loads in flight per lane: at one token its grid is H / 8 blocks (256 for
// Qwen3-30B-A3B, under two per SM), so each warp keeps twice gemv.cuh's kUnroll in flight, and its
// launch bounds ask for two blocks per SM (<= 128 registers) so that one wave holds the grid.
constexpr int kDownUnroll = 8;

// grid (ceil(I / kRowsPerBlock), T * k): block row r of slot blockIdx.y.
template <typename T>
__global__ void __launch_bounds__(kGemvThreads, 1)
moe_gate_up_kernel(T* __restrict__ inter_out, const T* __restrict__ x, const T* __restrict__ w13,
                   const int* __restrict__ topk_ids, int top_k, int inter, int hidden) {
  pdl_launch_dependents();
  pdl_wait();  // x and topk_ids are the previous kernels' (pdl.cuh)
  const int slot = blockIdx.y;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= inter) return;
  const int row_vecs = hidden / kVecElems;
  const int64_t expert = topk_ids[slot];
  const uint4* w_vecs = reinterpret_cast<const uint4*>(w13) + expert * 2 * inter * row_vecs;
  const uint4* w_rows[2] = {w_vecs + static_cast<int64_t>(row) * row_vecs,
                            w_vecs + static_cast<int64_t>(inter + row) * row_vecs};
  const uint4* x_vecs = reinterpret_cast<const uint4*>(x) + static_cast<int64_t>(slot / top_k) * row_vecs;
  float sums[2];
  warp_dots<T, 2>(w_rows, x_vecs, row_vecs, lane, sums);
  if (lane == 0) {
    const float gate = to_float(to_t<T>(sums[0])), up = to_float(to_t<T>(sums[1]));
    inter_out[static_cast<int64_t>(slot) * inter + row] = to_t<T>(silu_mul(gate, up));
  }
}

// grid (ceil(H / kRowsPerBlock), T): output h = block row of token blockIdx.y.
template <typename T>
__global__ void __launch_bounds__(kGemvThreads, 2)
moe_down_kernel(T* __restrict__ out, const T* __restrict__ inter_in, const T* __restrict__ w2,
                const float* __restrict__ topk_weights, const int* __restrict__ topk_ids, int top_k,
                int hidden, int inter) {
  __shared__ int64_t expert_rows[kMaxTopK];   // choice j's first down row (of expert e_j), in vectors
  __shared__ float weights[kMaxTopK];
  pdl_launch_dependents();
  pdl_wait();
  const int tok = blockIdx.y;
  const int row_vecs = inter / kVecElems;
  for (int j = threadIdx.x; j < top_k; j += blockDim.x) {
    expert_rows[j] = static_cast<int64_t>(topk_ids[tok * top_k + j]) * hidden * row_vecs;
    weights[j] = topk_weights[tok * top_k + j];
  }
  __syncthreads();
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= hidden) return;
  const uint4* w_vecs = reinterpret_cast<const uint4*>(w2) + static_cast<int64_t>(row) * row_vecs;
  const uint4* x_vecs = reinterpret_cast<const uint4*>(inter_in) + static_cast<int64_t>(tok) * top_k * row_vecs;
  // The k rows laid end to end: vector i is choice i / row_vecs, column i % row_vecs; inter's k
  // rows of this token are already end to end.
  const int total = top_k * row_vecs;
  float sums[kDownUnroll] = {};
  for (int base = lane; base < total; base += kDownUnroll * kWarpSize) {
    uint4 wv[kDownUnroll], xv[kDownUnroll];
    float scale[kDownUnroll];
#pragma unroll
    for (int u = 0; u < kDownUnroll; ++u) {
      const int i = base + u * kWarpSize;
      scale[u] = 0.f;
      wv[u] = xv[u] = make_uint4(0, 0, 0, 0);
      if (i < total) {
        const int j = i / row_vecs;
        wv[u] = load_streaming(w_vecs + expert_rows[j] + (i - j * row_vecs));
        xv[u] = __ldg(x_vecs + i);
        scale[u] = weights[j];
      }
    }
#pragma unroll
    for (int u = 0; u < kDownUnroll; ++u) sums[u] = fmaf(scale[u], dot8<T>(wv[u], xv[u], 0.f), sums[u]);
  }
  float sum = 0.f;
#pragma unroll
  for (int u = 0; u < kDownUnroll; ++u) sum += sums[u];
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  if (lane == 0) out[static_cast<int64_t>(tok) * hidden + row] = to_t<T>(sum);
}

// A contiguous, 16-byte aligned CUDA operand of the activations' 16-bit dtype.
void check_operand(const at::Tensor& t, at::ScalarType dtype, const char* what, const char* op) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == dtype,
              op, ": ", what, " must be a contiguous CUDA tensor of the activations' dtype");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", what, " 16-byte aligned");
}

void check_ids(const at::Tensor& topk_ids, int64_t num_tokens, const char* op) {
  TORCH_CHECK(topk_ids.is_cuda() && topk_ids.is_contiguous() && topk_ids.scalar_type() == at::kInt &&
              topk_ids.dim() == 2 && topk_ids.size(0) == num_tokens && topk_ids.size(1) <= kMaxTopK,
              op, ": topk_ids [T, k <= 64] int32, contiguous");
}

}  // namespace

// x [T, H], w13 [E, 2I, H] (gate | up rows), topk_ids [T, k] int32 -> inter [T * k, I].
at::Tensor moe_gate_up_gemv(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& topk_ids) {
  const char* op = "moe_gate_up_gemv";
  TORCH_CHECK(x.dim() == 2 && w13.dim() == 3 && w13.size(2) == x.size(1) && w13.size(1) % 2 == 0,
              op, ": x [T, H] and w13 [E, 2I, H]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op, ": bf16 or fp16");
  TORCH_CHECK(x.size(1) % kVecElems == 0, op, ": H a multiple of 8");
  check_operand(x, x.scalar_type(), "x", op);
  check_operand(w13, x.scalar_type(), "w13", op);
  check_ids(topk_ids, x.size(0), op);
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const int top_k = topk_ids.size(1), inter = w13.size(1) / 2, hidden = x.size(1);
  at::Tensor out = at::empty({x.size(0) * top_k, inter}, x.options());
  if (out.numel() == 0) return out;
  const dim3 grid((inter + kRowsPerBlock - 1) / kRowsPerBlock, out.size(0));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_dependent(moe_gate_up_kernel<T>, grid, kGemvThreads, stream, reinterpret_cast<T*>(out.data_ptr()),
                     reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(w13.data_ptr()),
                     topk_ids.data_ptr<int>(), top_k, inter, hidden);
  };
  if (x.scalar_type() == at::kBFloat16) launch(static_cast<__nv_bfloat16*>(nullptr));
  else launch(static_cast<__half*>(nullptr));
  return out;
}

// inter [T * k, I], w2 [E, H, I], topk_weights [T, k] float32, topk_ids [T, k] int32 -> [T, H].
at::Tensor moe_down_gemv(const at::Tensor& inter, const at::Tensor& w2, const at::Tensor& topk_weights,
                         const at::Tensor& topk_ids) {
  const char* op = "moe_down_gemv";
  TORCH_CHECK(inter.dim() == 2 && w2.dim() == 3 && w2.size(2) == inter.size(1), op, ": inter [T*k, I] and w2 [E, H, I]");
  TORCH_CHECK(inter.scalar_type() == at::kBFloat16 || inter.scalar_type() == at::kHalf, op, ": bf16 or fp16");
  TORCH_CHECK(inter.size(1) % kVecElems == 0, op, ": I a multiple of 8");
  check_operand(inter, inter.scalar_type(), "inter", op);
  check_operand(w2, inter.scalar_type(), "w2", op);
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.size(1) > 0 && inter.size(0) % topk_ids.size(1) == 0, op,
              ": inter has T * k rows");
  const int64_t num_tokens = inter.size(0) / topk_ids.size(1);
  check_ids(topk_ids, num_tokens, op);
  TORCH_CHECK(topk_weights.is_cuda() && topk_weights.is_contiguous() && topk_weights.scalar_type() == at::kFloat &&
              topk_weights.sizes() == topk_ids.sizes(), op, ": topk_weights [T, k] float32, contiguous");
  const at::cuda::OptionalCUDAGuard guard(inter.device());
  const int top_k = topk_ids.size(1), hidden = w2.size(1), inter_size = inter.size(1);
  at::Tensor out = at::empty({num_tokens, hidden}, inter.options());
  if (out.numel() == 0) return out;
  const dim3 grid((hidden + kRowsPerBlock - 1) / kRowsPerBlock, num_tokens);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_dependent(moe_down_kernel<T>, grid, kGemvThreads, stream, reinterpret_cast<T*>(out.data_ptr()),
                     reinterpret_cast<const T*>(inter.data_ptr()), reinterpret_cast<const T*>(w2.data_ptr()),
                     topk_weights.data_ptr<float>(), topk_ids.data_ptr<int>(), top_k, hidden, inter_size);
  };
  if (inter.scalar_type() == at::kBFloat16) launch(static_cast<__nv_bfloat16*>(nullptr));
  else launch(static_cast<__half*>(nullptr));
  return out;
}

}  // namespace qinfer

TORCH_LIBRARY_FRAGMENT(qinfer, m) {
  m.def("moe_gate_up_gemv(Tensor x, Tensor w13, Tensor topk_ids) -> Tensor");
  m.def("moe_down_gemv(Tensor inter, Tensor w2, Tensor topk_weights, Tensor topk_ids) -> Tensor");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) {
  m.impl("moe_gate_up_gemv", &qinfer::moe_gate_up_gemv);
  m.impl("moe_down_gemv", &qinfer::moe_down_gemv);
}
