// AVX2/FMA attention (float32): the tiled kernels of attention_impl.h compiled with
// -mavx2 -mfma (the tile loops over D and over keys vectorize to 8-wide FMAs) and a
// vectorized exp. Called only when the CPU has AVX2+FMA (see attention.cpp).
// -std=c++17 turns GCC's floating-point contraction off; the tile loops need a*b+c fused
// into FMAs, so turn it back on for this file (before any inline code is seen).
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include <immintrin.h>

#include <cmath>

#include "ops/attention.h"
#include "ops/attention_impl.h"

namespace fg::avx2 {

namespace {

// exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r (rel. err
// ~2e-7), 2^n through the exponent bits. x < -87.3 gives 0 (this includes -inf), NaN gives NaN.
inline __m256 exp8(__m256 x) {
  const __m256 x0 = x;
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
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
  // NaN in, NaN out: the clamps above would turn it into a finite value and let a NaN score
  // vanish from the softmax
  const __m256 res = _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  // overflow is +inf (not the clamp's ~2e38); NaN in, NaN out
  const __m256 big = _mm256_cmp_ps(x0, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ);
  const __m256 r2 = _mm256_blendv_ps(res, _mm256_set1_ps(__builtin_inff()), big);
  return _mm256_blendv_ps(r2, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));
}

struct Exp8 {
  void operator()(float* x, int64_t n) const {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, exp8(_mm256_loadu_ps(x + j)));
    if (j < n) {
      alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t t = j; t < n; ++t) buf[t - j] = x[t];
      _mm256_store_ps(buf, exp8(_mm256_load_ps(buf)));
      for (int64_t t = j; t < n; ++t) x[t] = buf[t - j];
    }
  }
};

}  // namespace

void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                       bool causal, float scale) {
  // fast paths: the head size as a compile-time constant lets the tile loops unroll fully
  switch (D) {
    case 32: return attn_detail::forward<32>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
    case 64: return attn_detail::forward<64>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
    case 128: return attn_detail::forward<128>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
    default: return attn_detail::forward<0>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* do_, const float* q,
                        const float* k, const float* v, const float* o, const float* lse,
                        int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                        bool causal, float scale) {
  switch (D) {
    case 32: return attn_detail::backward<32>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
    case 64: return attn_detail::backward<64>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
    case 128: return attn_detail::backward<128>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
    default: return attn_detail::backward<0>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
  }
}

}  // namespace fg::avx2
