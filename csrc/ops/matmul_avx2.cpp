// AVX2/FMA float32 GEMM: the 6x16 register-blocked micro-kernel (12 ymm accumulators, 2 B loads
// and 6 broadcasts per k) plugged into the blocked driver of matmul_impl.h with Zen-sized blocks
// (MC=144 rows of A ~ 144 KiB in L2, KC=256, NC=4080 columns of B ~ 4 MiB in L3).
// Compiled with -mavx2 -mfma; called from matmul.cpp only when the CPU has them.
#include <immintrin.h>

#include "ops/matmul.h"
#include "ops/matmul_impl.h"

namespace fg::avx2 {

namespace {

struct Kernel6x16 {
  static constexpr int MR = 6, NR = 16;
  static void run(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool add) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
      const __m256 b0 = _mm256_load_ps(bp + p * 16);
      const __m256 b1 = _mm256_load_ps(bp + p * 16 + 8);
      const float* a = ap + p * 6;
      __m256 av = _mm256_broadcast_ss(a + 0);
      c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
      av = _mm256_broadcast_ss(a + 1);
      c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
      av = _mm256_broadcast_ss(a + 2);
      c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
      av = _mm256_broadcast_ss(a + 3);
      c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
      av = _mm256_broadcast_ss(a + 4);
      c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
      av = _mm256_broadcast_ss(a + 5);
      c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
    }
    auto st = [&](float* row, __m256 v0, __m256 v1) {
      if (add) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row + 8));
      }
      _mm256_storeu_ps(row, v0);
      _mm256_storeu_ps(row + 8, v1);
    };
    st(c + 0 * ldc, c00, c01);
    st(c + 1 * ldc, c10, c11);
    st(c + 2 * ldc, c20, c21);
    st(c + 3 * ldc, c30, c31);
    st(c + 4 * ldc, c40, c41);
    st(c + 5 * ldc, c50, c51);
  }
};

}  // namespace

void sgemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
           bool trans_b, bool accumulate, int nthreads) {
  gemm_blocked<float, Kernel6x16, 144, 256, 4080>(c, a, view_a(a, M, K, trans_a), b, view_b(b, K, N, trans_b),
                                                  M, N, K, accumulate, nthreads);
}

}  // namespace fg::avx2
