// gemv_bf16 (gemv.h) on AVX512_BF16: VDPBF16PS multiplies 32 bf16 weights by 32 bf16 inputs per
// instruction, pairs along K summed into 16 float32 lanes. Compiled with the AVX-512 flags plus
// -mavx512bf16; gemv.cpp calls it on the avx512 path of CPUs that report AVX512_BF16 (Zen 4 here).
//
// The weights are already bf16 and PyTorch's (out, in) rows keep K contiguous, which is the pair
// layout VDPBF16PS wants: w is streamed as stored, 32 k per 64-byte load, with no widening ops
// (the AVX-512 widening path spends a zero-extend and a shift per 16 weights).
// x is not rounded to bf16: each row is split once into hi = bf16(x) and lo = bf16(x - hi)
// (|x - hi - lo| <= 2^-16 |x|), and both halves are multiplied with the weights. A product of two
// bf16 values is exact in float32, so y is the float32 sum of w (x_hi + x_lo): within 2^-16 sum|x||w|
// of the product of the exact weights and inputs, far inside bf16's own 2^-8, so a bf16 model's
// decode steps compute what its forward computes (the perplexity measured is the one generated).
// VDPBF16PS treats bf16 subnormals (|v| < 1.2e-38) as zero and flushes subnormal sums: at most
// ~1e-38 per term. An x beyond bf16's largest finite value (3.39e38) rounds hi to inf.
#include <immintrin.h>

#include <cstdint>

#include "core/parallel.h"
#include "ops/gemv.h"

namespace fg::avx512_bf16 {

namespace {

constexpr int kRW = 8, kRX = 2;  // rows of w in flight x rows of x per tile: 16 accumulators

__attribute__((always_inline)) inline __m512 widen(__m256bh h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
}

// acc[i][r] += w_r . (x_hi,i + x_lo,i) over the 32 k at xs + k (rows: hi, then lo, each Kp long)
template <int RW, int RX>
__attribute__((always_inline)) inline void madd(__m512 (&acc)[RX][RW], const __m512bh (&wv)[RW], const uint16_t* xs,
                                                int64_t Kp) {
  for (int i = 0; i < RX; ++i) {
    const __m512bh hi = (__m512bh)_mm512_loadu_si512(xs + 2 * i * Kp);
    const __m512bh lo = (__m512bh)_mm512_loadu_si512(xs + (2 * i + 1) * Kp);
    for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[i][r], hi, wv[r]), lo, wv[r]);
  }
}

// y[i, r] for RX rows of x (split rows, stride Kp) and RW rows of w (row stride K).
template <int RW, int RX>
__attribute__((always_inline)) inline void tile(float* y, int64_t ldy, const uint16_t* xs, int64_t Kp,
                                                const uint16_t* w, int64_t K, const float* bias, const float* res) {
  __m512 acc[RX][RW];
  for (int i = 0; i < RX; ++i)
    for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_setzero_ps();
  const int64_t Kv = K - K % 32;
  __m512bh wv[RW];
  for (int64_t k = 0; k < Kv; k += 32) {
    for (int r = 0; r < RW; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w + r * K + k);
    madd<RW, RX>(acc, wv, xs + k, Kp);
  }
  if (Kv < K) {  // the tail: masked loads, lanes past K read as 0 (x's padding is 0 too)
    const __mmask32 m = static_cast<__mmask32>((1u << (K - Kv)) - 1u);
    for (int r = 0; r < RW; ++r) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, w + r * K + Kv);
    madd<RW, RX>(acc, wv, xs + Kv, Kp);
  }
  for (int i = 0; i < RX; ++i)
    for (int r = 0; r < RW; ++r) {
      float s = _mm512_reduce_add_ps(acc[i][r]);
      if (bias) s += bias[r];
      if (res) s = res[i * ldy + r] + s;
      y[i * ldy + r] = s;
    }
}

template <int RW, int RX>
__attribute__((always_inline)) inline void tile_rows(int rx, float* y, int64_t ldy, const uint16_t* xs, int64_t Kp,
                                                     const uint16_t* w, int64_t K, const float* bias,
                                                     const float* res) {
  if constexpr (RX > 1) {
    if (rx < RX) return tile_rows<RW, RX - 1>(rx, y, ldy, xs, Kp, w, K, bias, res);
  }
  tile<RW, RX>(y, ldy, xs, Kp, w, K, bias, res);
}

}  // namespace

void split_rows(uint16_t* xs, const float* x, int64_t M, int64_t K, int64_t Kp) {
  for (int64_t m = 0; m < M; ++m) {
    uint16_t* hi = xs + 2 * m * Kp;
    uint16_t* lo = hi + Kp;
    for (int64_t k = 0; k < Kp; k += 16) {
      const int64_t n = K - k >= 16 ? 16 : (K - k > 0 ? K - k : 0);
      const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), x + m * K + k);
      const __m256bh h = _mm512_cvtneps_pbh(v);  // round to nearest even
      __m512 d = _mm512_sub_ps(v, widen(h));     // exact (Sterbenz)
      d = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d, d, _CMP_ORD_Q), d);  // inf/NaN: hi carries it, lo = 0
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + k), (__m256i)h);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + k), (__m256i)_mm512_cvtneps_pbh(d));
    }
  }
}

void gemv_rows(float* y, const uint16_t* xs, const uint16_t* w, const float* bias, int64_t M, int64_t K, int64_t Kp,
               int64_t N, const float* res) {
  const int64_t blocks = (N + kRW - 1) / kRW;
  // at least ~32 KB of bf16 weights per thread, or the fork costs more than it saves
  const int64_t grain = (int64_t{1} << 14) / (kRW * (K > 0 ? K : 1)) + 1;
  parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t o0 = blk * kRW;
      const int rw = static_cast<int>(N - o0 < kRW ? N - o0 : kRW);
      // one block of w rows against every row of x: w comes from memory once, then from cache
      for (int64_t m0 = 0; m0 < M; m0 += kRX) {
        const int rx = static_cast<int>(M - m0 < kRX ? M - m0 : kRX);
        float* yt = y + m0 * N + o0;
        const uint16_t* xt = xs + 2 * m0 * Kp;
        const float* rt = res ? res + m0 * N + o0 : nullptr;
        if (rw == kRW) {
          tile_rows<kRW, kRX>(rx, yt, N, xt, Kp, w + o0 * K, K, bias ? bias + o0 : nullptr, rt);
        } else {
          for (int r = 0; r < rw; ++r)
            tile_rows<1, kRX>(rx, yt + r, N, xt, Kp, w + (o0 + r) * K, K, bias ? bias + o0 + r : nullptr,
                              rt ? rt + r : nullptr);
        }
      }
    }
  });
}

}  // namespace fg::avx512_bf16
