// Activation kernels (float32) written once against the vector type of csrc/simd/vec_<isa>.h.
// Included inside namespace fg::<isa> by activations_avx2.cpp and activations_avx512.cpp (which
// include the headers used here first), so each ISA gets its own copy compiled with its flags.
// Every element, tails included, goes through the same vector math (a tail is a masked vector):
// results do not depend on where the threads' chunks end.

namespace act_detail {
constexpr int64_t kGrain = 1 << 15;
constexpr int64_t kGeluGrain = 1 << 13;  // GELU does ~30 flops per element: split earlier

// y = f(x) elementwise, and dx = dy * g(x)
template <typename F>
inline void map1(float* y, const float* x, int64_t N, int64_t grain, F f) {
  parallel_for(N, grain, [&](int64_t b, int64_t e) {
    for_each_vec(b, e, [&](int64_t i, int64_t n) { store_n(y + i, f(load_n(x + i, n)), n); });
  });
}
template <typename F>
inline void map2(float* dx, const float* dy, const float* x, int64_t N, int64_t grain, F f) {
  parallel_for(N, grain, [&](int64_t b, int64_t e) {
    for_each_vec(b, e, [&](int64_t i, int64_t n) { store_n(dx + i, f(load_n(dy + i, n), load_n(x + i, n)), n); });
  });
}
// y = f(x) and d = g(x) from one evaluation: f(v, &g) returns y and sets g. kPairs: f also takes
// Vf2 (vec_math.h), and runs on two vectors at a time, then on the last vector and the tail.
template <bool kPairs = false, typename F>
inline void map1_both(float* y, float* d, const float* x, int64_t N, int64_t grain, F f) {
  parallel_for(N, grain, [&](int64_t b, int64_t e) {
    constexpr int64_t L = Vf::kLanes;
    int64_t i = b;
    if constexpr (kPairs) {
      for (; i + 2 * L <= e; i += 2 * L) {
        Vf2 g;
        const Vf2 v = f(Vf2{loadu(x + i), loadu(x + i + L)}, &g);
        storeu(y + i, v.a);
        storeu(y + i + L, v.b);
        storeu(d + i, g.a);
        storeu(d + i + L, g.b);
      }
    }
    for_each_vec(i, e, [&](int64_t j, int64_t n) {
      Vf g;
      const Vf v = f(load_n(x + j, n), &g);
      store_n(y + j, v, n);
      store_n(d + j, g, n);
    });
  });
}
// map1 through a pairwise f (as map1_both's kPairs)
template <typename F>
inline void map1_pairs(float* y, const float* x, int64_t N, int64_t grain, F f) {
  parallel_for(N, grain, [&](int64_t b, int64_t e) {
    constexpr int64_t L = Vf::kLanes;
    int64_t i = b;
    for (; i + 2 * L <= e; i += 2 * L) {
      const Vf2 v = f(Vf2{loadu(x + i), loadu(x + i + L)});
      storeu(y + i, v.a);
      storeu(y + i + L, v.b);
    }
    for_each_vec(i, e, [&](int64_t j, int64_t n) { store_n(y + j, f(load_n(x + j, n)), n); });
  });
}
}  // namespace act_detail

// max(0, x) with x as the second operand returns x when x is NaN (and -0 for -0)
void relu_forward(float* y, const float* x, int64_t N) {
  act_detail::map1(y, x, N, act_detail::kGrain, [](Vf v) { return max(zero(), v); });
}

void relu_backward(float* dx, const float* dy, const float* x, int64_t N) {
  act_detail::map2(dx, dy, x, N, act_detail::kGrain, [](Vf g, Vf v) { return and_(cmp_gt(v, zero()), g); });
}

void gelu_tanh_forward(float* y, const float* x, int64_t N) {
  act_detail::map1(y, x, N, act_detail::kGeluGrain, [](Vf v) { return gelu_tanh(v); });  // x sigmoid(2u)
}

void gelu_tanh_backward(float* dx, const float* dy, const float* x, int64_t N) {
  act_detail::map2(dx, dy, x, N, act_detail::kGeluGrain, [](Vf g, Vf v) { return g * gelu_tanh_grad(v); });
}

// The training forward: y and dydx = gelu'(x) (the bits of the backward kernels' factor), so the
// backward is gelu_backward_from_grad's product
void gelu_tanh_forward_with_grad(float* y, float* dydx, const float* x, int64_t N) {
  act_detail::map1_both(y, dydx, x, N, act_detail::kGeluGrain, [](Vf v, Vf* d) {
    const Vf s = gelu_sig(v);
    *d = gelu_tanh_grad(v, s);
    return v * s;
  });
}

void gelu_erf_forward_with_grad(float* y, float* dydx, const float* x, int64_t N) {
  act_detail::map1_both<true>(y, dydx, x, N, act_detail::kGeluGrain,
                              [](auto v, auto* d) { return gelu_erf_with_grad(v, d); });
}

// dx = dy * dydx
void gelu_backward_from_grad(float* dx, const float* dy, const float* dydx, int64_t N) {
  act_detail::map2(dx, dy, dydx, N, act_detail::kGrain, [](Vf g, Vf d) { return g * d; });
}

void gelu_erf_forward(float* y, const float* x, int64_t N) {
  act_detail::map1_pairs(y, x, N, act_detail::kGeluGrain, [](auto v) { return gelu_erf(v); });
}

void gelu_erf_backward(float* dx, const float* dy, const float* x, int64_t N) {
  act_detail::map2(dx, dy, x, N, act_detail::kGeluGrain, [](Vf g, Vf v) { return gelu_erf_backward(g, v); });
}

void erf_forward(float* y, const float* x, int64_t N) {
  act_detail::map1(y, x, N, act_detail::kGeluGrain, [](Vf v) { return erf(v); });
}

void erfc_forward(float* y, const float* x, int64_t N) {
  act_detail::map1(y, x, N, act_detail::kGeluGrain, [](Vf v) { return erfc(v); });
}

void sigmoid_forward(float* y, const float* x, int64_t N) {
  act_detail::map1(y, x, N, act_detail::kGeluGrain, [](Vf v) { return sigmoid(v); });
}

// dy y (1 - y), from the forward output
void sigmoid_backward(float* dx, const float* dy, const float* y, int64_t N) {
  act_detail::map2(dx, dy, y, N, act_detail::kGrain, [](Vf g, Vf v) { return g * v * (set1(1.f) - v); });
}

void tanh_forward(float* y, const float* x, int64_t N) {
  act_detail::map1(y, x, N, act_detail::kGeluGrain, [](Vf v) { return tanh(v); });
}

// dy (1 - y)(1 + y): near |y| = 1 the factor 1 - |y| is exact, y*y's rounding is not (activations.cpp)
void tanh_backward(float* dx, const float* dy, const float* y, int64_t N) {
  act_detail::map2(dx, dy, y, N, act_detail::kGrain,
                   [](Vf g, Vf v) { return g * ((set1(1.f) - v) * (set1(1.f) + v)); });
}
