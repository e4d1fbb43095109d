// Softmax, log-softmax and cross-entropy over the last axis (see kernels.h): one block per row.
// Each row's log-sum-exp is an online (max, sum) pair merged in a fixed tree order; NaN anywhere
// in a row makes it NaN, -inf entries count 0, a +inf max gives lse = +inf (as the CPU kernels).
#include <math.h>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace fg::cuda {
namespace {

struct MS {
  float m, s;  // running max, sum of exp(x - m)
};

__device__ __forceinline__ MS ms_merge(MS a, MS b) {
  if (a.m != a.m || b.m != b.m) return {NAN, 0.f};
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  if (a.m == INFINITY || b.m == INFINITY) return {INFINITY, 1.f};
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// log-sum-exp of row x[0..V), every thread of the block gets it
__device__ float row_lse(const float* __restrict__ x, int64_t V) {
  __shared__ MS shm[32];
  MS a{-INFINITY, 0.f};
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) a = ms_merge(a, MS{x[c], 1.f});
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MS b{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o)};
    a = ms_merge(a, b);
  }
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  __syncthreads();
  if (lane == 0) shm[wid] = a;
  __syncthreads();
  a = lane < nw ? shm[lane] : MS{-INFINITY, 0.f};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MS b{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o)};
    a = ms_merge(a, b);
  }
  return isfinite(a.m) ? a.m + logf(a.s) : a.m;
}

__global__ void softmax_fwd(float* __restrict__ y, const float* __restrict__ x, int64_t V, bool log) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * V;
  const float lse = row_lse(xr, V);
  float* yr = y + r * V;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) yr[c] = log ? xr[c] - lse : expf(xr[c] - lse);
}

// softmax: dx = y (dy - sum(dy y));  log-softmax: dx = dy - exp(y) sum(dy)
__global__ void softmax_bwd(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ y,
                            int64_t V, bool log) {
  __shared__ float shm[32];
  const int64_t r = blockIdx.x;
  const float *dyr = dy + r * V, *yr = y + r * V;
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) s += log ? dyr[c] : dyr[c] * yr[c];
  s = block_sum(s, shm);
  float* dxr = dx + r * V;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x)
    dxr[c] = log ? dyr[c] - expf(yr[c]) * s : yr[c] * (dyr[c] - s);
}

template <typename I>
__global__ void xent_rows(float* __restrict__ lse, float* __restrict__ loss_rows, const float* __restrict__ x,
                          const I* __restrict__ t, int64_t ignore_index, int64_t V) {
  const int64_t r = blockIdx.x;
  const float l = row_lse(x + r * V, V);
  if (threadIdx.x == 0) {
    const int64_t tr = int64_t(t[r]);
    lse[r] = l;
    loss_rows[r] = tr == ignore_index ? 0.f : l - x[r * V + tr];
  }
}

// loss = sum of non-ignored rows / their count, in double, one block (fixed order)
template <typename I>
__global__ void xent_mean(float* __restrict__ loss, const float* __restrict__ loss_rows, const I* __restrict__ t,
                          int64_t ignore_index, int64_t N) {
  __shared__ double shm[32];
  double s = 0.0, n = 0.0;
  for (int64_t r = threadIdx.x; r < N; r += blockDim.x) {
    if (int64_t(t[r]) == ignore_index) continue;
    s += loss_rows[r];
    n += 1.0;
  }
  s = block_sum(s, shm);
  n = block_sum(n, shm);
  if (threadIdx.x == 0) *loss = n > 0 ? float(s / n) : NAN;
}

template <typename I>
__global__ void xent_grad(float* __restrict__ d, const float* __restrict__ x, const I* __restrict__ t,
                          const float* __restrict__ lse, float scale, bool no_rows, int64_t ignore_index, int64_t V) {
  const int64_t r = blockIdx.x;
  const int64_t tr = int64_t(t[r]);
  float* dr = d + r * V;
  const float* xr = x + r * V;
  if (tr == ignore_index || no_rows) {  // ignored rows, and every row when no row counts
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) dr[c] = 0.f;
    return;
  }
  const float l = lse[r];
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) dr[c] = scale * (expf(xr[c] - l) - (c == tr ? 1.f : 0.f));
}

unsigned row_blocks(int64_t N) { return static_cast<unsigned>(N); }

}  // namespace

void softmax_forward(float* y, const float* x, int64_t N, int64_t V, bool log, cudaStream_t s) {
  if (N <= 0 || V <= 0) return;
  softmax_fwd<<<row_blocks(N), kThreads, 0, s>>>(y, x, V, log);
  check_launch("softmax_forward");
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t N, int64_t V, bool log, cudaStream_t s) {
  if (N <= 0 || V <= 0) return;
  softmax_bwd<<<row_blocks(N), kThreads, 0, s>>>(dx, dy, y, V, log);
  check_launch("softmax_backward");
}

void cross_entropy_forward(float* loss, float* lse, float* work, const void* targets, bool t64, int64_t ignore_index,
                           const float* logits, int64_t N, int64_t V, cudaStream_t s) {
  if (N > 0) {
    if (t64) xent_rows<<<row_blocks(N), kThreads, 0, s>>>(lse, work, logits, static_cast<const int64_t*>(targets), ignore_index, V);
    else xent_rows<<<row_blocks(N), kThreads, 0, s>>>(lse, work, logits, static_cast<const int32_t*>(targets), ignore_index, V);
    check_launch("cross_entropy_forward (rows)");
  }
  if (t64) xent_mean<<<1, 1024, 0, s>>>(loss, work, static_cast<const int64_t*>(targets), ignore_index, N);
  else xent_mean<<<1, 1024, 0, s>>>(loss, work, static_cast<const int32_t*>(targets), ignore_index, N);
  check_launch("cross_entropy_forward (mean)");
}

void cross_entropy_backward(float* dlogits, const float* logits, const void* targets, bool t64, const float* lse,
                            float dloss, int64_t count, int64_t ignore_index, int64_t N, int64_t V, cudaStream_t s) {
  if (N <= 0 || V <= 0) return;
  const float scale = count > 0 ? float(double(dloss) / double(count)) : 0.f;
  if (t64) xent_grad<<<row_blocks(N), kThreads, 0, s>>>(dlogits, logits, static_cast<const int64_t*>(targets), lse, scale, count <= 0, ignore_index, V);
  else xent_grad<<<row_blocks(N), kThreads, 0, s>>>(dlogits, logits, static_cast<const int32_t*>(targets), lse, scale, count <= 0, ignore_index, V);
  check_launch("cross_entropy_backward");
}

}  // namespace fg::cuda
