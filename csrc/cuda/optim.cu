// Fused optimizer steps (one pass over param, grad and the state) and sum of squares for
// clip_grad_norm_ (see kernels.h). The per-element Adam math is math.h's, shared with the host test.
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/math.h"

namespace fg::cuda {
namespace {

namespace cm = fg::cuda_math;

__global__ void adam_kernel(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                            const float* __restrict__ g, int64_t n, cm::AdamConsts c) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    cm::adam_update(pi, mi, vi, g[i], c);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// torch.optim.SGD: g += wd p; buf = first ? g : mu buf + (1 - dampening) g; g = nesterov ? g + mu buf : buf
__global__ void sgd_kernel(float* __restrict__ p, float* __restrict__ m, const float* __restrict__ grad, int64_t n,
                           float lr, float mu, float wd, float damp1, bool nesterov, bool first, bool use_wd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = grad[i];
    if (use_wd) g = g + wd * p[i];
    if (m) {
      const float buf = first ? g : mu * m[i] + damp1 * g;
      m[i] = buf;
      g = nesterov ? g + mu * buf : buf;
    }
    p[i] = p[i] - lr * g;
  }
}

constexpr int64_t kSqChunk = int64_t{1} << 16;

__global__ void sumsq_chunks(double* __restrict__ part, const float* __restrict__ x, int64_t n) {
  __shared__ double shm[32];
  const int64_t i0 = blockIdx.x * kSqChunk;
  const int64_t i1 = i0 + kSqChunk < n ? i0 + kSqChunk : n;
  double s = 0.0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += double(x[i]) * double(x[i]);
  s = block_sum(s, shm);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_in_order(double* __restrict__ out, const double* __restrict__ part, int64_t k) {
  double s = 0.0;
  for (int64_t i = 0; i < k; ++i) s += part[i];
  *out = s;
}

}  // namespace

void adam_step(float* param, float* m, float* v, const float* grad, int64_t N, int64_t step, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool decoupled, cudaStream_t s) {
  if (N <= 0) return;
  adam_kernel<<<grid_for(N), kThreads, 0, s>>>(param, m, v, grad, N,
                                                cm::adam_consts(step, lr, beta1, beta2, eps, weight_decay, decoupled));
  check_launch("adam_step");
}

void sgd_step(float* param, float* m, const float* grad, int64_t N, double lr, double momentum,
              double weight_decay, bool nesterov, double dampening, bool first_step, cudaStream_t s) {
  if (N <= 0) return;
  sgd_kernel<<<grid_for(N), kThreads, 0, s>>>(param, momentum != 0.0 ? m : nullptr, grad, N, float(lr), float(momentum),
                                               float(weight_decay), float(1.0 - dampening), nesterov, first_step,
                                               weight_decay != 0.0);
  check_launch("sgd_step");
}

int64_t sum_squares_workspace(int64_t N) { return N > 0 ? (N + kSqChunk - 1) / kSqChunk : 1; }

void sum_squares(double* out, double* work, const float* x, int64_t N, cudaStream_t s) {
  const int64_t k = N > 0 ? (N + kSqChunk - 1) / kSqChunk : 0;
  if (k > 0) {
    sumsq_chunks<<<unsigned(k), kThreads, 0, s>>>(work, x, N);
    check_launch("sum_squares (chunks)");
  }
  sum_in_order<<<1, 1, 0, s>>>(out, work, k);
  check_launch("sum_squares (total)");
}

}  // namespace fg::cuda
