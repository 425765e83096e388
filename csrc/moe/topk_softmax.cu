// qinfer._C top-k softmax router: twin of qinfer/ops/moe_reference.py topk_softmax.
//
// One warp per token row: softmax over the experts in float32 (max and sum by warp shuffles),
// then top_k rounds of a warp arg-max over the row's probabilities, kept in shared memory; a
// chosen expert is struck out (-1) for the next round. Ties go to the lower expert id.
// Renormalising divides the chosen probabilities by their sum, as Hugging Face's routers do.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace qinfer {
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 4;  // one warp each
constexpr int kMaxTopK = 64;

// (value, index) of the larger of two candidates; equal values: the lower index. NaN ranks above
// every number, as in torch.topk: a row of NaN logits (an overflow upstream, an uninitialised input)
// still yields k distinct expert ids in range, never the out-of-range start index, which the
// experts' kernels would follow out of their weights.
__device__ __forceinline__ void keep_better(float& value, int& index, float other_value, int other_index) {
  const bool other_nan = isnan(other_value), nan = isnan(value);
  const bool better = other_nan != nan ? other_nan
                                       : (other_nan || other_value == value ? other_index < index : other_value > value);
  if (better) {
    value = other_value;
    index = other_index;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowsPerBlock * kWarpSize)
topk_softmax_kernel(const T* __restrict__ gating, float* __restrict__ weights, int* __restrict__ ids,
                    int64_t num_rows, int num_experts, int top_k, bool renormalize) {
  extern __shared__ float probs_smem[];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= num_rows) return;
  float* probs = probs_smem + warp * num_experts;
  const T* logits = gating + row * num_experts;

  float row_max = -INFINITY;
  for (int e = lane; e < num_experts; e += kWarpSize) row_max = fmaxf(row_max, static_cast<float>(logits[e]));
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, offset));
  float sum = 0.f;
  for (int e = lane; e < num_experts; e += kWarpSize) {
    const float p = expf(static_cast<float>(logits[e]) - row_max);
    probs[e] = p;
    sum += p;
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  __syncwarp();

  float chosen_sum = 0.f;
  float chosen = 0.f;  // lane j keeps choice j's probability (top_k <= kMaxTopK: two per lane at most)
  float chosen_hi = 0.f;
  for (int j = 0; j < top_k; ++j) {
    float best = -1.f;
    int best_id = num_experts;
    for (int e = lane; e < num_experts; e += kWarpSize) keep_better(best, best_id, probs[e], e);
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffff, best, offset);
      const int other_id = __shfl_xor_sync(0xffffffff, best_id, offset);
      keep_better(best, best_id, other, other_id);
    }
    const float p = best / sum;
    chosen_sum += p;
    if (lane == j % kWarpSize) {
      if (j < kWarpSize) chosen = p; else chosen_hi = p;
      ids[row * top_k + j] = best_id;
      probs[best_id] = -1.f;  // struck out: probabilities are >= 0
    }
    __syncwarp();
  }
  const float scale = renormalize ? 1.f / chosen_sum : 1.f;
  if (lane < top_k) weights[row * top_k + lane] = chosen * scale;
  if (lane + kWarpSize < top_k) weights[row * top_k + lane + kWarpSize] = chosen_hi * scale;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_softmax(const at::Tensor& gating, int64_t top_k, bool renormalize) {
  TORCH_CHECK(gating.is_cuda() && gating.dim() == 2 && gating.is_contiguous(),
              "topk_softmax: gating must be a contiguous CUDA tensor [tokens, experts]");
  const int64_t num_rows = gating.size(0), num_experts = gating.size(1);
  TORCH_CHECK(top_k >= 1 && top_k <= num_experts && top_k <= kMaxTopK,
              "topk_softmax: top_k must be in [1, min(num_experts, 64)], got ", top_k);
  const c10::cuda::CUDAGuard guard(gating.device());
  auto weights = at::empty({num_rows, top_k}, gating.options().dtype(at::kFloat));
  auto ids = at::empty({num_rows, top_k}, gating.options().dtype(at::kInt));
  if (num_rows == 0) return {weights, ids};
  const size_t smem = size_t(kRowsPerBlock) * num_experts * sizeof(float);
  TORCH_CHECK(smem <= 48 * 1024, "topk_softmax: at most 3072 experts");
  const dim3 grid((num_rows + kRowsPerBlock - 1) / kRowsPerBlock);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gating.scalar_type(), "topk_softmax", [&] {
    topk_softmax_kernel<scalar_t><<<grid, kRowsPerBlock * kWarpSize, smem, stream>>>(
        gating.data_ptr<scalar_t>(), weights.data_ptr<float>(), ids.data_ptr<int>(), num_rows,
        int(num_experts), int(top_k), renormalize);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {weights, ids};
}

}  // namespace qinfer

TORCH_LIBRARY_FRAGMENT(qinfer, m) {
  m.def("topk_softmax(Tensor gating, int top_k, bool renormalize) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) { m.impl("topk_softmax", &qinfer::topk_softmax); }
