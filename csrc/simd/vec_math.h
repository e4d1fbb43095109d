// Vector math written once against the Vf API (exp, the tanh-form GELU), included by each
// csrc/simd/vec_<isa>.h *inside* its namespace fg::<isa>: every function here exists once per
// ISA, compiled with that ISA's flags, and is never shared between flag sets. No include guard
// on purpose (one copy per namespace); include only through vec_<isa>.h.

// exp(x): x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r (rel. err ~2e-7), 2^n through
// the exponent bits. x < -87.3 gives 0 (this includes -inf), x > 88.72 gives +inf (not the clamp's
// ~2e38), NaN gives NaN (the clamps alone would turn it into a finite value and let a NaN vanish,
// e.g. from a softmax). Those fix-ups run only for vectors with a lane outside |x| <= 87.3
// (softmax rows of ordinary logits never have one): a branch is cheaper than the six blend and
// compare steps, and the results are the same bits either way. Every lane is computed with the
// same operations on every ISA, so exp gives the same bits on avx2 and avx512.
FG_VEC_INLINE Vf exp(Vf x) {
  const Vf x0 = x;
  const Vf lo = set1(-87.3f), hi = set1(88.7f);
  x = min(max(x, lo), hi);  // max(x, lo) is lo for NaN; the NaN is restored below
  const Vf n = round_nearest(x * set1(1.44269504088896341f));
  Vf r = fnma(n, set1(0.693359375f), x);
  r = fnma(n, set1(-2.12194440e-4f), r);
  Vf p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  p = fma(p, r * r, r + set1(1.f));
  const Vf res = p * pow2i(n);
  if (__builtin_expect(!any(cmp_nle(abs(x0), set1(87.3f))), 1)) return res;  // NaN counts as outside
  const Vf r2 = select(cmp_gt(x0, set1(88.72283935546875f)), set1(__builtin_inff()),
                       select(cmp_lt(x0, lo), zero(), res));
  return select(is_nan(x0), x0, r2);
}

// GELU, tanh approximation: gelu(x) = 0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
// gelu_sig gives s = sigmoid(2u) = 1 / (1 + exp(-2u)); exp overflow gives s = 0 exactly, never NaN
// (same math as the portable path in activations.cpp).
FG_VEC_INLINE Vf gelu_sig(Vf v) {
  const Vf inner = fma(set1(0.044715f) * (v * v), v, v);  // x + c x^3
  const Vf e = exp(set1(-2.f * 0.7978845608028654f) * inner);
  return set1(1.f) / (set1(1.f) + e);
}
FG_VEC_INLINE Vf gelu_tanh(Vf v) { return v * gelu_sig(v); }
// gelu'(x) = s + 2 x s (1 - s) k (1 + 3 c x^2), k = sqrt(2/pi); where s saturates (s (1 - s) == 0)
// just s.
FG_VEC_INLINE Vf gelu_tanh_grad(Vf v) {
  const Vf one = set1(1.f);
  const Vf s = gelu_sig(v);
  const Vf sp = s * (one - s);
  const Vf poly = fma(set1(3.f * 0.044715f) * v, v, one);
  const Vf g = fma((set1(2.f * 0.7978845608028654f) * v) * sp, poly, s);
  return select(cmp_eq(sp, zero()), s, g);
}

// Runs f(i, n) over [b, e) in vectors: n = kLanes for full vectors, then once with the tail count
// 0 < n < kLanes. Kernels use load_tail / store_tail with that n, so a tail goes through the same
// math as a full vector and results do not depend on where a chunk ends.
template <typename F>
FG_VEC_INLINE void for_each_vec(int64_t b, int64_t e, F&& f) {
  int64_t i = b;
  for (; i + Vf::kLanes <= e; i += Vf::kLanes) f(i, int64_t{Vf::kLanes});
  if (i < e) f(i, e - i);
}
// Loads / stores of n lanes: the full-width instruction when n == kLanes, masked otherwise.
FG_VEC_INLINE Vf load_n(const float* p, int64_t n) { return n == Vf::kLanes ? loadu(p) : load_tail(p, n); }
FG_VEC_INLINE void store_n(float* p, Vf v, int64_t n) {
  if (n == Vf::kLanes) storeu(p, v);
  else store_tail(p, v, n);
}
