// The MLP's gated activation, shared by ops.cu's silu_and_mul and gemv.cu's fused GEMV so the two
// paths round alike (the fused one must give the same bits as gemv then silu_and_mul).
#pragma once

namespace qinfer {

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + __expf(-g)) * u; }

}  // namespace qinfer
