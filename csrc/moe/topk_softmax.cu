// qinfer._C top-k softmax router: twin of qinfer/ops/moe_reference.py topk_softmax.
//
// One warp per token row: softmax over the experts in float32 (max and sum by warp shuffles),
// then top_k rounds of a warp arg-max over the row's probabilities, kept in registers; a chosen
// expert is struck out (-1) for the next round. Ties go to the lower expert id.
// Renormalising divides the chosen probabilities by their sum, as Hugging Face's routers do.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../pdl.cuh"

namespace qinfer {
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 4;  // one warp each
constexpr int kMaxTopK = 64;
constexpr int kMaxExperts = 3072;  // past 256 the registers spill to local memory: correct, slower

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

// kPerLane: the experts each lane holds in registers (lane + i * 32, i < kPerLane), num_experts
// <= 32 * kPerLane. The top_k rounds then read and strike registers, not shared memory: at one
// token the router's launch is on the decode step's critical path (bench/NOTES.md, issue 16).
template <typename T, int kPerLane>
__global__ void __launch_bounds__(kRowsPerBlock * kWarpSize)
topk_softmax_kernel(const T* __restrict__ gating, float* __restrict__ weights, int* __restrict__ ids,
                    int64_t num_rows, int num_experts, int top_k, bool renormalize) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh): gating is the router GEMV's output
  pdl_launch_dependents();
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= num_rows) return;
  const T* logits = gating + row * num_experts;

  float probs[kPerLane];
  float row_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + i * kWarpSize;
    probs[i] = e < num_experts ? static_cast<float>(logits[e]) : -INFINITY;
    row_max = fmaxf(row_max, probs[i]);
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, offset));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    probs[i] = lane + i * kWarpSize < num_experts ? expf(probs[i] - row_max) : -1.f;  // padding: never chosen
    if (lane + i * kWarpSize < num_experts) sum += probs[i];
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);

  float chosen_sum = 0.f;
  float chosen = 0.f;  // lane j keeps choice j's probability (top_k <= kMaxTopK: two per lane at most)
  float chosen_hi = 0.f;
  for (int j = 0; j < top_k; ++j) {
    float best = -1.f;
    int best_id = num_experts;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + i * kWarpSize < num_experts) keep_better(best, best_id, probs[i], lane + i * kWarpSize);
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
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)  // struck out (probabilities are >= 0); a constant index keeps it in registers
      if (lane + i * kWarpSize == best_id) probs[i] = -1.f;
  }
  const float scale = renormalize ? 1.f / chosen_sum : 1.f;
  if (lane < top_k) weights[row * top_k + lane] = chosen * scale;
  if (lane + kWarpSize < top_k) weights[row * top_k + lane + kWarpSize] = chosen_hi * scale;
}

template <typename T, int kPerLane>
void launch_topk_softmax(const at::Tensor& gating, at::Tensor& weights, at::Tensor& ids, int top_k, bool renormalize) {
  const int64_t num_rows = gating.size(0);
  const dim3 grid((num_rows + kRowsPerBlock - 1) / kRowsPerBlock);
  launch_dependent(topk_softmax_kernel<T, kPerLane>, grid, kRowsPerBlock * kWarpSize,
                   c10::cuda::getCurrentCUDAStream(), gating.data_ptr<T>(), weights.data_ptr<float>(),
                   ids.data_ptr<int>(), num_rows, int(gating.size(1)), top_k, renormalize);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_softmax(const at::Tensor& gating, int64_t top_k, bool renormalize) {
  TORCH_CHECK(gating.is_cuda() && gating.dim() == 2 && gating.is_contiguous(),
              "topk_softmax: gating must be a contiguous CUDA tensor [tokens, experts]");
  const int64_t num_rows = gating.size(0), num_experts = gating.size(1);
  TORCH_CHECK(top_k >= 1 && top_k <= num_experts && top_k <= kMaxTopK,
              "topk_softmax: top_k must be in [1, min(num_experts, 64)], got ", top_k);
  TORCH_CHECK(num_experts <= kMaxExperts, "topk_softmax: at most ", kMaxExperts, " experts, got ", num_experts);
  const c10::cuda::CUDAGuard guard(gating.device());
  auto weights = at::empty({num_rows, top_k}, gating.options().dtype(at::kFloat));
  auto ids = at::empty({num_rows, top_k}, gating.options().dtype(at::kInt));
  if (num_rows == 0) return {weights, ids};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gating.scalar_type(), "topk_softmax", [&] {
    // registers per lane by the expert count: Mixtral's 8 and Qwen3-MoE's 128 take 1 and 4
    if (num_experts <= 32) launch_topk_softmax<scalar_t, 1>(gating, weights, ids, int(top_k), renormalize);
    else if (num_experts <= 64) launch_topk_softmax<scalar_t, 2>(gating, weights, ids, int(top_k), renormalize);
    else if (num_experts <= 128) launch_topk_softmax<scalar_t, 4>(gating, weights, ids, int(top_k), renormalize);
    else if (num_experts <= 256) launch_topk_softmax<scalar_t, 8>(gating, weights, ids, int(top_k), renormalize);
    else launch_topk_softmax<scalar_t, kMaxExperts / kWarpSize>(gating, weights, ids, int(top_k), renormalize);
  });  // launch_dependent checks the launch
  return {weights, ids};
}

}  // namespace qinfer

TORCH_LIBRARY_FRAGMENT(qinfer, m) {
  m.def("topk_softmax(Tensor gating, int top_k, bool renormalize) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) { m.impl("topk_softmax", &qinfer::topk_softmax); }
