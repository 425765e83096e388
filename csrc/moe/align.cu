// qinfer._C moe_align_block_size: twin of qinfer/ops/moe_reference.py moe_align_block_size.
//
// Slots (token t's k-th choice is slot t * top_k + k) grouped by expert, each group padded to a
// whole number of blocks with the sentinel num_slots, so the fused MoE kernel's row blocks each
// belong to one expert. Count per expert, prefix-sum the padded counts (one warp), fill the
// padding, then scatter every slot to its expert's next free place (atomic cursors: the order
// inside a group is unspecified, which the kernel does not care about). Up to kSpreadMinSlots
// slots one thread block does it all (shared-memory counts); from there three launches spread the
// counting and the scatter over thread blocks of kSlotsPerBlock slots. Output sizes depend on the
// input's sizes only, so the op can be captured in a CUDA graph.
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
// Slots a thread loads before it applies their atomics: in the one-block kernel each thread's loop of
// dependent global loads was the op's time (one load in flight a thread); kIlp in flight hide it.
constexpr int kIlp = 8;
// From this many slots on, the work spreads over thread blocks of kSpreadThreads, kSlotsPerBlock
// slots each (count, scan, scatter: three launches): one block streamed Qwen3-30B-A3B's 32,768
// slots at 4,096 tokens through one SM in 42 us on the H200. Below it one launch's latency wins.
constexpr int kSpreadMinSlots = 8192;
constexpr int kSpreadThreads = 256;
constexpr int kSlotsPerBlock = kSpreadThreads * 4;

__device__ __forceinline__ int padded(int count, int block_size) {
  return (count + block_size - 1) / block_size * block_size;
}

// f(slot, expert) for the slots [begin, end), kIlp slots of a thread loaded before any is handled.
template <typename F>
__device__ __forceinline__ void for_each_slot(const int* __restrict__ topk_ids, int begin, int end, F f) {
  for (int base = begin + threadIdx.x; base < end; base += kIlp * blockDim.x) {
    int expert[kIlp];
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int i = base + j * blockDim.x;
      expert[j] = i < end ? topk_ids[i] : -1;
    }
#pragma unroll
    for (int j = 0; j < kIlp; ++j)
      if (expert[j] >= 0) f(base + j * blockDim.x, expert[j]);
  }
}

// Run by warp 0: starts[e] = the padded counts of the experts before e, *total = all of them. Each
// lane sums a run of experts, then a shuffle scan over the lanes (E is 8 .. 4096).
__device__ void scan_padded_counts(const int* counts, int* starts, int num_experts, int block_size, int* total) {
  const int lane = threadIdx.x;
  const int per_lane = (num_experts + kWarpSize - 1) / kWarpSize;
  const int first = lane * per_lane, last = min(first + per_lane, num_experts);
  int run = 0;
  for (int e = first; e < last; ++e) run += padded(counts[e], block_size);
  int inclusive = run;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  int start = inclusive - run;
  for (int e = first; e < last; ++e) {
    starts[e] = start;
    start += padded(counts[e], block_size);
  }
  if (lane == kWarpSize - 1) *total = inclusive;
}

// Every expert's blocks named in expert_ids, -1 past the last (after this block's __syncthreads).
__device__ void name_blocks(const int* counts, const int* starts, int num_experts, int block_size,
                            int* expert_ids, int num_blocks) {
  for (int b = threadIdx.x; b < num_blocks; b += blockDim.x) expert_ids[b] = -1;
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int first = starts[e] / block_size;
    for (int b = first; b < first + padded(counts[e], block_size) / block_size; ++b) expert_ids[b] = e;
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
  for_each_slot(topk_ids, 0, num_slots, [&](int, int e) { atomicAdd(&counts[e], 1); });
  __syncthreads();
  if (tid < kWarpSize) scan_padded_counts(counts, starts, num_experts, block_size, num_post_padded);
  for (int i = tid; i < num_padded; i += blockDim.x) sorted_ids[i] = num_slots;
  __syncthreads();  // the padding is written before any slot lands on it; starts are scanned
  name_blocks(counts, starts, num_experts, block_size, expert_ids, num_padded / block_size);
  for_each_slot(topk_ids, 0, num_slots, [&](int i, int e) { sorted_ids[starts[e] + atomicAdd(&cursors[e], 1)] = i; });
}

