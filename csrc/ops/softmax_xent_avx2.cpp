// AVX2/FMA row helpers for softmax_xent (float32): a vectorized exp and the three exp loops
// the kernels need. Compiled with -mavx2 -mfma; called only when the CPU has them.
#include <immintrin.h>

#include "ops/softmax_xent.h"
#include "ops/vec_avx2.h"

namespace fg::avx2 {

namespace {
inline double hsum_pd(__m256d a) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
inline __m256d widen_add(__m256d acc, __m256 v, bool hi) {
  return _mm256_add_pd(acc, _mm256_cvtps_pd(hi ? _mm256_extractf128_ps(v, 1) : _mm256_castps256_ps128(v)));
}
// scalar tail: exp via the vector path on one padded lane group
inline void exp_tail(float* out, const float* x, int64_t n, float m) {
  alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) buf[i] = x[i] - m;
  _mm256_store_ps(buf, exp8(_mm256_load_ps(buf)));
  for (int64_t i = 0; i < n; ++i) out[i] = buf[i];
}
}  // namespace

double exp_sum(const float* x, int64_t V, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    a0 = widen_add(a0, e, false);
    a1 = widen_add(a1, e, true);
  }
  double s = hsum_pd(_mm256_add_pd(a0, a1));
  float t[8];
  exp_tail(t, x + i, V - i, m);
  for (int64_t j = 0; j < V - i; ++j) s += t[j];
  return s;
}

double exp_store_sum(float* y, const float* x, int64_t V, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(y + i, e);
    a0 = widen_add(a0, e, false);
    a1 = widen_add(a1, e, true);
  }
  double s = hsum_pd(_mm256_add_pd(a0, a1));
  exp_tail(y + i, x + i, V - i, m);
  for (int64_t j = i; j < V; ++j) s += y[j];
  return s;
}

void exp_scale(float* y, const float* x, int64_t V, float m, float scale) {
  const __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(vs, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm))));
  exp_tail(y + i, x + i, V - i, m);
  for (int64_t j = i; j < V; ++j) y[j] *= scale;
}

// NaN-propagating: _mm256_max_ps drops a NaN in its first operand, so NaN lanes are tracked
// apart and a row holding any NaN has max NaN (and then a NaN softmax / loss, as in NumPy).
float row_max(const float* x, int64_t V) {
  __m256 a = _mm256_set1_ps(-__builtin_inff()), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    a = _mm256_max_ps(a, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan)) return __builtin_nanf("");
  alignas(32) float b[8];
  _mm256_store_ps(b, a);
  float m = b[0];
  for (int l = 1; l < 8; ++l) m = b[l] > m ? b[l] : m;
  for (; i < V; ++i) m = x[i] > m || x[i] != x[i] ? x[i] : m;
  return m;
}

}  // namespace fg::avx2
