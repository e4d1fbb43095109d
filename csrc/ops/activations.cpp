// Portable activation kernels and the run-time dispatch to the float32 SIMD versions
// (activations_body.h, compiled per ISA).
#include "ops/activations.h"

#include <cmath>
#include <type_traits>

#include "core/parallel.h"
#include "simd/dispatch.h"

namespace fg {

namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per thread below which we stay serial
}

template <typename T>
void relu_forward(T* y, const T* x, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(relu_forward, y, x, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    // x > 0 ? x : 0 keeps NaN as NaN (NaN > 0 is false, so write x only when it is NaN too)
    for (int64_t i = b; i < e; ++i) y[i] = (x[i] > T(0) || x[i] != x[i]) ? x[i] : T(0);
  });
}

template <typename T>
void relu_backward(T* dx, const T* dy, const T* x, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(relu_backward, dx, dy, x, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
  });
}

// The tanh form is evaluated as 0.5 (1 + tanh(u)) = sigmoid(2u) and 1 - tanh(u)^2 =
// 4 s (1 - s), s = sigmoid(2u): no cancellation where tanh(u) is near -1, and exp overflow
// gives s = 0 exactly (never NaN). The erf form uses Phi(x) = 0.5 erfc(-x / sqrt 2), accurate
// in the left tail too. One formula per quantity, shared by the forward, the backward and the
// training forward (so that y and dy * dydx have the bits of the other two).
namespace {
template <typename T> struct Gelu {
  static constexpr T k = T(0.7978845608028654), c = T(0.044715);
  static constexpr T r = T(0.7071067811865476), inv_sqrt_2pi = T(0.3989422804014327);
  static T tanh_e(T v) { return std::exp(T(-2) * k * (v + c * v * v * v)); }  // 1/s - 1
  static T tanh_y(T v, T e) { return v / (T(1) + e); }
  // d/dx: 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2) = s + 2 x s (1 - s) k (1 + 3 c x^2);
  // where s saturates to 0 or 1 the second term is 0 (not 0 * inf once x^2 overflows)
  static T tanh_grad(T v, T e) {
    const T s = T(1) / (T(1) + e);
    const T sp = s * (T(1) - s);
    return sp == T(0) ? s : s + T(2) * v * sp * k * (T(1) + T(3) * c * v * v);
  }
  static T erf_c(T v) { return std::erfc(-v * r); }  // 2 Phi(x)
  static T erf_y(T v, T ec) { return T(0.5) * v * ec; }
  // d/dx: Phi(x) + x phi(x)
  static T erf_grad(T v, T ec) { return T(0.5) * ec + v * inv_sqrt_2pi * std::exp(T(-0.5) * v * v); }
};
}  // namespace

template <typename T>
void gelu_forward(T* y, const T* x, int64_t N, bool approx_tanh) {
  if constexpr (std::is_same_v<T, float>) {
    if (approx_tanh) FG_SIMD_DISPATCH(gelu_tanh_forward, y, x, N);
    else FG_SIMD_DISPATCH(gelu_erf_forward, y, x, N);
  }
  using G = Gelu<T>;
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    if (approx_tanh) {
      for (int64_t i = b; i < e; ++i) y[i] = G::tanh_y(x[i], G::tanh_e(x[i]));
    } else {
      for (int64_t i = b; i < e; ++i) y[i] = G::erf_y(x[i], G::erf_c(x[i]));
    }
  });
}

template <typename T>
void gelu_backward(T* dx, const T* dy, const T* x, int64_t N, bool approx_tanh) {
  if constexpr (std::is_same_v<T, float>) {
    if (approx_tanh) FG_SIMD_DISPATCH(gelu_tanh_backward, dx, dy, x, N);
    else FG_SIMD_DISPATCH(gelu_erf_backward, dx, dy, x, N);
  }
  using G = Gelu<T>;
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    if (approx_tanh) {
      for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * G::tanh_grad(x[i], G::tanh_e(x[i]));
    } else {
      for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * G::erf_grad(x[i], G::erf_c(x[i]));
    }
  });
}

template <typename T>
void gelu_forward_with_grad(T* y, T* dydx, const T* x, int64_t N, bool approx_tanh) {
  if constexpr (std::is_same_v<T, float>) {
    if (approx_tanh) FG_SIMD_DISPATCH(gelu_tanh_forward_with_grad, y, dydx, x, N);
    else FG_SIMD_DISPATCH(gelu_erf_forward_with_grad, y, dydx, x, N);
  }
  using G = Gelu<T>;
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T v = x[i], t = approx_tanh ? G::tanh_e(v) : G::erf_c(v);
      y[i] = approx_tanh ? G::tanh_y(v, t) : G::erf_y(v, t);
      dydx[i] = approx_tanh ? G::tanh_grad(v, t) : G::erf_grad(v, t);
    }
  });
}

template <typename T>
void gelu_backward_from_grad(T* dx, const T* dy, const T* dydx, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(gelu_backward_from_grad, dx, dy, dydx, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * dydx[i];
  });
}

template <typename T>
void erf_forward(T* y, const T* x, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(erf_forward, y, x, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = std::erf(x[i]);
  });
}

template <typename T>
void erfc_forward(T* y, const T* x, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(erfc_forward, y, x, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = std::erfc(x[i]);
  });
}

template <typename T>
void sigmoid_forward(T* y, const T* x, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(sigmoid_forward, y, x, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    // exp(-x) overflows to Inf for very negative x, and 1/(1+Inf) = 0: correct, no NaN.
    for (int64_t i = b; i < e; ++i) y[i] = T(1) / (T(1) + std::exp(-x[i]));
  });
}

template <typename T>
void sigmoid_backward(T* dx, const T* dy, const T* y, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(sigmoid_backward, dx, dy, y, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
  });
}

template <typename T>
void tanh_forward(T* y, const T* x, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(tanh_forward, y, x, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = std::tanh(x[i]);
  });
}

template <typename T>
void tanh_backward(T* dx, const T* dy, const T* y, int64_t N) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(tanh_backward, dx, dy, y, N);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    // (1 - y)(1 + y), not 1 - y*y: near |y| = 1 the difference 1 - |y| is exact and y*y's
    // rounding would be magnified (float32 y = 0.99993 lost 6e-5 relative)
    for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * ((T(1) - y[i]) * (T(1) + y[i]));
  });
}

#define FG_INST(T)                                                                   \
  template void gelu_forward<T>(T*, const T*, int64_t, bool);                        \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t, bool);             \
  template void gelu_forward_with_grad<T>(T*, T*, const T*, int64_t, bool);          \
  template void gelu_backward_from_grad<T>(T*, const T*, const T*, int64_t);         \
  template void sigmoid_forward<T>(T*, const T*, int64_t);                           \
  template void erf_forward<T>(T*, const T*, int64_t);                               \
  template void erfc_forward<T>(T*, const T*, int64_t);                              \
  template void sigmoid_backward<T>(T*, const T*, const T*, int64_t);                \
  template void tanh_forward<T>(T*, const T*, int64_t);                              \
  template void tanh_backward<T>(T*, const T*, const T*, int64_t);
FG_INST(float)
FG_INST(double)
#undef FG_INST

template void relu_forward<float>(float*, const float*, int64_t);
template void relu_forward<double>(double*, const double*, int64_t);
template void relu_backward<float>(float*, const float*, const float*, int64_t);
template void relu_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace fg