// The spread path, pass 1: each block adds its slice's counts per expert to the global counts
// (zeroed), and writes its share of the padding sentinel.
__global__ void __launch_bounds__(kSpreadThreads)
count_slots_kernel(const int* __restrict__ topk_ids, int num_slots, int num_experts, int* __restrict__ counts,
                   int* __restrict__ sorted_ids, int num_padded) {
  extern __shared__ int local[];         // [E]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  const int begin = blockIdx.x * kSlotsPerBlock;
  for_each_slot(topk_ids, begin, min(begin + kSlotsPerBlock, num_slots), [&](int, int e) { atomicAdd(&local[e], 1); });
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
    if (local[e]) atomicAdd(&counts[e], local[e]);
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < num_padded; i += gridDim.x * blockDim.x)
    sorted_ids[i] = num_slots;
}

// Pass 2, one block: the starts, the blocks' experts and the padded total from the global counts.
__global__ void __launch_bounds__(kAlignThreads)
scan_counts_kernel(const int* __restrict__ counts, int* __restrict__ starts, int num_experts, int block_size,
                   int* __restrict__ expert_ids, int num_blocks, int* __restrict__ num_post_padded) {
  if (threadIdx.x < kWarpSize) scan_padded_counts(counts, starts, num_experts, block_size, num_post_padded);
  __syncthreads();
  name_blocks(counts, starts, num_experts, block_size, expert_ids, num_blocks);
}

// Pass 3: each block reserves a run of places per expert for its slice's slots (one global atomic
// per block and expert), then places them (shared atomics).
__global__ void __launch_bounds__(kSpreadThreads)
scatter_slots_kernel(const int* __restrict__ topk_ids, int num_slots, int num_experts,
                     const int* __restrict__ starts, int* __restrict__ cursors, int* __restrict__ sorted_ids) {
  extern __shared__ int smem[];
  int* local = smem;                     // [E] this slice's slots per expert, then placed so far
  int* base = smem + num_experts;        // [E] where this slice's run of each expert begins
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  const int begin = blockIdx.x * kSlotsPerBlock, end = min(begin + kSlotsPerBlock, num_slots);
  for_each_slot(topk_ids, begin, end, [&](int, int e) { atomicAdd(&local[e], 1); });
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    base[e] = local[e] ? starts[e] + atomicAdd(&cursors[e], local[e]) : 0;
    local[e] = 0;
  }
  __syncthreads();
  for_each_slot(topk_ids, begin, end, [&](int i, int e) { sorted_ids[base[e] + atomicAdd(&local[e], 1)] = i; });
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
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int e = int(num_experts), slots = int(num_slots), padded_slots = int(num_padded);
  if (num_slots < kSpreadMinSlots) {
    moe_align_kernel<<<1, kAlignThreads, 3 * e * sizeof(int), stream>>>(
        topk_ids.data_ptr<int>(), slots, e, int(block_size), sorted_ids.data_ptr<int>(), padded_slots,
        expert_ids.data_ptr<int>(), num_post_padded.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    auto scratch = at::zeros({3 * num_experts}, options);  // counts, starts, cursors
    int* counts = scratch.data_ptr<int>();
    const int blocks = int((num_slots + kSlotsPerBlock - 1) / kSlotsPerBlock);
    count_slots_kernel<<<blocks, kSpreadThreads, e * sizeof(int), stream>>>(
        topk_ids.data_ptr<int>(), slots, e, counts, sorted_ids.data_ptr<int>(), padded_slots);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scan_counts_kernel<<<1, kAlignThreads, 0, stream>>>(counts, counts + e, e, int(block_size),
                                                        expert_ids.data_ptr<int>(), int(expert_ids.numel()),
                                                        num_post_padded.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scatter_slots_kernel<<<blocks, kSpreadThreads, 2 * e * sizeof(int), stream>>>(
        topk_ids.data_ptr<int>(), slots, e, counts + e, counts + 2 * e, sorted_ids.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {sorted_ids, expert_ids, num_post_padded};
}

}  // namespace qinfer

TORCH_LIBRARY_FRAGMENT(qinfer, m) {
  m.def("moe_align_block_size(Tensor topk_ids, int num_experts, int block_size) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qinfer, CUDA, m) { m.impl("moe_align_block_size", &qinfer::moe_align_block_size); }
