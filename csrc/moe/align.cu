// qinfer._C moe_align_block_size: twin of qinfer/ops/moe_reference.py moe_align_block_size.
//
// Slots (token t's k-th choice is slot t * top_k + k) grouped by expert, each group padded to a
// whole number of blocks with the sentinel num_slots, so the fused MoE kernel's row blocks each
// belong to one expert. One thread block does it all (the slots of a step number at most a few
// tens of thousands): count per expert in shared memory, prefix-sum the padded counts (one warp), fill the
// padding, then scatter every slot to its expert's next free place (atomic cursors: the order
// inside a group is unspecified, which the kernel does not care about). Output sizes depend on
// the input's sizes only, so the op can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace qinfer {
namespace {

constexpr int kAlignThreads = 1024;
constexpr int kWarpSize = 32;
// Slots a thread loads before it applies their atomics: one thread block does all the work, so
// each thread's loop of dependent global loads was the op's time (56 us for Qwen3-30B-A3B's
// 32,768 slots at 4,096 tokens on the H200, one load in flight a thread); kIlp in flight hide it.
constexpr int kIlp = 8;

// f(slot, expert) for every slot, kIlp slots of a thread loaded before any is handled.
template <typename F>
__device__ __forceinline__ void for_each_slot(const int* __restrict__ topk_ids, int num_slots, F f) {
  for (int base = threadIdx.x; base < num_slots; base += kIlp * blockDim.x) {
    int expert[kIlp];
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int i = base + j * blockDim.x;
      expert[j] = i < num_slots ? topk_ids[i] : -1;
    }
#pragma unroll
    for (int j = 0; j < kIlp; ++j)
      if (expert[j] >= 0) f(base + j * blockDim.x, expert[j]);
  }
}

__global__ void __launch_bounds__(kAlignThreads)
moe_align_kernel(const int* __restrict__ topk_ids, int num_slots, int num_experts, int block_size,
                 int* __restrict__ sorted_ids, int num_padded, int* __restrict__ expert_ids,
                 int* __restrict__ num_post_padded) {
  extern __shared__ int smem[];
  int* counts = smem;                    // [E] slots per expert
  int* starts = smem + num_experts;      // [E] first padded position of each expert's group
  int* cursors = smem + 2 * num_experts; // [E] slots placed so far
  const int tid = threadIdx.x;
  for (int e = tid; e < num_experts; e += blockDim.x) counts[e] = cursors[e] = 0;
  __syncthreads();
  for_each_slot(topk_ids, num_slots, [&](int, int e) { atomicAdd(&counts[e], 1); });
  __syncthreads();
  if (tid < kWarpSize) {  // warp 0 scans the padded counts: each lane a run of experts, then a shuffle scan
    const int per_lane = (num_experts + kWarpSize - 1) / kWarpSize;
    const int first = tid * per_lane, last = min(first + per_lane, num_experts);
    int run = 0;
    for (int e = first; e < last; ++e) run += (counts[e] + block_size - 1) / block_size * block_size;
    int inclusive = run;
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
      const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (tid >= offset) inclusive += other;
    }
    int total = inclusive - run;
    for (int e = first; e < last; ++e) {
      starts[e] = total;
      total += (counts[e] + block_size - 1) / block_size * block_size;
    }
    if (tid == kWarpSize - 1) *num_post_padded = inclusive;
  }
  for (int i = tid; i < num_padded; i += blockDim.x) sorted_ids[i] = num_slots;
  for (int b = tid; b < num_padded / block_size; b += blockDim.x) expert_ids[b] = -1;
  __syncthreads();  // the padding is written before any slot or block expert lands on it
  for (int e = tid; e < num_experts; e += blockDim.x) {
    const int first = starts[e] / block_size;
    const int end = first + (counts[e] + block_size - 1) / block_size;
    for (int b = first; b < end; ++b) expert_ids[b] = e;
  }
  for_each_slot(topk_ids, num_slots, [&](int i, int e) { sorted_ids[starts[e] + atomicAdd(&cursors[e], 1)] = i; });
}

}  // namespace

// Same length as moe_reference.max_padded_slots.
int64_t max_padded_slots(int64_t num_slots, int64_t num_experts, int64_t block_size) {
  const int64_t padded = num_slots + std::min(num_slots, num_experts) * (block_size - 1);
  return (padded + block_size - 1) / block_size * block_size;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_align_block_size(const at::Tensor& topk_ids,
                                                                    int64_t num_experts, int64_t block_size) {
  TORCH_CHECK(topk_ids.is_cuda() && topk_ids.scalar_type() == at::kInt && topk_ids.is_contiguous(),
              "moe_align_block_size: topk_ids must be a contiguous int32 CUDA tensor");
  TORCH_CHECK(num_experts >= 1 && num_experts <= 4096 && block_size >= 1,
              "moe_align_block_size: need 1 <= num_experts <= 4096 and block_size >= 1");
  const c10::cuda::CUDAGuard guard(topk_ids.device());
  const int64_t num_slots = topk_ids.numel();
  const int64_t num_padded = max_padded_slots(num_slots, num_experts, block_size);
  TORCH_CHECK(num_padded < (int64_t(1) << 31), "moe_align_block_size: too many slots");
  auto options = topk_ids.options();
  auto sorted_ids = at::empty({num_padded}, options);
  auto expert_ids = at::empty({num_padded / block_size}, options);
  auto num_post_padded = at::empty({1}, options);
  const size_t smem = 3 * size_t(num_experts) * sizeof(int);
  moe_align_kernel<<<1, kAlignThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      topk_ids.data_ptr<int>(), int(num_slots), int(num_experts), int(block_size), sorted_ids.data_ptr<int>(),
      int(num_padded), expert_ids.data_ptr<int>(), num_post_padded.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sorted_ids, expert_ids, num_post_padded};
}

}  // namespace qinfer

TORCH_LIBRARY_FRAGMENT(qinfer, m) {
  m.def("moe_align_block_size(Tensor topk_ids, int num_experts, int block_size) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) { m.impl("moe_align_block_size", &qinfer::moe_align_block_size); }
