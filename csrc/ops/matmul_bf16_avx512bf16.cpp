// AVX512_BF16 kernels of matmul_bf16 (see matmul_bf16.h). Compiled with the AVX-512 flags plus
// -mavx512bf16 and called only when CPUID reports AVX512_BF16 on the avx512 path.
//
// Why this kernel is shaped differently from the float32 GEMM: VDPBF16PS multiplies *pairs* of
// bf16 along K into each float32 lane, so both operands want K contiguous. Converting each operand
// once into K-contiguous bf16 rows (a transposing convert where the layout needs it) makes every
// product an "A B^T" of rows; the micro-kernel then keeps a 4x4 tile of C as 16 vectors of 16
// partial sums over K (32 k per instruction) and reduces each vector once at the end of K.
#include <immintrin.h>

#include <algorithm>

#include "core/parallel.h"
#include "ops/matmul_bf16.h"

namespace fg::avx512_bf16 {

namespace {

constexpr int kR = 4;  // rows of A per tile
constexpr int kS = 4;  // rows of B (columns of C) per tile

// c[i, j] (=|+=) sum_k A[i, k] B[j, k] for the kR x kS tile at rows a[0..kR) and b[0..kS) (row
// stride Kp); rows past the matrix repeat a valid row and are not stored (nr, ns).
__attribute__((always_inline)) inline void tile(float* c, int64_t ldc, const uint16_t* const* a,
                                                const uint16_t* const* b, int64_t Kp, int nr, int ns, bool add) {
  __m512 acc[kR][kS];
  for (int i = 0; i < kR; ++i)
    for (int j = 0; j < kS; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < Kp; k += 32) {
    __m512bh va[kR], vb[kS];
    for (int i = 0; i < kR; ++i) va[i] = (__m512bh)_mm512_loadu_si512(a[i] + k);
    for (int j = 0; j < kS; ++j) vb[j] = (__m512bh)_mm512_loadu_si512(b[j] + k);
    for (int i = 0; i < kR; ++i)
      for (int j = 0; j < kS; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], va[i], vb[j]);
  }
  for (int i = 0; i < nr; ++i)
    for (int j = 0; j < ns; ++j) {
      const float s = _mm512_reduce_add_ps(acc[i][j]);
      c[i * ldc + j] = add ? c[i * ldc + j] + s : s;
    }
}

}  // namespace

void gemm_rows(float* c, const uint16_t* A, const uint16_t* B, int64_t M, int64_t N, int64_t Kp, bool accumulate) {
  // Rows of B per block: half of a 1 MiB L2 (Zen 4; 2 MiB on recent Xeons), at least one tile.
  const int64_t row_bytes = Kp * 2;
  const int64_t nb = std::max<int64_t>(kS, (int64_t{512} << 10) / row_bytes / kS * kS);
  const int64_t tiles_i = (M + kR - 1) / kR;
  parallel_for(tiles_i, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t j0 = 0; j0 < N; j0 += nb) {
      const int64_t j1 = std::min(N, j0 + nb);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t * kR;
        const int nr = static_cast<int>(std::min<int64_t>(kR, M - i));
        const uint16_t* ar[kR];
        for (int r = 0; r < kR; ++r) ar[r] = A + std::min<int64_t>(i + r, M - 1) * Kp;
        for (int64_t j = j0; j < j1; j += kS) {
          const int ns = static_cast<int>(std::min<int64_t>(kS, j1 - j));
          const uint16_t* br[kS];
          for (int s = 0; s < kS; ++s) br[s] = B + std::min<int64_t>(j + s, j1 - 1) * Kp;
          tile(c + i * N + j, N, ar, br, Kp, nr, ns, accumulate);
        }
      }
    }
  });
}

void convert_rows(uint16_t* dst, const float* src, int64_t R, int64_t K, int64_t Kp, int64_t rs, int64_t ks) {
  if (ks == 1) {  // K contiguous: 32 floats -> 32 bf16 per step (VCVTNE2PS2BF16 rounds to nearest even)
    parallel_for(R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* s = src + r * rs;
        uint16_t* d = dst + r * Kp;
        for (int64_t k = 0; k < Kp; k += 32) {
          const int64_t n0 = std::clamp<int64_t>(K - k, 0, 16), n1 = std::clamp<int64_t>(K - k - 16, 0, 16);
          const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n0) - 1u), s + k);
          const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n1) - 1u), s + k + 16);
          _mm512_storeu_si512(d + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
      }
    });
    return;
  }
  // K strided (the operand is stored transposed): 32 x 32 blocks, read along the rows' direction.
  constexpr int64_t kB = 32;
  parallel_for((R + kB - 1) / kB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t rb = b0 * kB; rb < std::min(R, b1 * kB); rb += kB) {
      const int64_t re = std::min(R, rb + kB);
      for (int64_t kb = 0; kb < Kp; kb += kB)
        for (int64_t k = kb; k < kb + kB; ++k)
          for (int64_t r = rb; r < re; ++r) dst[r * Kp + k] = k < K ? bf16_round(src[r * rs + k * ks]) : 0;
    }
  });
}

}  // namespace fg::avx512_bf16
