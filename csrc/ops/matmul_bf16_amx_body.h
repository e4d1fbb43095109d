// The AMX-BF16 matrix product of matmul_bf16 (see matmul_bf16.h), written once over a "tile unit"
// policy T and instantiated twice:
//   matmul_bf16_amx.cpp        T = the hardware tiles (TILELOADD / TDPBF16PS / TILESTORED), for
//                              CPUs with AMX-BF16 once Linux has granted the tile data state;
//   matmul_bf16_avx512bf16.cpp T = the same tile operations done in software, slowly, so that this
//                              kernel's packing, tiling and tail handling are tested on any CPU
//                              with AVX512_BF16 (the packing uses it), not only where AMX exists.
// Include only from translation units compiled with -mavx512bf16.
//
// Why AMX needs its own layout: TDPBF16PS multiplies a 16 x 32 bf16 tile of A (16 rows, 16 K pairs
// per 64-byte row) by a 16 x 32 bf16 tile of B (16 K pairs, 16 columns per 64-byte row), adding
// into a 16 x 16 float32 tile of C: C[m][n] += A[m][2p] B[2p][n] + A[m][2p+1] B[2p+1][n]. So B is
// packed as for the AVX512_BF16 kernel ([pair][column] words, panels of 32 columns, read as two
// tiles of 16 columns with a 128-byte row stride) but A must be [row][pair]: blocks of 16 rows x
// 16 pairs, 1 KB each, contiguous. The micro-kernel keeps a 32 x 32 block of C in four tiles and
// uses the other four for two A and two B tiles per step of 16 pairs (8 tiles in all).
//
// The policy T provides (tile ids are fixed: C in 0-3, A in 4-5, B in 6-7):
//   configure() / release()            set every tile to 16 rows x 64 bytes / hand the state back
//   c_zero<I>(), c_load<I>(p, stride), c_store<I>(p, stride)     the C tile I (0..3)
//   step(a0, a1, b, b_stride)          load A tiles from a0, a1 (64-byte rows) and B tiles from
//                                      b and b + 64 bytes, then C00 += A0 B0, C01 += A0 B1,
//                                      C10 += A1 B0, C11 += A1 B1
#pragma once
#include <cstring>

#include "ops/matmul_bf16_pack.h"

namespace fg::amx_body {
namespace {

constexpr int64_t kTile = 16;  // rows (and float32 columns) of a tile; also K pairs per step
constexpr int64_t kBlock = 32;  // rows and columns of C per micro-kernel call (2 x 2 tiles)
constexpr int64_t kMC = 64;    // rows of C per task
constexpr int64_t kNC = 256;   // columns of C per task

// Packs A (R rows of C by K) into blocks: dst[(t PQ + q) 256 + w 16 + i] = the bf16 pair
// (k = 32 q + 2 i, +1) of row 16 t + w; zero past R and K. T16 = tiles of 16 rows (an even count),
// PQ = blocks of 16 pairs. Element (r, k) is src[r rs + k ks].
void pack_a(uint32_t* dst, const float* src, int64_t R, int64_t K, int64_t T16, int64_t PQ, int64_t rs, int64_t ks) {
  if (ks == 1) {
    parallel_for(T16, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int w = 0; w < kTile; ++w) {
          const int64_t r = t * kTile + w;
          for (int64_t q = 0; q < PQ; ++q) {
            const int64_t k0 = 32 * q;
            __m512i v = _mm512_setzero_si512();
            if (r < R) {
              const int n0 = static_cast<int>(std::clamp<int64_t>(K - k0, 0, 16));
              const int n1 = static_cast<int>(std::clamp<int64_t>(K - k0 - 16, 0, 16));
              const float* s = src + r * rs + k0;
              const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n0) - 1u), s);
              const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n1) - 1u), s + 16);
              v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // lo's 16 k in the low half: pairs in order
            }
            _mm512_store_si512(dst + ((t * PQ + q) * kTile + w) * kTile, v);
          }
        }
    });
    return;
  }
  // A stored transposed (rows contiguous across r): pack [pair][row] tiles of 16 rows first, as the
  // AVX512_BF16 kernel does, then transpose each 16 x 16 block of words to [row][pair].
  const int64_t P = PQ * kTile;
  uint32_t* tmp = bf16_pack::words(T16 * P * kTile);
  bf16_pack::pack_pairs<kTile>(tmp, src, R, K, P, rs, ks);
  parallel_for(T16, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t q = 0; q < PQ; ++q) {
        const uint32_t* s = tmp + (t * P + q * kTile) * kTile;  // s[i 16 + w]
        uint32_t* d = dst + (t * PQ + q) * kTile * kTile;       // d[w 16 + i]
        for (int w = 0; w < kTile; ++w)
          for (int i = 0; i < kTile; ++i) d[w * kTile + i] = s[i * kTile + w];
      }
  });
  std::free(tmp);
}

