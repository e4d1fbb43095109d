// Operand packing shared by the bf16 kernels that run VDPBF16PS-era instructions: the AVX512_BF16
// micro-kernel (matmul_bf16_avx512bf16.cpp) and the AMX kernel (matmul_bf16_amx.cpp, whose CPUs all
// have AVX512_BF16 too). Include only from translation units compiled with -mavx512bf16; every
// function here is static (internal), so each such object keeps its own copy.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "core/parallel.h"

namespace fg::bf16_pack {
namespace {

// 16 floats -> 16 bf16 (round to nearest even) in the low half of each 32-bit lane
inline __m512i bf16_lo(__m512 v) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)); }

// Packs an operand of R rows (of C) by K into tiles of W rows: dst[t][p][w] = the 32-bit pair
// (k = 2p, 2p + 1) of row t W + w, zero past R and past K; P pairs per tile (P >= ceil(K / 2)).
// Element (r, k) is src[r rs + k ks]; every operand of matmul_bf16 has rs == 1 or ks == 1.
template <int W>
void pack_pairs(uint32_t* dst, const float* src, int64_t R, int64_t K, int64_t P, int64_t rs, int64_t ks) {
  const int64_t tiles = (R + W - 1) / W;
  if (ks == 1) {
    // Rows are K contiguous: 32 k of a row become 16 pairs at once; the 16 x W block of pairs is
    // then stored transposed (pairs outer, rows inner).
    parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
      alignas(64) uint32_t tmp[W][16];
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t p0 = 0; p0 < P; p0 += 16) {
          const int64_t k0 = 2 * p0;
          const int n0 = static_cast<int>(std::clamp<int64_t>(K - k0, 0, 16));
          const int n1 = static_cast<int>(std::clamp<int64_t>(K - k0 - 16, 0, 16));
          for (int w = 0; w < W; ++w) {
            const int64_t r = t * W + w;
            __m512i v = _mm512_setzero_si512();
            if (r < R) {
              const float* s = src + r * rs + k0;
              const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n0) - 1u), s);
              const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n1) - 1u), s + 16);
              v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
            _mm512_store_si512(tmp[w], v);
          }
          const int64_t np = std::min<int64_t>(16, P - p0);
          uint32_t* d = dst + (t * P + p0) * W;
          for (int64_t i = 0; i < np; ++i)
            for (int w = 0; w < W; ++w) d[i * W + w] = tmp[w][i];
        }
    });
    return;
  }
  // Rows are contiguous across r (the operand is stored transposed): k = 2p and 2p + 1 are two
  // rows of the stored matrix; interleaving their bf16 halves gives up to 16 pairs of one tile at
  // once. Blocks of 16 pairs (32 stored rows, which stay in L2) are the outer loop and tiles the
  // inner, so the stored rows are read from memory once although each tile takes only W floats of
  // a row. (Packing A this way is still ~25% of a 768 x 2048 x 256 product, dW of the small GPT:
  // with 256 columns each packed pair is used only 8 times.)
  constexpr int64_t kPB = 16;
  parallel_for((P + kPB - 1) / kPB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t p = b0 * kPB; p < std::min(P, b1 * kPB); ++p)
        for (int c = 0; c < W; c += 16) {
          const int64_t r = t * W + c;
          const int n = static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(R - r, W - c), 0, 16));
          const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
          const int64_t k = 2 * p;
          const __m512 e = k < K ? _mm512_maskz_loadu_ps(m, src + r * rs + k * ks) : _mm512_setzero_ps();
          const __m512 o = k + 1 < K ? _mm512_maskz_loadu_ps(m, src + r * rs + (k + 1) * ks) : _mm512_setzero_ps();
          const __m512i w = _mm512_or_si512(bf16_lo(e), _mm512_slli_epi32(bf16_lo(o), 16));
          const int nw = std::min(16, W - c);  // W = 12: one vector of 12 lanes
          _mm512_mask_storeu_epi32(dst + (t * P + p) * W + c, static_cast<__mmask16>((1u << nw) - 1u), w);
        }
  });
}

// malloc, not std::vector: a template instantiated in a TU with these flags could be the copy the
// linker keeps for portable callers too (tools/check_isa_symbols.py)
uint32_t* words(int64_t n) {
  void* p = std::aligned_alloc(64, static_cast<size_t>((n * 4 + 63) / 64 * 64));
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<uint32_t*>(p);
}

}  // namespace
}  // namespace fg::bf16_pack
