// float32 optimizer kernels (declared in optim.h) written once against the vector type of
// csrc/simd/vec_<isa>.h, included inside namespace fg::<isa> by optim_avx2.cpp and
// optim_avx512.cpp. Memory-bound: one read of each buffer, one write of each updated buffer.
// Tails are masked vectors through the same math, so an element's result does not depend on
// where a thread's chunk ends.

namespace opt_detail {
constexpr int64_t kGrain = int64_t(1) << 15;
}

// floats widened to double, 2 vectors per step in four accumulators; the tail masked
double sum_squares_chunk(const float* x, int64_t n) {
  constexpr int64_t L = Vf::kLanes;
  Vd a0 = zero_d(), a1 = zero_d(), a2 = zero_d(), a3 = zero_d();
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const Vf u = loadu(x + i), w = loadu(x + i + L);
    const Vd d0 = widen_lo(u), d1 = widen_hi(u), d2 = widen_lo(w), d3 = widen_hi(w);
    a0 = fma(d0, d0, a0);
    a1 = fma(d1, d1, a1);
    a2 = fma(d2, d2, a2);
    a3 = fma(d3, d3, a3);
  }
  for (; i < n; i += L) {  // padding lanes load as 0 and add 0
    const Vf u = load_tail(x + i, imin(L, n - i));
    const Vd d0 = widen_lo(u), d1 = widen_hi(u);
    a0 = fma(d0, d0, a0);
    a1 = fma(d1, d1, a1);
  }
  return reduce_add((a0 + a1) + (a2 + a3));
}

// Same arguments and math as the portable adam_step (optim.cpp); the lerp and the v update use
// fused multiply-adds.
void adam_step(float* param, float* m, float* v, const float* grad, int64_t N, int64_t step, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool decoupled_wd) {
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  const float step_size = float(lr / bc1), inv_bc2_sqrt = float(1.0 / std::sqrt(bc2));
  const float b1c = float(1.0 - beta1), b2 = float(beta2), b2c = float(1.0 - beta2), eps_ = float(eps);
  const bool lerp_from_m = b1c < 0.5f;                  // see the portable kernel (optim.cpp)
  const float b1 = float(beta1);
  const float decay = float(1.0 - lr * weight_decay), wd = float(weight_decay);
  parallel_for(N, opt_detail::kGrain, [&](int64_t b, int64_t e) {
    const Vf vss = set1(step_size), vib = set1(inv_bc2_sqrt), vb1c = set1(b1c), vb1 = set1(b1);
    const Vf vb2 = set1(b2), vb2c = set1(b2c), veps = set1(eps_), vdecay = set1(decay), vwd = set1(wd);
    for_each_vec(b, e, [&](int64_t i, int64_t n) {
      Vf p = load_n(param + i, n), g = load_n(grad + i, n);
      Vf mi = load_n(m + i, n), vi = load_n(v + i, n);
      if (decoupled_wd) p = p * vdecay;
      else g = fma(vwd, p, g);
      const Vf d = g - mi;
      mi = lerp_from_m ? fma(vb1c, d, mi)       // m + (1-b1)(g-m)
                       : fnma(vb1, d, g);       // g - b1(g-m)
      vi = fma(vb2c * g, g, vb2 * vi);          // v = b2 v + (1-b2) g^2
      const Vf denom = fma(sqrt(vi), vib, veps);  // sqrt(v)/sqrt(bc2) + eps
      p = fnma(vss, mi / denom, p);             // p -= lr/bc1 * m/denom
      store_n(param + i, p, n);
      store_n(m + i, mi, n);
      store_n(v + i, vi, n);
    });
  });
}

// The portable sgd_step's operations in the same order (no fused multiply-adds), so the same bits.
void sgd_step(float* param, float* m, const float* grad, int64_t N, double lr, double momentum, double weight_decay,
              bool nesterov, double dampening, bool first_step) {
  parallel_for(N, opt_detail::kGrain, [&](int64_t b, int64_t e) {
    const Vf lr_ = set1(float(lr)), mu = set1(float(momentum)), wd = set1(float(weight_decay));
    const Vf damp1 = set1(float(1.0 - dampening));
    for_each_vec(b, e, [&](int64_t i, int64_t n) {
      const Vf p = load_n(param + i, n);
      Vf g = load_n(grad + i, n);
      if (weight_decay != 0.0) g = g + wd * p;                            // L2: g += wd * p
      if (momentum != 0.0) {
        const Vf buf = first_step ? g : mu * load_n(m + i, n) + damp1 * g;  // buf = mu*buf + (1-dampening)*g
        store_n(m + i, buf, n);
        g = nesterov ? g + mu * buf : buf;
      }
      store_n(param + i, p - lr_ * g, n);
    });
  });
}
