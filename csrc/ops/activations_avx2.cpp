// AVX2/FMA activation kernels (float32). Compiled with -mavx2 -mfma; called only when the
// CPU has them (see activations.cpp).
#include <immintrin.h>

#include "core/parallel.h"
#include "ops/activations.h"
#include "ops/vec_avx2.h"

namespace fg::avx2 {

namespace {
constexpr int64_t kGrain = 1 << 15;
constexpr int64_t kGeluGrain = 1 << 13;  // GELU does ~30 flops per element: split earlier
}  // namespace

// The GELU kernels run every element, tails included, through the same vector math (a tail is
// zero-padded to a vector): results do not depend on where the threads' chunks end, and equal
// the GEMM epilogue's (matmul_avx2.cpp) bit for bit.
namespace {
template <typename F>
void gelu_tail(float* out, const float* in1, const float* in2, int64_t n, F&& f) {
  alignas(32) float a[8] = {}, b[8] = {}, o[8];
  for (int64_t t = 0; t < n; ++t) {
    a[t] = in1[t];
    if (in2) b[t] = in2[t];
  }
  _mm256_store_ps(o, f(_mm256_load_ps(a), _mm256_load_ps(b)));
  for (int64_t t = 0; t < n; ++t) out[t] = o[t];
}
}  // namespace

void gelu_tanh_forward(float* y, const float* x, int64_t N) {
  parallel_for(N, kGeluGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(y + i, gelu_tanh8(_mm256_loadu_ps(x + i)));  // x sigmoid(2u)
    if (i < e) gelu_tail(y + i, x + i, nullptr, e - i, [](__m256 v, __m256) { return gelu_tanh8(v); });
  });
}

void gelu_tanh_backward(float* dx, const float* dy, const float* x, int64_t N) {
  parallel_for(N, kGeluGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + 8 <= e; i += 8)
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), gelu_tanh_grad8(_mm256_loadu_ps(x + i))));
    if (i < e)
      gelu_tail(dx + i, dy + i, x + i, e - i, [](__m256 g, __m256 v) { return _mm256_mul_ps(g, gelu_tanh_grad8(v)); });
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
