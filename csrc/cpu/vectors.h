// Float vectors for the CPU kernels of csrc/cpu, as wide as the target's registers (GCC / Clang
// vector extensions): 16 floats with AVX-512, 8 with AVX / AVX2, 4 otherwise (SSE, NEON). A wider
// vector than the target has was measured 2x slower on AVX2 (its reductions left the registers).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#if defined(__AVX512F__)
#define QINFER_VEC_FLOATS 16
#elif defined(__AVX__)
#define QINFER_VEC_FLOATS 8
#else
#define QINFER_VEC_FLOATS 4
#endif

constexpr int64_t kVecFloats = QINFER_VEC_FLOATS;
typedef float FloatVec __attribute__((vector_size(QINFER_VEC_FLOATS * 4)));
typedef uint16_t HalfVec __attribute__((vector_size(QINFER_VEC_FLOATS * 2)));
typedef uint32_t WordVec __attribute__((vector_size(QINFER_VEC_FLOATS * 4)));
typedef int32_t IntVec __attribute__((vector_size(QINFER_VEC_FLOATS * 4)));
typedef float Floats4 __attribute__((vector_size(16)));

inline FloatVec load_vec(const float* p) {
  FloatVec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline FloatVec load_vec(const c10::BFloat16* p) {   // bfloat16 -> float: the bits, 16 places up
  HalfVec h;
  __builtin_memcpy(&h, p, sizeof h);
  const WordVec w = __builtin_convertvector(h, WordVec) << 16;
  FloatVec v;
  __builtin_memcpy(&v, &w, sizeof v);
  return v;
}

// The sum of the lanes, halving the vector in registers down to 4 lanes, then pairwise.
inline float sum_lanes(FloatVec v) {
#if QINFER_VEC_FLOATS == 16
  typedef float Floats8 __attribute__((vector_size(32)));
  const Floats8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                    __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Floats4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
#elif QINFER_VEC_FLOATS == 8
  const Floats4 b = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  const Floats4 b = v;
#endif
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// sum of x[i]^2 over n elements, in float32.
template <typename T>
inline float sum_of_squares(const T* x, int64_t n) {
  FloatVec acc = {};
  int64_t i = 0;
  for (; i + kVecFloats <= n; i += kVecFloats) {
    const FloatVec v = load_vec(x + i);
    acc += v * v;
  }
  float sum = sum_lanes(acc);
  for (; i < n; ++i) sum += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  return sum;
}

// e^x in every lane (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r,
// 2^n through the exponent bits; within 2 ulp of expf). Lanes below -87.3 give ~1e-38, not 0:
// callers zero the lanes they do not use.
inline FloatVec exp_vec(FloatVec x) {
  x = x < -87.3365f ? -87.3365f : x;
  x = x > 88.3762f ? 88.3762f : x;
  const FloatVec n = (x * 1.44269504f + 12582912.f) - 12582912.f;   // round to nearest: 1.5 * 2^23
  const FloatVec r = x - n * 0.693359375f + n * 2.12194440e-4f;     // ln 2 in two parts
  FloatVec y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.f;
  const IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;
  FloatVec scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
