// Elementwise activations, forward and backward (see kernels.h); the math is math.h's.
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/math.h"

namespace fg::cuda {
namespace {

namespace cm = fg::cuda_math;

template <Act A>
__device__ __forceinline__ float fwd(float x) {
  if constexpr (A == Act::relu) return cm::relu(x);
  else if constexpr (A == Act::gelu_tanh) return cm::gelu_tanh(x);
  else if constexpr (A == Act::gelu_erf) return cm::gelu_erf(x);
  else if constexpr (A == Act::sigmoid) return cm::sigmoid(x);
  else return tanhf(x);
}

// dy times the derivative, from the input x (relu, gelu) or the output y (sigmoid, tanh)
template <Act A>
__device__ __forceinline__ float bwd(float dy, float x) {
  if constexpr (A == Act::relu) return x > 0.f ? dy : 0.f;
  else if constexpr (A == Act::gelu_tanh) return dy * cm::gelu_tanh_grad(x);
  else if constexpr (A == Act::gelu_erf) return dy * cm::gelu_erf_grad(x);
  else if constexpr (A == Act::sigmoid) return dy * x * (1.f - x);
  else return dy * ((1.f - x) * (1.f + x));  // 1 - y^2 without cancellation near |y| = 1
}

template <Act A>
__global__ void forward_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = fwd<A>(x[i]);
}

template <Act A>
__global__ void backward_kernel(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x,
                                int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = bwd<A>(dy[i], x[i]);
}

template <Act A>
void launch(bool backward, float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (backward) backward_kernel<A><<<grid_for(n), kThreads, 0, s>>>(out, a, b, n);
  else forward_kernel<A><<<grid_for(n), kThreads, 0, s>>>(out, a, n);
  check_launch(backward ? "activation backward" : "activation forward");
}

void dispatch(Act act, bool backward, float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  switch (act) {
    case Act::relu: return launch<Act::relu>(backward, out, a, b, n, s);
    case Act::gelu_tanh: return launch<Act::gelu_tanh>(backward, out, a, b, n, s);
    case Act::gelu_erf: return launch<Act::gelu_erf>(backward, out, a, b, n, s);
    case Act::sigmoid: return launch<Act::sigmoid>(backward, out, a, b, n, s);
    case Act::tanh: return launch<Act::tanh>(backward, out, a, b, n, s);
  }
}

}  // namespace

void act_forward(Act a, float* y, const float* x, int64_t N, cudaStream_t s) { dispatch(a, false, y, x, nullptr, N, s); }
void act_backward(Act a, float* dx, const float* dy, const float* x, int64_t N, cudaStream_t s) {
  dispatch(a, true, dx, dy, x, N, s);
}

}  // namespace fg::cuda
