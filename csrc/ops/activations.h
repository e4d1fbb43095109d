// Elementwise activations, forward and backward side by side.
//   x, y, dy, dx: (N,) flat, contiguous.
// Backward kernels overwrite (=) dx. The *_avx2 variants (float only) live in
// activations_avx2.cpp and are chosen at run time by the dispatching functions here.
#pragma once
#include <cstdint>

namespace fg {

template <typename T> void relu_forward(T* y, const T* x, int64_t N);
template <typename T> void relu_backward(T* dx, const T* dy, const T* x, int64_t N);

namespace avx2 {
void relu_forward(float* y, const float* x, int64_t N);
void relu_backward(float* dx, const float* dy, const float* x, int64_t N);
}  // namespace avx2

}  // namespace fg