// One C tile I of the block at c (rows [0, mr), columns [0, nr) of it valid, each <= 16): loaded
// (or zeroed) before the K loop, stored after. Partial tiles go through a 16 x 16 buffer.
template <class T, int I>
struct CTile {
  alignas(64) float buf[kTile * kTile];
  float* c;
  int64_t ldc;
  int mr, nr;
  bool full() const { return mr == kTile && nr == kTile; }
  void begin(bool add) {
    if (mr <= 0 || nr <= 0 || !add) {
      T::template c_zero<I>();
    } else if (full()) {
      T::template c_load<I>(c, ldc * 4);
    } else {
      std::memset(buf, 0, sizeof buf);
      for (int r = 0; r < mr; ++r) std::memcpy(buf + r * kTile, c + r * ldc, sizeof(float) * nr);
      T::template c_load<I>(buf, kTile * 4);
    }
  }
  void end() {
    if (mr <= 0 || nr <= 0) return;
    if (full()) {
      T::template c_store<I>(c, ldc * 4);
    } else {
      T::template c_store<I>(buf, kTile * 4);
      for (int r = 0; r < mr; ++r) std::memcpy(c + r * ldc, buf + r * kTile, sizeof(float) * nr);
    }
  }
};

inline int clamp16(int64_t n) { return static_cast<int>(std::clamp<int64_t>(n, 0, kTile)); }

// c[0:mr, 0:nr] (= or +=) the 32 x 32 block product over PQ steps of 16 pairs; a: the block's first
// A tile row (its second is PQ blocks further), b: its B panel (32 columns, P = 16 PQ pairs).
template <class T>
void block(float* c, int64_t ldc, const uint32_t* a, const uint32_t* b, int64_t PQ, int64_t mr, int64_t nr,
           bool add) {
  CTile<T, 0> c00{{}, c, ldc, clamp16(mr), clamp16(nr)};
  CTile<T, 1> c01{{}, c + kTile, ldc, clamp16(mr), clamp16(nr - kTile)};
  CTile<T, 2> c10{{}, c + kTile * ldc, ldc, clamp16(mr - kTile), clamp16(nr)};
  CTile<T, 3> c11{{}, c + kTile * ldc + kTile, ldc, clamp16(mr - kTile), clamp16(nr - kTile)};
  c00.begin(add);
  c01.begin(add);
  c10.begin(add);
  c11.begin(add);
  const uint32_t* a1 = a + PQ * kTile * kTile;
  for (int64_t q = 0; q < PQ; ++q)
    T::step(a + q * kTile * kTile, a1 + q * kTile * kTile, b + q * kTile * kBlock, kBlock * 4);
  c00.end();
  c01.end();
  c10.end();
  c11.end();
}

template <class T>
void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          bool accumulate) {
  const int64_t PQ = (K + 2 * kTile - 1) / (2 * kTile), P = PQ * kTile;
  const int64_t T16 = (M + kBlock - 1) / kBlock * 2;  // tiles of 16 rows, an even count
  const int64_t nt = (N + kBlock - 1) / kBlock;       // panels of 32 columns
  uint32_t* const Ap = bf16_pack::words(T16 * PQ * kTile * kTile);
  uint32_t* const Bp = bf16_pack::words(nt * P * kBlock);
  pack_a(Ap, a, M, K, T16, PQ, trans_a ? 1 : K, trans_a ? M : 1);
  bf16_pack::pack_pairs<kBlock>(Bp, b, N, K, P, trans_b ? K : 1, trans_b ? 1 : N);
  // Tasks: kMC x kNC blocks of C; each 32 x 32 block sums all of K in one order, so the result does
  // not depend on the thread count.
  const int64_t tm = (M + kMC - 1) / kMC, tn = (N + kNC - 1) / kNC;
  parallel_for(tm * tn, 1, [&](int64_t t0, int64_t t1) {
    T::configure();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = (t / tn) * kMC, j0 = (t % tn) * kNC;
      const int64_t i1 = std::min(M, i0 + kMC), j1 = std::min(N, j0 + kNC);
      for (int64_t j = j0; j < j1; j += kBlock)
        for (int64_t i = i0; i < i1; i += kBlock)
          block<T>(c + i * N + j, N, Ap + (i / kTile) * PQ * kTile * kTile, Bp + (j / kBlock) * P * kBlock, PQ,
                   i1 - i, j1 - j, accumulate);
    }
    T::release();
  });
  std::free(Ap);
  std::free(Bp);
}

}  // namespace
}  // namespace fg::amx_body
