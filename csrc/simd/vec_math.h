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
// Two vectors as one (Vf2), for the math of one long dependency chain per vector (the exact GELU's
// polynomials): each operation is issued for both in turn, so that one vector's chain fills the
// other's FMA latency (GCC does not interleave two inlined calls by itself; measured 3% on the exact
// GELU). Each lane gets the single vector's bits. splat(like, c): set1 for either type.
struct Vf2 {
  Vf a, b;
};
struct Mf2 {
  Mf a, b;
};
FG_VEC_INLINE Vf splat(Vf, float c) { return set1(c); }
FG_VEC_INLINE Vf2 splat(Vf2, float c) { return {set1(c), set1(c)}; }
FG_VEC_INLINE Vf2 operator+(Vf2 x, Vf2 y) { return {x.a + y.a, x.b + y.b}; }
FG_VEC_INLINE Vf2 operator-(Vf2 x, Vf2 y) { return {x.a - y.a, x.b - y.b}; }
FG_VEC_INLINE Vf2 operator*(Vf2 x, Vf2 y) { return {x.a * y.a, x.b * y.b}; }
FG_VEC_INLINE Vf2 fma(Vf2 x, Vf2 y, Vf2 z) { return {fma(x.a, y.a, z.a), fma(x.b, y.b, z.b)}; }
FG_VEC_INLINE Vf2 fnma(Vf2 x, Vf2 y, Vf2 z) { return {fnma(x.a, y.a, z.a), fnma(x.b, y.b, z.b)}; }
FG_VEC_INLINE Vf2 fms(Vf2 x, Vf2 y, Vf2 z) { return {fms(x.a, y.a, z.a), fms(x.b, y.b, z.b)}; }
FG_VEC_INLINE Vf2 abs(Vf2 x) { return {abs(x.a), abs(x.b)}; }
FG_VEC_INLINE Vf2 round_nearest(Vf2 x) { return {round_nearest(x.a), round_nearest(x.b)}; }
FG_VEC_INLINE Vf2 mul_pow2(Vf2 x, Vf2 n) { return {mul_pow2(x.a, n.a), mul_pow2(x.b, n.b)}; }
FG_VEC_INLINE Mf2 cmp_lt(Vf2 x, Vf2 y) { return {cmp_lt(x.a, y.a), cmp_lt(x.b, y.b)}; }
FG_VEC_INLINE Vf2 select(Mf2 m, Vf2 x, Vf2 y) { return {select(m.a, x.a, y.a), select(m.b, x.b, y.b)}; }

// c[0] t^(N-1) + ... + c[N-1] by Horner's rule, one fma per coefficient (highest degree first)
template <typename V, int N>
FG_VEC_INLINE V horner(V t, const float (&c)[N]) {
  V p = splat(t, c[0]);
  for (int i = 1; i < N; ++i) p = fma(p, t, splat(t, c[i]));
  return p;
}

// e^r for |r| <= ln2/2 (plus a little): degree-6 polynomial, rel. err ~2e-7
FG_VEC_INLINE Vf exp_reduced(Vf r) {
  const Vf p = horner(r, {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                          1.6666665459e-1f, 5.0000001201e-1f});
  return fma(p, r * r, r + set1(1.f));
}
FG_VEC_INLINE Vf exp(Vf x) {
  const Vf x0 = x;
  const Vf lo = set1(-87.3f), hi = set1(88.7f);
  x = min(max(x, lo), hi);  // max(x, lo) is lo for NaN; the NaN is restored below
  const Vf n = round_nearest(x * set1(1.44269504088896341f));
  Vf r = fnma(n, set1(0.693359375f), x);  // x - n ln2 in two steps (Cody-Waite): the first is exact
  r = fnma(n, set1(-2.12194440e-4f), r);
  const Vf res = exp_reduced(r) * pow2i(n);
  if (__builtin_expect(!any(cmp_nle(abs(x0), set1(87.3f))), 1)) return res;  // NaN counts as outside
  const Vf r2 = select(cmp_gt(x0, set1(88.72283935546875f)), set1(__builtin_inff()),
                       select(cmp_lt(x0, lo), zero(), res));
  return select(is_nan(x0), x0, r2);
}

