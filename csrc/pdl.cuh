// Programmatic dependent launch (Hopper, sm_90): a kernel launched with launch_dependent() may
// start while the kernel before it on the stream still runs. Until pdl_wait() returns (the
// previous kernel has finished and its writes are visible) it must neither read what that kernel
// writes nor write anything: the kernels here wait first thing. A kernel calls
// pdl_launch_dependents() to let the next such kernel launch once all of its own blocks have
// started (never earlier: no block of it can be starved). Under CUDA-graph capture the launch
// becomes a programmatic edge. At one token a decode step is ~300 kernels of a few microseconds:
// this hides each one's launch behind the kernel before (Llama-3.1-8B batch-1 decode on the
// H200: 4.34 -> 4.24 ms/token). Pulling the GEMV's weights into L2 before the wait was tried and
// cost more than it hid (5.02 ms/token; bench/NOTES.md).
// QINFER_PDL=0 launches every kernel plainly (A/B timing; a driver that mishandles it).
#pragma once

#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>

#include <cstdlib>

namespace qinfer {

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" :::); }

inline bool pdl_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("QINFER_PDL");
    return value == nullptr || value[0] != '0';
  }();
  return enabled;
}

// kernel<<<grid, block, 0, stream>>>(args...), as a programmatic dependent of the previous kernel.
template <typename... Params, typename... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
  config.attrs = &attribute;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace qinfer
