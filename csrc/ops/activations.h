// Elementwise activations, forward and backward side by side.
//   x, y, dy, dx: (N,) flat, contiguous.
// Backward kernels overwrite (=) dx. The float32 SIMD variants are written once in
// activations_body.h, compiled per ISA, and chosen at run time by the dispatching functions here.
#pragma once
#include <cstdint>

#include "simd/dispatch.h"

namespace fg {

template <typename T> void relu_forward(T* y, const T* x, int64_t N);
template <typename T> void relu_backward(T* dx, const T* dy, const T* x, int64_t N);

// GELU: y = x * Phi(x) (approx_tanh=false, exact erf) or
//       y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (approx_tanh=true).
// Backward takes the input x: dx = dy * gelu'(x).
template <typename T> void gelu_forward(T* y, const T* x, int64_t N, bool approx_tanh);
template <typename T> void gelu_backward(T* dx, const T* dy, const T* x, int64_t N, bool approx_tanh);
// The training forward: y and dydx = gelu'(x) in one pass (the derivative shares the exp and the
// polynomial), saved instead of x; the backward is then gelu_backward_from_grad: dx = dy * dydx.
// y has the bits of gelu_forward's, dy * dydx those of gelu_backward's dx (the erf form's float32
// SIMD paths: except where dydx or dx is subnormal, x below about -13: dydx is rounded once more).
template <typename T> void gelu_forward_with_grad(T* y, T* dydx, const T* x, int64_t N, bool approx_tanh);
template <typename T> void gelu_backward_from_grad(T* dx, const T* dy, const T* dydx, int64_t N);
// erf and erfc elementwise (float32 SIMD: within a few ulp of the float64 values).
template <typename T> void erf_forward(T* y, const T* x, int64_t N);
template <typename T> void erfc_forward(T* y, const T* x, int64_t N);
// Sigmoid and tanh: backward takes the forward OUTPUT y (as PyTorch's sigmoid_backward):
//   sigmoid: dx = dy * y * (1 - y);   tanh: dx = dy * (1 - y^2).
template <typename T> void sigmoid_forward(T* y, const T* x, int64_t N);
template <typename T> void sigmoid_backward(T* dx, const T* dy, const T* y, int64_t N);
template <typename T> void tanh_forward(T* y, const T* x, int64_t N);
template <typename T> void tanh_backward(T* dx, const T* dy, const T* y, int64_t N);

// float32 SIMD versions: activations_body.h, compiled once per ISA (activations_<isa>.cpp).
FG_SIMD_DECLARE(
void relu_forward(float* y, const float* x, int64_t N);
void relu_backward(float* dx, const float* dy, const float* x, int64_t N);
void gelu_tanh_forward(float* y, const float* x, int64_t N);
void gelu_tanh_backward(float* dx, const float* dy, const float* x, int64_t N);
void gelu_erf_forward(float* y, const float* x, int64_t N);
void gelu_erf_backward(float* dx, const float* dy, const float* x, int64_t N);
void gelu_tanh_forward_with_grad(float* y, float* dydx, const float* x, int64_t N);
void gelu_erf_forward_with_grad(float* y, float* dydx, const float* x, int64_t N);
void gelu_backward_from_grad(float* dx, const float* dy, const float* dydx, int64_t N);
void erf_forward(float* y, const float* x, int64_t N);
void erfc_forward(float* y, const float* x, int64_t N);
void sigmoid_forward(float* y, const float* x, int64_t N);
void sigmoid_backward(float* dx, const float* dy, const float* y, int64_t N);
void tanh_forward(float* y, const float* x, int64_t N);
void tanh_backward(float* dx, const float* dy, const float* y, int64_t N);
)

}  // namespace fg
