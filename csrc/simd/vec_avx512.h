// The vector type of the avx512 path (AVX-512 F/BW/VL/DQ): Vf = 16 float lanes, Vd = 8 double
// lanes, Mf = an opmask (__mmask16). The same API as vec_avx2.h (see there for the list and the
// NaN rule of min/max); tails use masked loads/stores, which never touch the masked-off memory.
// Include only from files compiled with the AVX-512 flags (*_avx512.cpp; an *_avx512bf16.cpp file
// defines FG_VEC_AVX512_NS as its own namespace first, so nothing is shared between the two flag sets).
// ymm::Vf: the 8-lane type of vec_256.h in the same namespace, for code that keeps 8-lane tiles on
// this path (attention_body.h).
#pragma once
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#ifndef FG_VEC_AVX512_NS
#define FG_VEC_AVX512_NS avx512
#endif

#define FG_VEC_INLINE __attribute__((always_inline)) inline

namespace fg::FG_VEC_AVX512_NS {

struct Vf {
  static constexpr int kLanes = 16;
  __m512 v;
};
struct Mf {
  __mmask16 m;
};
struct Vd {
  static constexpr int kLanes = 8;
  __m512d v;
};

FG_VEC_INLINE Vf set1(float a) { return {_mm512_set1_ps(a)}; }
FG_VEC_INLINE Vf zero() { return {_mm512_setzero_ps()}; }
FG_VEC_INLINE Vf loadu(const float* p) { return {_mm512_loadu_ps(p)}; }
FG_VEC_INLINE Vf load(const float* p) { return {_mm512_load_ps(p)}; }
FG_VEC_INLINE void storeu(float* p, Vf a) { _mm512_storeu_ps(p, a.v); }
FG_VEC_INLINE void stream(float* p, Vf a) { _mm512_stream_ps(p, a.v); }
FG_VEC_INLINE __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
FG_VEC_INLINE Vf load_tail(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(tail_mask(n), p)}; }
FG_VEC_INLINE void store_tail(float* p, Vf a, int64_t n) { _mm512_mask_storeu_ps(p, tail_mask(n), a.v); }

FG_VEC_INLINE Vf load_or(const float* p, int64_t n, Vf fill) {
  if (n >= Vf::kLanes) return loadu(p);
  return {_mm512_mask_loadu_ps(fill.v, tail_mask(n), p)};
}
FG_VEC_INLINE Mf lane_is(int64_t k) { return {static_cast<__mmask16>(1u << k)}; }
FG_VEC_INLINE float lane0(Vf a) { return _mm512_cvtss_f32(a.v); }

FG_VEC_INLINE Vf operator+(Vf a, Vf b) { return {_mm512_add_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf operator-(Vf a, Vf b) { return {_mm512_sub_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf operator*(Vf a, Vf b) { return {_mm512_mul_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf operator/(Vf a, Vf b) { return {_mm512_div_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf fma(Vf a, Vf b, Vf c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vf fnma(Vf a, Vf b, Vf c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vf fms(Vf a, Vf b, Vf c) { return {_mm512_fmsub_ps(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vf min(Vf a, Vf b) { return {_mm512_min_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf max(Vf a, Vf b) { return {_mm512_max_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf sqrt(Vf a) { return {_mm512_sqrt_ps(a.v)}; }
FG_VEC_INLINE Vf abs(Vf a) { return {_mm512_abs_ps(a.v)}; }
FG_VEC_INLINE Vf round_nearest(Vf a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }

FG_VEC_INLINE Mf cmp_gt(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
FG_VEC_INLINE Mf cmp_ge(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)}; }
FG_VEC_INLINE Mf cmp_lt(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
FG_VEC_INLINE Mf cmp_le(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ)}; }
FG_VEC_INLINE Mf cmp_eq(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ)}; }
FG_VEC_INLINE Mf cmp_neq(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_OQ)}; }
FG_VEC_INLINE Mf is_nan(Vf a) { return {_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q)}; }
FG_VEC_INLINE Mf cmp_nle(Vf a, Vf b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NLE_UQ)}; }
FG_VEC_INLINE Mf operator|(Mf a, Mf b) { return {static_cast<__mmask16>(a.m | b.m)}; }
FG_VEC_INLINE Mf operator&(Mf a, Mf b) { return {static_cast<__mmask16>(a.m & b.m)}; }
FG_VEC_INLINE Vf select(Mf m, Vf a, Vf b) { return {_mm512_mask_blend_ps(m.m, b.v, a.v)}; }
FG_VEC_INLINE Vf and_(Mf m, Vf a) { return {_mm512_maskz_mov_ps(m.m, a.v)}; }
FG_VEC_INLINE bool any(Mf m) { return m.m != 0; }

FG_VEC_INLINE Vf pow2i(Vf n) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127)), 23))};
}
// v * 2^n for integral n with 2^n normal: one instruction for v * pow2i(n), the same bits (one rounding)
FG_VEC_INLINE Vf mul_pow2(Vf v, Vf n) { return {_mm512_scalef_ps(v.v, n.v)}; }

// 16 -> 8 -> 4 lanes by halves, then the avx2 path's 4 -> 1 order
FG_VEC_INLINE __m128 fold_to_128_add(__m512 x) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
FG_VEC_INLINE float reduce_add(Vf x) {
  __m128 m = fold_to_128_add(x.v);
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
FG_VEC_INLINE float reduce_max(Vf x) {
  const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(x.v), _mm512_extractf32x8_ps(x.v, 1));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

FG_VEC_INLINE Vd set1_d(double a) { return {_mm512_set1_pd(a)}; }
FG_VEC_INLINE Vd zero_d() { return {_mm512_setzero_pd()}; }
FG_VEC_INLINE Vd widen_lo(Vf a) { return {_mm512_cvtps_pd(_mm512_castps512_ps256(a.v))}; }
FG_VEC_INLINE Vd widen_hi(Vf a) { return {_mm512_cvtps_pd(_mm512_extractf32x8_ps(a.v, 1))}; }
FG_VEC_INLINE Vd operator+(Vd a, Vd b) { return {_mm512_add_pd(a.v, b.v)}; }
FG_VEC_INLINE Vd operator-(Vd a, Vd b) { return {_mm512_sub_pd(a.v, b.v)}; }
FG_VEC_INLINE Vd operator*(Vd a, Vd b) { return {_mm512_mul_pd(a.v, b.v)}; }
FG_VEC_INLINE Vd fma(Vd a, Vd b, Vd c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vd keep_lanes_d(Vd a, int64_t n) {
  return {_mm512_maskz_mov_pd(static_cast<__mmask8>(n >= 8 ? 0xffu : n <= 0 ? 0u : (1u << n) - 1u), a.v)};
}
FG_VEC_INLINE double reduce_add(Vd a) {
  const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

}  // namespace fg::FG_VEC_AVX512_NS

namespace fg::FG_VEC_AVX512_NS {
#include "simd/vec_math.h"
}  // namespace fg::FG_VEC_AVX512_NS

namespace fg::FG_VEC_AVX512_NS::ymm {
#include "simd/vec_256.h"
#include "simd/vec_math.h"
}  // namespace fg::FG_VEC_AVX512_NS::ymm
