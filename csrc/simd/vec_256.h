// The 8-float-lane vector type (__m256) and its API, written once and included *inside* a namespace
// by the headers of the ISAs that use it: vec_avx2.h (fg::avx2::Vf) and vec_avx512.h
// (fg::avx512::ymm::Vf, for the 8-lane code of the avx512 path, compiled with its flags: EVEX
// encodings, 32 registers). No include guard on purpose (one copy per namespace); include only
// through those headers, after <immintrin.h> and FG_VEC_INLINE. The API is listed in vec_avx2.h.

struct Vf {
  static constexpr int kLanes = 8;
  __m256 v;
};
struct Mf {
  __m256 m;
};
struct Vd {
  static constexpr int kLanes = 4;
  __m256d v;
};

FG_VEC_INLINE Vf set1(float a) { return {_mm256_set1_ps(a)}; }
FG_VEC_INLINE Vf zero() { return {_mm256_setzero_ps()}; }
FG_VEC_INLINE Vf loadu(const float* p) { return {_mm256_loadu_ps(p)}; }
FG_VEC_INLINE Vf load(const float* p) { return {_mm256_load_ps(p)}; }
FG_VEC_INLINE void storeu(float* p, Vf a) { _mm256_storeu_ps(p, a.v); }
FG_VEC_INLINE void stream(float* p, Vf a) { _mm256_stream_ps(p, a.v); }
// lanes i < n set (as integer mask for maskload/maskstore)
FG_VEC_INLINE __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
FG_VEC_INLINE Vf load_tail(const float* p, int64_t n) { return {_mm256_maskload_ps(p, tail_mask(n))}; }
FG_VEC_INLINE void store_tail(float* p, Vf a, int64_t n) { _mm256_maskstore_ps(p, tail_mask(n), a.v); }

// n lanes from p and `fill` in the others (never reads past p + n); lane_is(k): only lane k set
FG_VEC_INLINE Vf load_or(const float* p, int64_t n, Vf fill) {
  if (n >= Vf::kLanes) return loadu(p);
  const __m256i m = tail_mask(n);
  return {_mm256_blendv_ps(fill.v, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
}
FG_VEC_INLINE Mf lane_is(int64_t k) {
  return {_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(k))))};
}
FG_VEC_INLINE float lane0(Vf a) { return _mm256_cvtss_f32(a.v); }

FG_VEC_INLINE Vf operator+(Vf a, Vf b) { return {_mm256_add_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf operator-(Vf a, Vf b) { return {_mm256_sub_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf operator*(Vf a, Vf b) { return {_mm256_mul_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf operator/(Vf a, Vf b) { return {_mm256_div_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf fma(Vf a, Vf b, Vf c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vf fnma(Vf a, Vf b, Vf c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vf fms(Vf a, Vf b, Vf c) { return {_mm256_fmsub_ps(a.v, b.v, c.v)}; }
FG_VEC_INLINE Vf min(Vf a, Vf b) { return {_mm256_min_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf max(Vf a, Vf b) { return {_mm256_max_ps(a.v, b.v)}; }
FG_VEC_INLINE Vf sqrt(Vf a) { return {_mm256_sqrt_ps(a.v)}; }
FG_VEC_INLINE Vf abs(Vf a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v)}; }
FG_VEC_INLINE Vf round_nearest(Vf a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }

FG_VEC_INLINE Mf cmp_gt(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
FG_VEC_INLINE Mf cmp_ge(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GE_OQ)}; }
FG_VEC_INLINE Mf cmp_lt(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
FG_VEC_INLINE Mf cmp_le(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LE_OQ)}; }
FG_VEC_INLINE Mf cmp_eq(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ)}; }
FG_VEC_INLINE Mf cmp_neq(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_NEQ_OQ)}; }
FG_VEC_INLINE Mf is_nan(Vf a) { return {_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q)}; }
// true where !(a <= b), NaN included
FG_VEC_INLINE Mf cmp_nle(Vf a, Vf b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_NLE_UQ)}; }
FG_VEC_INLINE Mf operator|(Mf a, Mf b) { return {_mm256_or_ps(a.m, b.m)}; }
FG_VEC_INLINE Mf operator&(Mf a, Mf b) { return {_mm256_and_ps(a.m, b.m)}; }
FG_VEC_INLINE Vf select(Mf m, Vf a, Vf b) { return {_mm256_blendv_ps(b.v, a.v, m.m)}; }
FG_VEC_INLINE Vf and_(Mf m, Vf a) { return {_mm256_and_ps(m.m, a.v)}; }
FG_VEC_INLINE bool any(Mf m) { return _mm256_movemask_ps(m.m) != 0; }

// 2^n for integer-valued n in [-127, 128) (exponent-field construction)
FG_VEC_INLINE Vf pow2i(Vf n) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23))};
}
// v * 2^n for integral n with 2^n normal (vec_avx512.h: one vscalefps, the same bits)
FG_VEC_INLINE Vf mul_pow2(Vf v, Vf n) { return v * pow2i(n); }

FG_VEC_INLINE float reduce_add(Vf x) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(x.v), _mm256_extractf128_ps(x.v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
FG_VEC_INLINE float reduce_max(Vf x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x.v), _mm256_extractf128_ps(x.v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Double lanes, for sums that must not lose float precision (layernorm statistics, sum_squares).
FG_VEC_INLINE Vd set1_d(double a) { return {_mm256_set1_pd(a)}; }
FG_VEC_INLINE Vd zero_d() { return {_mm256_setzero_pd()}; }
FG_VEC_INLINE Vd widen_lo(Vf a) { return {_mm256_cvtps_pd(_mm256_castps256_ps128(a.v))}; }
FG_VEC_INLINE Vd widen_hi(Vf a) { return {_mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1))}; }
FG_VEC_INLINE Vd operator+(Vd a, Vd b) { return {_mm256_add_pd(a.v, b.v)}; }
FG_VEC_INLINE Vd operator-(Vd a, Vd b) { return {_mm256_sub_pd(a.v, b.v)}; }
FG_VEC_INLINE Vd operator*(Vd a, Vd b) { return {_mm256_mul_pd(a.v, b.v)}; }
FG_VEC_INLINE Vd fma(Vd a, Vd b, Vd c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
// lanes i < n of the double vector kept, the rest 0
FG_VEC_INLINE Vd keep_lanes_d(Vd a, int64_t n) {
  const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  return {_mm256_and_pd(_mm256_castsi256_pd(m), a.v)};
}
FG_VEC_INLINE double reduce_add(Vd a) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