// e^x as the attention kernels' softmax takes it (attention_body.h on 8 lanes, the VDPBF16PS kernels
// of attention_avx512bf16.cpp on 16): 2^t, t = x log2(e) = n + r, |r| <= 1/2, a degree-5 minimax
// polynomial for 2^r (max rel. error 1.9e-7 in float32), times 2^n. Cheaper than exp above (no
// Cody-Waite split, no fix-up branch) for arguments that are scores minus their maximum. t is clamped
// to [-126, 127]; x < -87.33 (and -inf) gives exactly 0, so a visible key whose score is -inf gets no
// weight. NaN in, NaN out: max/min return their second operand when either is NaN, so the clamp is
// written with t second (a NaN score must poison its row), and the underflow test is false for NaN.
FG_VEC_INLINE Vf exp_softmax(Vf x) {
  Vf t = x * set1(1.44269504088896341f);
  t = min(set1(127.f), max(set1(-126.f), t));
  const Vf n = round_nearest(t);
  const Vf p = horner(t - n, {1.326472731e-03f, 9.671512991e-03f, 5.550733581e-02f, 2.402224243e-01f,
                              6.931470037e-01f, 1.f});
  return select(cmp_lt(x, set1(-87.33f)), zero(), p * pow2i(n));
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
// gelu'(x) = s + 2 x s (1 - s) k (1 + 3 c x^2), k = sqrt(2/pi), from s = gelu_sig(x); where s
// saturates (s (1 - s) == 0) just s.
FG_VEC_INLINE Vf gelu_tanh_grad(Vf v, Vf s) {
  const Vf one = set1(1.f);
  const Vf sp = s * (one - s);
  const Vf poly = fma(set1(3.f * 0.044715f) * v, v, one);
  const Vf g = fma((set1(2.f * 0.7978845608028654f) * v) * sp, poly, s);
  return select(cmp_eq(sp, zero()), s, g);
}
FG_VEC_INLINE Vf gelu_tanh_grad(Vf v) { return gelu_tanh_grad(v, gelu_sig(v)); }

// sigmoid(x) = 1 / (1 + e^-x): exp overflow for x < -88.7 gives 0 exactly (the true value is below
// 3e-39), never NaN; the same formula as the portable path.
FG_VEC_INLINE Vf sigmoid(Vf x) {
  const Vf one = set1(1.f);
  return one / (one + exp(zero() - x));
}
// tanh(x). For |x| < 0.625: x + x^3 P(x^2), P of degree 5 fitted here to (tanh(x)/x - 1)/x^2 on that
// interval (rel. err 1.3 * 2^-24 in float arithmetic; x = +-0 is returned as is: the fma would give +0 for
// -0). Above: 1 - 2 / (e^{2|x|} + 1), where
// the result is >= 0.55 so the subtraction does not cancel (2 ulp); e^{2|x|} overflow gives exactly +-1.
FG_VEC_INLINE Vf tanh(Vf x) {
  const Vf one = set1(1.f), a = abs(x), t = x * x;
  const Vf p = horner(t, {2.1426177117973566e-3f, -8.176896721124649e-3f, 2.17004232108593e-2f,
                          -5.3946688771247864e-2f, 1.333320438861847e-1f, -3.333333134651184e-1f});
  const Vf small = select(cmp_eq(x, zero()), x, fma(x * t, p, x));
  const Vf big = one - set1(2.f) / (exp(a + a) + one);  // NaN stays NaN here
  return select(cmp_lt(a, set1(0.625f)), small, select(cmp_lt(x, zero()), zero() - big, big));
}

// erf, erfc and the exact GELU, x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, and its derivative.
// For |z| < 1/2: erf(z) = z S(z^2) (S: degree 4, rel. err 1.4e-9 in exact arithmetic). Above:
// erfc(a) = e^{-a^2} t P(t), t = 1 / (1 + a/2) (P: degree 10 fitted here to erfc(a) e^{a^2} / t on
// a in [1/2, inf), rel. err 5e-9). e^{-a^2} is where float rounding would hurt: a^2 = 100 carries
// an error of 100 * 2^-24 into the exponent, i.e. 100 ulp. So a^2 is formed exactly as hi + lo
// (with an fma) and the exp takes both parts (the lo part is added after the Cody-Waite
// reduction). The exp's 2^n is applied
// as 2^n1 2^n2 so results in the subnormal range are rounded once, at the end. |z| is clamped at
// 10.5, past which erfc(z) is 0 in float.
namespace erf_detail {
constexpr float kCut = 0.5f, kClamp = 10.5f;
constexpr float kRs = 0.70710677f, kRsLo = 1.2101617041793133e-08f;  // 1/sqrt 2 = kRs + kRsLo
constexpr float kInvSqrt2Pi = 0.3989423f, kTwoOverSqrtPi = 1.1283792f;
FG_VEC_INLINE Vf erf_small(Vf s) {  // erf(z) / z at s = z^2, |z| < kCut
  return horner(s, {4.718085114e-03f, -2.675723768e-02f, 1.128282381e-01f, -3.761260864e-01f, 1.128379166e+00f});
}
FG_VEC_INLINE Vf mills(Vf a) {  // erfc(a) e^{a^2}, a >= kCut
  const Vf t = set1(1.f) / fma(a, set1(0.5f), set1(1.f));
  const Vf p = horner(t, {2.511408185e-02f, -1.641252729e-01f, 3.770600873e-01f, -3.489023287e-01f,
                          7.426940893e-02f, -3.980036454e-02f, 8.953889999e-02f, 1.757662825e-01f,
                          2.468586928e-01f, 2.820943210e-01f, 2.820947932e-01f});
  return t * p;
}
// e^{-(a + al)^2} = p s1 s2 for a in [0, kClamp], |al| <= ulp(a)
FG_VEC_INLINE Vf exp_neg_sq(Vf a, Vf al, Vf* s1, Vf* s2) {
  const Vf h = a * a;
  const Vf l = fma(a, a, zero() - h) + (a + a) * al;  // a^2 - h exactly, plus the cross term
  const Vf n = round_nearest(h * set1(-1.44269504088896341f));
  Vf r = fnma(n, set1(0.693359375f), zero() - h);
  r = fnma(n, set1(-2.12194440e-4f), r) - l;
  const Vf n1 = round_nearest(n * set1(0.5f));
  *s1 = pow2i(n1);
  *s2 = pow2i(n - n1);
  return exp_reduced(r);
}
// The pieces shared by erf / erfc / GELU for z = zh + zl.
struct Parts {
  Vf a0;      // |zh|
  Vf q;       // erfc(|z|) = q s1 s2 (meaningful for |z| >= kCut)
  Vf p;       // e^{-z^2} = p s1 s2
  Vf m;       // erfc(|z|) e^{z^2}
  Vf s1, s2;
  Vf erf_c;   // erf(z) for |z| < kCut
  Mf inside;  // |zh| < kClamp
};
FG_VEC_INLINE Parts parts(Vf zh, Vf zl) {
  Parts r;
  r.a0 = abs(zh);
  r.inside = cmp_lt(r.a0, set1(kClamp));
  zl = and_(r.inside, zl);  // (zl is NaN for infinite zh)
  const Vf a = min(r.a0, set1(kClamp));  // NaN -> kClamp: the caller keeps the NaN
  const Vf al = select(cmp_lt(zh, zero()), zero() - zl, zl);
  r.p = exp_neg_sq(a, al, &r.s1, &r.s2);
  r.m = mills(a);
  r.q = r.p * r.m;
  r.erf_c = fma(zh, erf_small(zh * zh), zl * set1(kTwoOverSqrtPi));
  return r;
}
}  // namespace erf_detail

FG_VEC_INLINE Vf erf(Vf z) {
  using namespace erf_detail;
  const Parts P = parts(z, zero());
  const Vf big = set1(1.f) - (P.q * P.s1) * P.s2;  // 1 - erfc(|z|)
  const Vf r = select(cmp_lt(P.a0, set1(kCut)), P.erf_c, select(cmp_lt(z, zero()), zero() - big, big));
  return select(is_nan(z) | cmp_eq(z, zero()), z, r);  // (NaN, and -0 keeps its sign)
}
FG_VEC_INLINE Vf erfc(Vf z) {
  using namespace erf_detail;
  const Parts P = parts(z, zero());
  const Vf e = (P.q * P.s1) * P.s2;
  const Vf r = select(cmp_lt(P.a0, set1(kCut)), set1(1.f) - P.erf_c, select(cmp_lt(z, zero()), set1(2.f) - e, e));
  return select(is_nan(z), z, r);
}
// The exact GELU, x Phi(x), and its derivative Phi(x) + x phi(x). With a = |x|, Phi(-a) =
// e^{-a^2/2} R(a), R(a) = Phi(-a) e^{a^2/2} (a Mills ratio). e^{-x^2/2} = 2^n (1 + w) with x^2
// carried as hi + lo (as in exp_neg_sq) and w = e^r - 1 never rounded against 1, so Phi(-a) =
// 2^n (R + R w) = 2^n q. Phi(x) is Phi(-a) for x < 0 and 1 - Phi(-a) (>= 1/2: no cancellation)
// otherwise; gelu'(x) likewise d or 1 - d, d = Phi(-a) - a phi(a) = 2^n (k + k w), k = R(a) - a /
// sqrt(2 pi). On the central range a <= kCentral (4.5), where typical activations (randn * scale)
// lie, R is one polynomial in a - kCentral / 2 (degree 14, float coefficients fitted here, rel. err
// ~5e-8 evaluated in float): no division, no erf / erfc regions. A vector with a lane outside (or
// NaN) runs the tail form too, for those lanes only, so each lane's bits depend on its x alone (not on
// where a thread's chunk ends): R = mills(a / sqrt 2) / 2, a clamped at kClampX past which the
// results are x or 0, 2^n applied as 2^n1 2^n2 last so that subnormal results are rounded once.
// Measured: gelu 2.9 ulp, gelu' 3.2 ulp over tests/test_erf.py's sweep.
namespace erf_detail {
constexpr float kCentral = 4.5f, kClampX = 14.85f;  // Phi(-14.85) x < 2^-150
template <typename V>
FG_VEC_INLINE V mills_central(V a) {  // R(a) for 0 <= a <= kCentral
  return horner(a - splat(a, 0.5f * kCentral),
                {8.426415121e-10f, -4.778100582e-09f, 8.796019024e-09f, -3.500276335e-08f, 2.716423353e-07f,
                 -1.293394462e-06f, 5.354695077e-06f, -2.276511623e-05f, 9.448728088e-05f, -3.734058992e-04f,
                 1.406771829e-03f, -5.031194538e-03f, 1.694735885e-02f, -5.322543159e-02f, 1.536519378e-01f});
}
// The shared pieces for a = |x| <= kClampX: e^{-a^2/2} = 2^n (1 + w), R(a). (kTail: Vf only)
template <typename V>
struct GeluParts {
  V a, w, n, R;
};
template <bool kTail, typename V>
FG_VEC_INLINE GeluParts<V> gelu_parts(V x) {
  GeluParts<V> g;
  g.a = abs(x);
  V a = g.a;
  if constexpr (kTail) a = min(g.a, set1(kClampX));  // NaN -> kClampX: the caller keeps the NaN
  const V h = a * a;
  const V l = fms(a, a, h);  // a^2 - h exactly
  g.n = round_nearest(h * splat(x, -0.5f * 1.44269504088896341f));
  // r = -a^2/2 - n ln2 = -(u + v)/2: u = h + 2n ln2_hi exactly (Cody-Waite), v = l + 2n ln2_lo, one
  // rounding in u + v, and the halving exact (an add for one of the four multiply-unit operations of
  // -h/2 - n ln2_hi - n ln2_lo - l/2)
  const V u = fma(g.n, splat(x, 2 * 0.693359375f), h), v = fma(g.n, splat(x, 2 * -2.12194440e-4f), l);
  const V r = (u + v) * splat(x, -0.5f);
  // (e^r - 1 - r) / r^2 by degree 4 (abs. err 7e-8; times r^2 <= 0.12 that is 8e-9 in w)
  const V p = horner(r, {1.3945506653e-03f, 8.3635253832e-03f, 4.1666321456e-02f, 1.6666574776e-01f, 0.5f});
  g.w = fma(p, r * r, r);
  g.R = mills_central(a);
  if constexpr (kTail) g.R = select(cmp_le(g.a, set1(kCentral)), g.R, set1(0.5f) * mills(a * set1(kRs)));
  return g;
}
// gelu(x) and gelu'(x) where every lane is in the central range; neg: x < 0
template <typename V, typename M>
FG_VEC_INLINE V gelu_erf_central(V x, M neg, V* dydx) {
  const GeluParts<V> g = gelu_parts<false>(x);
  const V one = splat(x, 1.f);
  const V q = mul_pow2(fma(g.R, g.w, g.R), g.n);  // Phi(-a)
  const V k = fnma(g.a, splat(x, kInvSqrt2Pi), g.R);
  const V d = mul_pow2(fma(k, g.w, k), g.n);  // Phi(-a) - a phi(a)
  *dydx = select(neg, d, one - d);
  return x * select(neg, q, one - q);
}
FG_VEC_INLINE Mf outside_central(Vf x) { return cmp_nle(abs(x), set1(kCentral)); }  // NaN counts as outside
// 2^n = s1 s2 with s2 = 1 where 2^n is normal (the central range)
FG_VEC_INLINE void split_pow2(Vf n, Vf* s1, Vf* s2) {
  const Vf n1 = max(n, set1(-100.f));
  *s1 = pow2i(n1);
  *s2 = pow2i(n - n1);
}
// Phi(x) past the clamp: 1 or 0. There gelu(x) = x Phi(x) (NaN at -inf: -inf * 0) and gelu'(x) =
// Phi(x) + x * 0 (NaN at +-inf), as the portable path, the CUDA kernels and PyTorch.
FG_VEC_INLINE Vf step(Vf x) { return select(cmp_gt(x, zero()), set1(1.f), zero()); }
}  // namespace erf_detail

// y = gelu(x) and *dydx = gelu'(x) from one evaluation of the shared parts (the training forward,
// whose backward is then dx = dy * dydx): the derivative costs a few FMAs more. y has the bits of
// gelu_erf(x) (which is this with dydx unused: the compiler drops its steps), dydx those of
// gelu_erf_backward(1, x).
FG_VEC_INLINE Vf gelu_erf_with_grad(Vf x, Vf* dydx) {
  using namespace erf_detail;
  const Vf one = set1(1.f);
  const Mf neg = cmp_lt(x, zero()), out = outside_central(x);
  if (__builtin_expect(!any(out), 1)) return gelu_erf_central(x, neg, dydx);
  const GeluParts<Vf> g = gelu_parts<true>(x);
  Vf s1, s2;
  split_pow2(g.n, &s1, &s2);
  const Mf clamped = cmp_lt(g.a, set1(kClampX));
  const Vf q = fma(g.R, g.w, g.R);
  const Vf y = x * select(neg, q * s1, one - q * s1);  // the central lanes, as above
  const Vf y_t = select(neg, ((x * q) * s1) * s2, x * (one - (q * s1) * s2));
  const Vf k = fnma(min(g.a, set1(kClampX)), set1(kInvSqrt2Pi), g.R);
  const Vf f = fma(k, g.w, k);
  const Vf d = select(neg, f * s1, one - f * s1);
  const Vf d_t = select(neg, (f * s1) * s2, one - (f * s1) * s2);
  *dydx = select(out, select(clamped, d_t, step(x) + x * zero()), d);
  return select(out, select(clamped, y_t, x * step(x)), y);
}
// Two vectors interleaved where both are central, else one by one
FG_VEC_INLINE Vf2 gelu_erf_with_grad(Vf2 x, Vf2* dydx) {
  using namespace erf_detail;
  if (__builtin_expect(!any(outside_central(x.a) | outside_central(x.b)), 1))
    return gelu_erf_central(x, cmp_lt(x, splat(x, 0.f)), dydx);
  return {gelu_erf_with_grad(x.a, &dydx->a), gelu_erf_with_grad(x.b, &dydx->b)};
}
template <typename V>
FG_VEC_INLINE V gelu_erf(V x) {
  V unused;
  return gelu_erf_with_grad(x, &unused);
}
FG_VEC_INLINE Vf gelu_erf_backward(Vf dy, Vf x) {
  using namespace erf_detail;
  const Mf neg = cmp_lt(x, zero()), out = outside_central(x);
  if (__builtin_expect(!any(out), 1)) {
    const GeluParts<Vf> g = gelu_parts<false>(x);
    const Vf k = fnma(g.a, set1(kInvSqrt2Pi), g.R);
    const Vf d = mul_pow2(fma(k, g.w, k), g.n);  // Phi(-a) - a phi(a)
    return dy * select(neg, d, set1(1.f) - d);
  }
  const GeluParts<Vf> g = gelu_parts<true>(x);
  Vf s1, s2;
  split_pow2(g.n, &s1, &s2);
  const Vf k = fnma(min(g.a, set1(kClampX)), set1(kInvSqrt2Pi), g.R);
  const Vf f = fma(k, g.w, k);
  const Vf d = dy * select(neg, f * s1, set1(1.f) - f * s1);  // the central lanes, as above
  const Vf d_t = select(neg, ((dy * f) * s1) * s2, dy * (set1(1.f) - (f * s1) * s2));
  return select(out, select(cmp_lt(g.a, set1(kClampX)), d_t, dy * (step(x) + x * zero())), d);
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

// Small helpers that per-ISA code uses instead of std:: templates: an instance of std::min<long>
// or std::vector<float>::resize made in an AVX2 file is a weak symbol, and the linker keeps one
// copy for the whole module, possibly the AVX2 one for the portable callers too (issue 22;
// tools/check_isa_symbols.py checks the objects). These live in namespace fg::<isa>.
FG_VEC_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
FG_VEC_INLINE int64_t imax(int64_t a, int64_t b) { return a < b ? b : a; }
// A growable, 64-byte aligned float buffer for per-thread scratch; get(n) may discard the contents.
struct FloatBuf {
  float* p = nullptr;
  size_t n = 0;
  FloatBuf() = default;
  FloatBuf(const FloatBuf&) = delete;
  FloatBuf& operator=(const FloatBuf&) = delete;
  ~FloatBuf() { std::free(p); }
  float* get(size_t need) {
    if (need > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64));
      n = p ? need : 0;
      if (!p) throw std::bad_alloc();
    }
    return p;
  }
};
