// AVX2/FMA activation kernels (float32). Compiled with -mavx2 -mfma; called only when the
// CPU has them (see activations.cpp).
#include <immintrin.h>

#include <cmath>

#include "core/parallel.h"
#include "ops/activations.h"
#include "ops/vec_avx2.h"

namespace fg::avx2 {

namespace {
constexpr int64_t kGrain = 1 << 15;
constexpr int64_t kGeluGrain = 1 << 13;  // GELU does ~30 flops per element: split earlier

// s = sigmoid(2u) = 1 / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3); same math as the
// portable path (activations.cpp): exp overflow gives s = 0 exactly, never NaN.
inline __m256 gelu_sig8(__m256 v) {
  const __m256 v2 = _mm256_mul_ps(v, v);
  const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v2), v, v);  // x + c x^3
  const __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.f * 0.7978845608028654f), inner));
  return _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
}
}

void gelu_tanh_forward(float* y, const float* x, int64_t N) {
  parallel_for(N, kGeluGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      // y = 0.5 x (1 + tanh u) = x sigmoid(2u)
      _mm256_storeu_ps(y + i, _mm256_mul_ps(v, gelu_sig8(v)));
    }
    for (; i < e; ++i) {
      const float v = x[i];
      y[i] = v / (1.f + std::exp(-2.f * 0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
  });
}

void gelu_tanh_backward(float* dx, const float* dy, const float* x, int64_t N) {
  parallel_for(N, kGeluGrain, [&](int64_t b, int64_t e) {
    const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    const __m256 k2 = _mm256_set1_ps(2.f * 0.7978845608028654f), c3 = _mm256_set1_ps(3.f * 0.044715f);
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      const __m256 s = gelu_sig8(v);
      const __m256 sp = _mm256_mul_ps(s, _mm256_sub_ps(one, s));
      // gelu'(x) = s + 2 x s (1 - s) k (1 + 3 c x^2); where s saturates (sp == 0) just s
      const __m256 poly = _mm256_fmadd_ps(_mm256_mul_ps(c3, v), v, one);
      const __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(k2, v), sp), poly, s);
      const __m256 sat = _mm256_cmp_ps(sp, zero, _CMP_EQ_OQ);
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_blendv_ps(g, s, sat)));
    }
    for (; i < e; ++i) {
      const float v = x[i], k = 0.7978845608028654f, c = 0.044715f;
      const float s = 1.f / (1.f + std::exp(-2.f * k * (v + c * v * v * v)));
      const float sp = s * (1.f - s);
      dx[i] = dy[i] * (sp == 0.f ? s : s + 2.f * v * sp * k * (1.f + 3.f * c * v * v));
    }
  });
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
