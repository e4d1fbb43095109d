// AVX2/FMA activation kernels (float32). Compiled with -mavx2 -mfma; called only when the
// CPU has them (see activations.cpp).
#include <immintrin.h>

#include "core/parallel.h"
#include "ops/activations.h"

namespace fg::avx2 {

namespace {
constexpr int64_t kGrain = 1 << 15;
}

void relu_forward(float* y, const float* x, int64_t N) {
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
      __m256 v = _mm256_loadu_ps(x + i);
      // max(v, 0) with v as the second operand returns v when v is NaN
      _mm256_storeu_ps(y + i, _mm256_max_ps(zero, v));
    }
    for (; i < e; ++i) y[i] = (x[i] > 0.f || x[i] != x[i]) ? x[i] : 0.f;
  });
}

void relu_backward(float* dx, const float* dy, const float* x, int64_t N) {
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
      __m256 mask = _mm256_cmp_ps(_mm256_loadu_ps(x + i), zero, _CMP_GT_OQ);
      _mm256_storeu_ps(dx + i, _mm256_and_ps(mask, _mm256_loadu_ps(dy + i)));
    }
    for (; i < e; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
  });
}

}  // namespace fg::avx2
