// CPU float32 linear layers at decode sizes: out[M, N] = x[M, K] W^T (+ bias), W packed once at
// load as tiles of 16 output columns, [ceil(N / 16)][K][16] (zero columns pad the last tile).
// Registered as torch.ops.qinfer_cpu.linear_tiled; qinfer/ops/cpu_linear.py packs and calls it.
//
// A pass over a tile keeps kRowBlock rows' accumulators (16 columns each) in vector registers and
// reads one 16-column row of weights per K step: each weight vector feeds kRowBlock FMAs, and x
// (transposed into [K][rows] blocks) is broadcast from L1. The tiles lie one after the other, so
// each thread streams its share of W from DRAM once; the further row blocks of a big batch re-read
// a tile from L2 (K x 64 bytes). At 16 rows on SmolLM2-135M's shapes it reads the weights 1.3-1.8x
// faster than oneDNN's packed linear (50-60% of the read bandwidth there). Past that the work is
// compute-bound and the register block decides: AVX2's 6 x 2 (the BLIS shape) keeps the FMAs busy;
// AVX-512's 16 rows x 1 vector issue a broadcast load per FMA, so from 17 rows AVX-512 passes over
// two tiles at once (12 rows x 2 vectors). Which of these and oneDNN is faster past 16 rows varies
// by machine: cpu_linear.py measures it per weight shape when it packs (bench/NOTES.md).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vectors.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kTile = 16;
constexpr int64_t kTileVecs = kTile / kVecFloats;
// Accumulators kRowBlock x kTileVecs and kTileVecs weight vectors fit the register file: 32 zmm
// with AVX-512, 16 ymm with AVX2, 16 xmm / 32 NEON registers otherwise.
constexpr int kRowBlock = kVecFloats == 16 ? 16 : (kVecFloats == 8 ? 6 : 3);
// AVX-512 past kRowBlock rows: a pass over two adjacent tiles at once, kPairRowBlock rows x 2
// vectors (24 accumulators + 2 weight vectors), so each broadcast of x feeds two FMAs: the 16 x 1
// pass issues a load per FMA and is load-bound once the rows make the work compute-bound. AVX2's
// 6 x 2 block already has two vectors per broadcast (kPairRowBlock 0: no pair pass).
constexpr int kPairRowBlock = kVecFloats == 16 ? 12 : 0;
constexpr int64_t kPrefetchRows = 64;   // 4 KB ahead in the packed weights (a tile row is 64 bytes)

// What a pass prefetches while it runs: the first pass over a tile streams that tile from DRAM
// (its lines kPrefetchRows K steps ahead, into L1); the second pulls the thread's next tile into
// L2, so the next tile's first pass finds it there; the others prefetch nothing. On a 2-core AVX2
// VM the next-tile prefetch took 0-10% off 14 of 20 SmolLM2 shape x row-count cases (16-128 rows,
// interleaved A/B, best of 6), lost 4-8% on 3 (bench/NOTES.md).
enum class Prefetch { kOwnAhead, kNextTile, kNone };

// out rows 0..R-1 (row stride ldo), columns [0, cols) of TILES adjacent tiles (cols counts all of
// them), from xt [K][R] and the tiles [TILES][K][16].
template <int R, int TILES>
inline void tile_pass(const float* xt, const float* tile, int64_t k_len, float* out, int64_t ldo, int64_t cols,
                      const float* bias, Prefetch prefetch, const float* next_tile) {
  constexpr int kVecs = TILES * kTileVecs;
  FloatVec acc[R][kVecs] = {};
  for (int64_t k = 0; k < k_len; ++k) {
    // The hardware prefetcher alone left the stream waiting on DRAM behind the FMAs (16 rows:
    // 10 GB/s against 20 at one row); a line kPrefetchRows K steps ahead keeps it in flight (past
    // the last tile it names no data: a prefetch never faults).
#pragma GCC unroll 2
    for (int j = 0; j < TILES; ++j) {
      const float* own = tile + j * k_len * kTile;
      if (prefetch == Prefetch::kOwnAhead) __builtin_prefetch(own + (k + kPrefetchRows) * kTile);
      else if (prefetch == Prefetch::kNextTile) __builtin_prefetch(next_tile + j * k_len * kTile + k * kTile, 0, 2);
    }
    FloatVec w[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v)
      w[v] = load_vec(tile + (v / kTileVecs) * k_len * kTile + k * kTile + (v % kTileVecs) * kVecFloats);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float xv = xt[k * R + r];
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) acc[r][v] += xv * w[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    float row[TILES * kTile];
    __builtin_memcpy(row, acc[r], sizeof row);
    for (int64_t c = 0; c < cols; ++c) out[r * ldo + c] = row[c] + (bias ? bias[c] : 0.f);
  }
}

