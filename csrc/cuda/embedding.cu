// Embedding lookup and its backward (see kernels.h).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace fg::cuda {
namespace {

template <typename I>
__global__ void emb_fwd(float* __restrict__ out, const I* __restrict__ ids, const float* __restrict__ table,
                        int64_t N, int64_t C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i - n * C;
    out[i] = table[int64_t(ids[n]) * C + c];
  }
}

// One thread per column walks the rows in order: dtable[ids[n], c] += dout[n, c]. Two rows with
// the same id are added in order of n by the same thread, so there are no races and no atomics,
// and the sums have the CPU kernel's order. Parallel over C only: enough for the widths of a
// transformer (C of 256..4096 gives 1..16 blocks of 256 threads per column range); the row loop
// is the price of determinism.
template <typename I>
__global__ void emb_bwd(float* __restrict__ dtable, const float* __restrict__ dout, const I* __restrict__ ids,
                        int64_t N, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  for (int64_t n = 0; n < N; ++n) dtable[int64_t(ids[n]) * C + c] += dout[n * C + c];
}

}  // namespace

void embedding_forward(float* out, const void* ids, bool i64, const float* table, int64_t N, int64_t C,
                       cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  if (i64) emb_fwd<<<grid_for(N * C), kThreads, 0, s>>>(out, static_cast<const int64_t*>(ids), table, N, C);
  else emb_fwd<<<grid_for(N * C), kThreads, 0, s>>>(out, static_cast<const int32_t*>(ids), table, N, C);
  check_launch("embedding_forward");
}

void embedding_backward(float* dtable, const float* dout, const void* ids, bool i64, int64_t N, int64_t C,
                        cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  const unsigned blocks = unsigned((C + kThreads - 1) / kThreads);
  if (i64) emb_bwd<<<blocks, kThreads, 0, s>>>(dtable, dout, static_cast<const int64_t*>(ids), N, C);
  else emb_bwd<<<blocks, kThreads, 0, s>>>(dtable, dout, static_cast<const int32_t*>(ids), N, C);
  check_launch("embedding_backward");
}

}  // namespace fg::cuda
