// Layer norm over the last axis (see kernels.h): one warp per row, two passes over the row for
// the statistics (mean, then the centred variance: no E[x^2] - E[x]^2 cancellation), as the CPU
// kernels define them: biased variance, rstd = 1 / sqrt(var + eps).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace fg::cuda {
namespace {

constexpr int kRowsPerBlock = kThreads / kWarp;

__global__ void ln_forward(float* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                           const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                           int64_t N, int64_t C, float eps) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= N) return;
  const float* xr = x + r * C;
  float s = 0.f;
  for (int64_t c = lane; c < C; c += kWarp) s += xr[c];
  const float mu = warp_sum(s) / float(C);
  float v = 0.f;
  for (int64_t c = lane; c < C; c += kWarp) {
    const float d = xr[c] - mu;
    v += d * d;
  }
  const float rs = 1.f / sqrtf(warp_sum(v) / float(C) + eps);
  float* yr = y + r * C;
  for (int64_t c = lane; c < C; c += kWarp) {
    float t = (xr[c] - mu) * rs;
    if (w) t *= w[c];
    if (b) t += b[c];
    yr[c] = t;
  }
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, xhat = (x - mean) * rstd
__global__ void ln_backward_dx(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x,
                               const float* __restrict__ w, const float* __restrict__ mean,
                               const float* __restrict__ rstd, int64_t N, int64_t C) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= N) return;
  const float *xr = x + r * C, *dyr = dy + r * C;
  const float mu = mean[r], rs = rstd[r];
  float sg = 0.f, sgx = 0.f;
  for (int64_t c = lane; c < C; c += kWarp) {
    const float g = w ? dyr[c] * w[c] : dyr[c];
    sg += g;
    sgx += g * ((xr[c] - mu) * rs);
  }
  const float mg = warp_sum(sg) / float(C), mgx = warp_sum(sgx) / float(C);
  float* dxr = dx + r * C;
  for (int64_t c = lane; c < C; c += kWarp) {
    const float g = w ? dyr[c] * w[c] : dyr[c];
    dxr[c] = rs * (g - mg - ((xr[c] - mu) * rs) * mgx);
  }
}

// (dweight, dbias) terms at (r, c): dy * xhat, dy
struct ParamGrads {
  const float *dy, *x, *mean, *rstd;
  int64_t C;
  __device__ void operator()(int64_t r, int64_t c, float* v) const {
    const float d = dy[r * C + c];
    v[0] = d * ((x[r * C + c] - mean[r]) * rstd[r]);
    v[1] = d;
  }
};

}  // namespace

void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps, cudaStream_t s) {
  if (N <= 0) return;
  const unsigned blocks = unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
  ln_forward<<<blocks, kThreads, 0, s>>>(y, mean, rstd, x, weight, bias, N, C, eps);
  check_launch("layernorm_forward");
}

int64_t layernorm_workspace_floats(int64_t N, int64_t C) { return 2 * colsum_chunks(N) * C; }

void layernorm_backward(float* dx, float* dweight, float* dbias, float* work, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        cudaStream_t s) {
  if (N > 0 && C > 0) {
    const unsigned blocks = unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
    ln_backward_dx<<<blocks, kThreads, 0, s>>>(dx, dy, x, weight, mean, rstd, N, C);
    check_launch("layernorm_backward (dx)");
  }
  if (C > 0 && (dweight || dbias)) {
    if (N == 0) {  // sums over no rows
      if (dweight) FG_CUDA_CHECK(cudaMemsetAsync(dweight, 0, C * sizeof(float), s));
      if (dbias) FG_CUDA_CHECK(cudaMemsetAsync(dbias, 0, C * sizeof(float), s));
      return;
    }
    column_sums_of<2>(OutPtrs<2>{{dweight, dbias}}, work, N, C, ParamGrads{dy, x, mean, rstd, C}, s);
  }
}

}  // namespace fg::cuda
