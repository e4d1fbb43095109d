// Shared by the .cu files: error checks (a failed launch or call becomes a C++ exception that the
// binding turns into RuntimeError with CUDA's message), launch sizes and warp/block reductions.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fg::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
#define FG_CUDA_CHECK(call) ::fg::cuda::check((call), #call)
// After a launch: configuration errors show here; faults inside the kernel show at the next
// synchronizing call, as CUDA's own error.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// Blocks for a grid-stride loop over n items (capped: each thread then takes several).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t{1} << 16)));
}

// Sum over a warp; every lane gets the result. The butterfly order is fixed, so the bits are too.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the
// result. `shm` holds 32 values. Fixed order: deterministic.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shm) {
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // shm may still be read by a previous call
  if (lane == 0) shm[wid] = v;
  __syncthreads();
  v = lane < nw ? shm[lane] : T(0);
  return warp_sum(v);
}

}  // namespace fg::cuda

namespace fg::cuda {

// Deterministic column sums of an (N, C) quantity given by f(r, c, vals[Q]) for Q quantities at
// once: rows are cut into chunks of kColChunk; pass 1 sums each (chunk, column) in a fixed order
// into work[q][chunk][c]; pass 2 adds the chunks in order into out[q][c]. No atomics, so the bits
// are the same on every run. work holds Q * colsum_chunks(N) * C floats.
constexpr int64_t kColChunk = 256;
inline int64_t colsum_chunks(int64_t N) { return std::max<int64_t>(1, (N + kColChunk - 1) / kColChunk); }

template <int Q, typename F>
__global__ void colsum_pass1(float* __restrict__ work, int64_t N, int64_t C, F f) {
  __shared__ float sh[Q][8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y, nchunks = gridDim.y;
  float acc[Q];
#pragma unroll
  for (int q = 0; q < Q; ++q) acc[q] = 0.f;
  if (c < C) {
    const int64_t r1 = (chunk + 1) * kColChunk < N ? (chunk + 1) * kColChunk : N;
    for (int64_t r = chunk * kColChunk + threadIdx.y; r < r1; r += 8) {
      float v[Q];
      f(r, c, v);
#pragma unroll
      for (int q = 0; q < Q; ++q) acc[q] += v[q];
    }
  }
#pragma unroll
  for (int q = 0; q < Q; ++q) sh[q][threadIdx.y][threadIdx.x] = acc[q];
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      float s = 0.f;
      for (int y = 0; y < 8; ++y) s += sh[q][y][threadIdx.x];
      work[(q * nchunks + chunk) * C + c] = s;
    }
  }
}

template <int Q>
struct OutPtrs {
  float* p[Q];
};

// outs.p[q] may be null (that quantity is not wanted).
template <int Q>
__global__ void colsum_pass2_v(OutPtrs<Q> outs, const float* __restrict__ work, int64_t nchunks, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    if (!outs.p[q]) continue;
    float s = 0.f;
    for (int64_t k = 0; k < nchunks; ++k) s += work[(q * nchunks + k) * C + c];
    outs.p[q][c] = s;
  }
}

template <int Q, typename F>
void column_sums_of(OutPtrs<Q> outs, float* work, int64_t N, int64_t C, F f, cudaStream_t s) {
  if (C <= 0) return;
  const int64_t nchunks = colsum_chunks(N);
  colsum_pass1<Q><<<dim3(unsigned((C + 31) / 32), unsigned(nchunks)), dim3(32, 8), 0, s>>>(work, N, C, f);
  check_launch("column sums (pass 1)");
  colsum_pass2_v<Q><<<grid_for(C), kThreads, 0, s>>>(outs, work, nchunks, C);
  check_launch("column sums (pass 2)");
}

}  // namespace fg::cuda
