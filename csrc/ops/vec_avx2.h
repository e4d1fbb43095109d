// Vector math shared by the AVX2 kernels. Include only from *_avx2.cpp files (compiled with
// -mavx2 -mfma).
#pragma once
#include <immintrin.h>

namespace fg::avx2 {

// exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r (rel. err
// ~2e-7), 2^n through the exponent bits. x < -87.3 gives 0 (this includes -inf), x > 88.72
// gives +inf (not the clamp's ~2e38), NaN gives NaN (the clamps alone would turn it into a
// finite value and let a NaN vanish, e.g. from a softmax). Those fix-ups run only for vectors
// with a lane outside |x| <= 87.3 (softmax rows of ordinary logits never have one): a branch
// is cheaper than the six blend/compare steps, and the results are the same bits either way.
__attribute__((always_inline)) inline __m256 exp8(__m256 x) {
  const __m256 x0 = x;
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x0);  // |x|; NaN compares as outside
  if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(ax, _mm256_set1_ps(87.3f), _CMP_NLE_UQ)) == 0, 1)) return res;
  const __m256 under = _mm256_cmp_ps(x0, lo, _CMP_LT_OQ);
  const __m256 big = _mm256_cmp_ps(x0, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ);
  const __m256 r2 = _mm256_blendv_ps(_mm256_andnot_ps(under, res), _mm256_set1_ps(__builtin_inff()), big);
  return _mm256_blendv_ps(r2, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));
}

// GELU, tanh approximation: gelu(x) = 0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
// gelu_sig8 gives s = sigmoid(2u) = 1 / (1 + exp(-2u)); exp overflow gives s = 0 exactly, never NaN
// (same math as the portable path in activations.cpp). Shared by the activation kernels and the
// GEMM epilogues (matmul_avx2.cpp), so fused and separate GELUs give the same bits.
__attribute__((always_inline)) inline __m256 gelu_sig8(__m256 v) {
  const __m256 v2 = _mm256_mul_ps(v, v);
  const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v2), v, v);  // x + c x^3
  const __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.f * 0.7978845608028654f), inner));
  return _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
}
__attribute__((always_inline)) inline __m256 gelu_tanh8(__m256 v) { return _mm256_mul_ps(v, gelu_sig8(v)); }
// gelu'(x) = s + 2 x s (1 - s) k (1 + 3 c x^2), k = sqrt(2/pi); where s saturates (s (1 - s) == 0)
// just s.
__attribute__((always_inline)) inline __m256 gelu_tanh_grad8(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 s = gelu_sig8(v);
  const __m256 sp = _mm256_mul_ps(s, _mm256_sub_ps(one, s));
  const __m256 poly = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(3.f * 0.044715f), v), v, one);
  const __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.f * 0.7978845608028654f), v), sp), poly, s);
  return _mm256_blendv_ps(g, s, _mm256_cmp_ps(sp, _mm256_setzero_ps(), _CMP_EQ_OQ));
}

// Horizontal reductions of one vector.
inline float hsum8(__m256 x) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline float hmax8(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline double hsum_pd(__m256d a) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

}  // namespace fg::avx2