template <int R, int TILES>
void tile_pass_rows(int rows, const float* xt, const float* tile, int64_t k_len, float* out, int64_t ldo,
                    int64_t cols, const float* bias, Prefetch prefetch, const float* next_tile) {
  if constexpr (R > 1) {
    if (rows < R)
      return tile_pass_rows<R - 1, TILES>(rows, xt, tile, k_len, out, ldo, cols, bias, prefetch, next_tile);
  }
  tile_pass<R, TILES>(xt, tile, k_len, out, ldo, cols, bias, prefetch, next_tile);
}

at::Tensor linear_tiled(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                        int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1, "linear_tiled: x [M, K] float32");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kTile && packed.is_contiguous() &&
                  packed.scalar_type() == at::kFloat && packed.size(1) == x.size(1) &&
                  packed.size(0) * kTile >= n && packed.size(0) * kTile < n + kTile,
              "linear_tiled: packed [ceil(N / 16), K, 16] float32 for x's K");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == n && bias->is_contiguous() && bias->scalar_type() == at::kFloat),
              "linear_tiled: bias [N] float32");
  const int64_t m = x.size(0), k = x.size(1), tiles = packed.size(0), sx = x.stride(0);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
  // Pairs of tiles where the rows make the work compute-bound (AVX-512 past 16 rows).
  const bool pairs = kPairRowBlock > 0 && m > kRowBlock;
  const int64_t row_block = pairs ? kPairRowBlock : kRowBlock;
  // x as row blocks of near-equal size, at most row_block rows (17 rows: 9 + 8, not 16 + 1: a
  // pass's cost is mostly its weight reads), each transposed to [K][rows].
  const int64_t blocks = (m + row_block - 1) / row_block;
  auto block_start = [&](int64_t b) { return b * m / blocks; };
  // Transposed by the threads, written in order, into memory not zero-filled first: done serially
  // into a std::vector it was half of a small K=1536 linear's time (209 us against 105 now) and
  // 15% of the 64-row down projection's (919 us against 785; bench/NOTES.md).
  std::unique_ptr<float[]> xt(new float[m * k]);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r0 = block_start(b), rows = block_start(b + 1) - r0;
      float* dst = xt.get() + r0 * k;
      for (int64_t j = 0; j < k; ++j)
        for (int64_t r = 0; r < rows; ++r) dst[j * rows + r] = xp[(r0 + r) * sx + j];
    }
  });
  const float* wp = packed.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // Work units: single tiles, or pairs of adjacent tiles (the last unit of an odd count single).
  const int64_t per_unit = pairs ? 2 : 1, units = (tiles + per_unit - 1) / per_unit;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t t = u * per_unit, width = std::min(per_unit, tiles - t);
      const int64_t c0 = t * kTile, cols = std::min(width * kTile, n - c0);
      const bool has_next = u + 1 < end;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t r0 = block_start(b), rows = block_start(b + 1) - r0;
        const Prefetch prefetch = b == 0 ? Prefetch::kOwnAhead
                                         : (b == 1 && has_next ? Prefetch::kNextTile : Prefetch::kNone);
        const float* tile = wp + t * k * kTile;
        float* dst = op + r0 * n + c0;
        const float* bias_cols = bp ? bp + c0 : nullptr;
        if constexpr (kPairRowBlock > 0) {   // no pair pass is built where there is none
          if (width == 2) {
            tile_pass_rows<kPairRowBlock, 2>(static_cast<int>(rows), xt.get() + r0 * k, tile, k, dst, n, cols,
                                             bias_cols, prefetch, tile + 2 * k * kTile);
            continue;
          }
        }
        tile_pass_rows<kRowBlock, 1>(static_cast<int>(rows), xt.get() + r0 * k, tile, k, dst, n, cols,
                                     bias_cols, prefetch, tile + per_unit * k * kTile);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qinfer_cpu, m) {
  m.def("linear_tiled(Tensor x, Tensor packed, Tensor? bias, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(qinfer_cpu, CPU, m) { m.impl("linear_tiled", &linear_tiled); }
