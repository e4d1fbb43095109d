// The parts of linear that are not the matrix product (cuBLAS does that, through CuPy): the
// bias + residual epilogue and the deterministic column sums for db (see kernels.h).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace fg::cuda {
namespace {

__global__ void bias_residual(float* __restrict__ y, const float* __restrict__ bias, const float* __restrict__ res,
                              int64_t N, int64_t O) {
  const int64_t total = N * O;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float t = y[i];
    if (bias) t += bias[i % O];
    if (res) t += res[i];  // residual + (x w^T + b): the CPU kernel's order
    y[i] = t;
  }
}

struct Plain {
  const float* x;
  int64_t C;
  __device__ void operator()(int64_t r, int64_t c, float* v) const { v[0] = x[r * C + c]; }
};

}  // namespace

void add_bias_residual(float* y, const float* bias, const float* residual, int64_t N, int64_t O, cudaStream_t s) {
  if (N <= 0 || O <= 0 || (!bias && !residual)) return;
  bias_residual<<<grid_for(N * O), kThreads, 0, s>>>(y, bias, residual, N, O);
  check_launch("linear (bias, residual)");
}

int64_t colsum_workspace_floats(int64_t N, int64_t O) { return colsum_chunks(N) * O; }

void column_sums(float* out, float* work, const float* x, int64_t N, int64_t O, cudaStream_t s) {
  column_sums_of<1>(OutPtrs<1>{{out}}, work, N, O, Plain{x, O}, s);
}

}  // namespace fg::cuda
