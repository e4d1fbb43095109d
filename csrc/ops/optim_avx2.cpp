// AVX2+FMA float32 Adam/AdamW step (compiled with -mavx2 -mfma; called only when the CPU has them).
// Same operation order as the portable loop in optim.cpp, 8 lanes at a time; the tail runs the
// scalar formula.
#include <immintrin.h>

#include <cmath>

#include "core/parallel.h"
#include "ops/optim.h"

namespace fg::avx2 {

double sum_squares_chunk(const float* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 u = _mm256_loadu_ps(x + i), w = _mm256_loadu_ps(x + i + 8);
    const __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(u)), d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(u, 1));
    const __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(w)), d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
    a0 = _mm256_fmadd_pd(d0, d0, a0);
    a1 = _mm256_fmadd_pd(d1, d1, a1);
    a2 = _mm256_fmadd_pd(d2, d2, a2);
    a3 = _mm256_fmadd_pd(d3, d3, a3);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

void adam_step(float* param, float* m, float* v, const float* grad, int64_t N, int64_t step, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool decoupled_wd) {
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  const float step_size = float(lr / bc1), inv_bc2_sqrt = float(1.0 / std::sqrt(bc2));
  const float b1c = float(1.0 - beta1), b2 = float(beta2), b2c = float(1.0 - beta2), eps_ = float(eps);
  const bool lerp_from_m = b1c < 0.5f;                  // see the portable kernel (optim.cpp)
  const float b1 = float(beta1);
  const float decay = float(1.0 - lr * weight_decay), wd = float(weight_decay);
  parallel_for(N, int64_t(1) << 15, [&](int64_t b, int64_t e) {
    const __m256 vss = _mm256_set1_ps(step_size), vib = _mm256_set1_ps(inv_bc2_sqrt);
    const __m256 vb1c = _mm256_set1_ps(b1c), vb1 = _mm256_set1_ps(b1);
    const __m256 vb2 = _mm256_set1_ps(b2), vb2c = _mm256_set1_ps(b2c);
    const __m256 veps = _mm256_set1_ps(eps_), vdecay = _mm256_set1_ps(decay), vwd = _mm256_set1_ps(wd);
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
      __m256 p = _mm256_loadu_ps(param + i), g = _mm256_loadu_ps(grad + i);
      __m256 mi = _mm256_loadu_ps(m + i), vi = _mm256_loadu_ps(v + i);
      if (decoupled_wd) p = _mm256_mul_ps(p, vdecay);
      else g = _mm256_fmadd_ps(vwd, p, g);
      const __m256 d = _mm256_sub_ps(g, mi);
      mi = lerp_from_m ? _mm256_fmadd_ps(vb1c, d, mi)                             // m + (1-b1)(g-m)
                       : _mm256_fnmadd_ps(vb1, d, g);                             // g - b1(g-m)
      vi = _mm256_fmadd_ps(_mm256_mul_ps(vb2c, g), g, _mm256_mul_ps(vb2, vi));   // v = b2 v + (1-b2) g^2
      __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(vi), vib, veps);             // sqrt(v)/sqrt(bc2) + eps
      p = _mm256_fnmadd_ps(vss, _mm256_div_ps(mi, denom), p);                    // p -= lr/bc1 * m/denom
      _mm256_storeu_ps(param + i, p);
      _mm256_storeu_ps(m + i, mi);
      _mm256_storeu_ps(v + i, vi);
    }
    for (; i < e; ++i) {
      float p = param[i], g = grad[i];
      if (decoupled_wd) p = p * decay; else g = g + wd * p;
      const float d = g - m[i];
      float mi = lerp_from_m ? m[i] + b1c * d : g - b1 * d;
      float vi = b2 * v[i] + b2c * g * g;
      float denom = std::sqrt(vi) * inv_bc2_sqrt + eps_;
      param[i] = p - step_size * (mi / denom);
      m[i] = mi;
      v[i] = vi;
    }
  });
}

}  // namespace fg::avx2
