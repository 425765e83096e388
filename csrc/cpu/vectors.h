// Vectors of 16 floats for the CPU kernels of csrc/cpu (GCC / Clang vector extensions: one
// AVX-512 register, two AVX2 or four NEON ones), loaded from float32 or bfloat16 memory.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

typedef float Floats16 __attribute__((vector_size(64)));
typedef float Floats8 __attribute__((vector_size(32)));
typedef float Floats4 __attribute__((vector_size(16)));
typedef uint16_t Halves16 __attribute__((vector_size(32)));
typedef uint32_t Words16 __attribute__((vector_size(64)));

inline Floats16 load16(const float* p) {
  Floats16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline Floats16 load16(const c10::BFloat16* p) {   // bfloat16 -> float: the bits, 16 places up
  Halves16 h;
  __builtin_memcpy(&h, p, sizeof h);
  const Words16 w = __builtin_convertvector(h, Words16) << 16;
  Floats16 v;
  __builtin_memcpy(&v, &w, sizeof v);
  return v;
}

// The sum of the 16 lanes, pairwise, in registers.
inline float sum16(Floats16 v) {
  const Floats8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                    __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Floats4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// sum of x[i]^2 over n elements, in float32.
template <typename T>
inline float sum_of_squares(const T* x, int64_t n) {
  Floats16 acc = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const Floats16 v = load16(x + i);
    acc += v * v;
  }
  float sum = sum16(acc);
  for (; i < n; ++i) sum += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  return sum;
}
