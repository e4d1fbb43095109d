// Fused attention, forward and backward (see kernels.h): flash-style (online softmax, the T x S
// matrix never stored; backward recomputes probabilities from lse), causal masks aligned
// bottom-right (query t sees key j iff j <= t + S - T), grouped-query heads (head h reads kv head
// h / (H / Hkv)).
//
// Layout of the work: one warp per output row, lanes splitting the head dimension (D <= 256, so a
// lane holds at most 8 values in registers). Forward and dq: a warp per query row walks its keys;
// dk and dv: a warp per key row walks the query rows of every head in its group that see it. Each
// output element is summed by one warp in a fixed order: no atomics, the same bits on every run.
// This first version reduces one dot product per key across the warp (5 shuffles); tiling keys
// through shared memory with tensor-core products is the next step once a GPU can time it.
#include <math.h>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace fg::cuda {
namespace {

constexpr int kRows = kThreads / kWarp;  // warps (rows) per block

__device__ __forceinline__ const float* row_ptr(const float* base, Heads L, int64_t b, int64_t h, int64_t t) {
  return base + b * L.sb + h * L.sh + t * L.st;
}
__device__ __forceinline__ float* row_ptr(float* base, Heads L, int64_t b, int64_t h, int64_t t) {
  return base + b * L.sb + h * L.sh + t * L.st;
}

template <int DPL>
__device__ __forceinline__ void load_row(float (&r)[DPL], const float* p, int lane, int64_t D) {
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int64_t d = lane + kWarp * i;
    r[i] = d < D ? p[d] : 0.f;
  }
}

template <int DPL>
__device__ __forceinline__ float dot(const float (&a)[DPL], const float* p, int lane, int64_t D) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int64_t d = lane + kWarp * i;
    if (d < D) s += a[i] * p[d];
  }
  return warp_sum(s);
}

// Keys [0, end) that query t sees.
__device__ __forceinline__ int64_t key_end(int64_t t, int64_t T, int64_t S, bool causal) {
  if (!causal) return S;
  const int64_t e = t + (S - T) + 1;
  return e < 0 ? 0 : (e < S ? e : S);
}

template <int DPL>
__global__ void attn_fwd(float* o, Heads Lo, float* __restrict__ lse, const float* q, Heads Lq, const float* k,
                         Heads Lk, const float* v, Heads Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                         int64_t D, bool causal, float scale) {
  const int64_t row = blockIdx.x * int64_t(kRows) + threadIdx.x / kWarp;
  if (row >= B * H * T) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = row % T, h = (row / T) % H, b = row / (T * H), hk = h / (H / Hkv);
  float qv[DPL], acc[DPL];
  load_row(qv, row_ptr(q, Lq, b, h, t), lane, D);
#pragma unroll
  for (int i = 0; i < DPL; ++i) acc[i] = 0.f;
  const int64_t end = key_end(t, T, S, causal);
  float m = -INFINITY, l = 0.f;
  for (int64_t j = 0; j < end; ++j) {
    const float s = dot(qv, row_ptr(k, Lk, b, hk, j), lane, D) * scale;
    const float mn = (s > m || s != s) ? s : m;  // a NaN score poisons the row, as in PyTorch
    float corr = 1.f, p = 0.f;                    // a -inf score with no finite one yet: weight 0
    if (mn != -INFINITY) {
      corr = expf(m - mn);
      p = expf(s - mn);
    }
    l = l * corr + p;
    const float* vr = row_ptr(v, Lv, b, hk, j);
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int64_t d = lane + kWarp * i;
      if (d < D) acc[i] = acc[i] * corr + p * vr[d];
    }
    m = mn;
  }
  float* orow = row_ptr(o, Lo, b, h, t);
  const float inv = end > 0 ? 1.f / l : 0.f;  // a row that sees no key: o = 0, lse = -inf
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int64_t d = lane + kWarp * i;
    if (d < D) orow[d] = end > 0 ? acc[i] * inv : 0.f;
  }
  if (lane == 0) lse[row] = end > 0 ? m + logf(l) : -INFINITY;
}

// delta[row] = sum_d do * o
template <int DPL>
__global__ void attn_delta(float* __restrict__ delta, const float* dO, Heads Ldo, const float* o, Heads Lo, int64_t B,
                           int64_t H, int64_t T, int64_t D) {
  const int64_t row = blockIdx.x * int64_t(kRows) + threadIdx.x / kWarp;
  if (row >= B * H * T) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = row % T, h = (row / T) % H, b = row / (T * H);
  float dv[DPL];
  load_row(dv, row_ptr(dO, Ldo, b, h, t), lane, D);
  const float s = dot(dv, row_ptr(o, Lo, b, h, t), lane, D);
  if (lane == 0) delta[row] = s;
}

// p = exp(scale q.k - lse); ds = p (do.v - delta); dq = scale sum_j ds k_j
template <int DPL>
__global__ void attn_dq(float* dq, Heads Ldq, const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k,
                        Heads Lk, const float* v, Heads Lv, const float* __restrict__ lse,
                        const float* __restrict__ delta, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                        int64_t D, bool causal, float scale) {
  const int64_t row = blockIdx.x * int64_t(kRows) + threadIdx.x / kWarp;
  if (row >= B * H * T) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = row % T, h = (row / T) % H, b = row / (T * H), hk = h / (H / Hkv);
  float qv[DPL], dov[DPL], acc[DPL];
  load_row(qv, row_ptr(q, Lq, b, h, t), lane, D);
  load_row(dov, row_ptr(dO, Ldo, b, h, t), lane, D);
#pragma unroll
  for (int i = 0; i < DPL; ++i) acc[i] = 0.f;
  const float L = lse[row], dl = delta[row];
  const int64_t end = key_end(t, T, S, causal);
  for (int64_t j = 0; j < end; ++j) {
    const float* kr = row_ptr(k, Lk, b, hk, j);
    const float p = expf(dot(qv, kr, lane, D) * scale - L);
    const float ds = p * (dot(dov, row_ptr(v, Lv, b, hk, j), lane, D) - dl);
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int64_t d = lane + kWarp * i;
      if (d < D) acc[i] += ds * kr[d];
    }
  }
  float* out = row_ptr(dq, Ldq, b, h, t);
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int64_t d = lane + kWarp * i;
    if (d < D) out[d] = acc[i] * scale;
  }
}

// dv_j = sum_i p_ij do_i;  dk_j = scale sum_i ds_ij q_i, over the query rows i of every head in
// kv head hk's group that see key j
template <int DPL>
__global__ void attn_dkv(float* dk, Heads Ldk, float* dv, Heads Ldv, const float* dO, Heads Ldo, const float* q,
                         Heads Lq, const float* k, Heads Lk, const float* v, Heads Lv, const float* __restrict__ lse,
                         const float* __restrict__ delta, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                         int64_t D, bool causal, float scale) {
  const int64_t row = blockIdx.x * int64_t(kRows) + threadIdx.x / kWarp;
  if (row >= B * Hkv * S) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t j = row % S, hk = (row / S) % Hkv, b = row / (S * Hkv), G = H / Hkv;
  float kv[DPL], vv[DPL], ak[DPL], av[DPL];
  load_row(kv, row_ptr(k, Lk, b, hk, j), lane, D);
  load_row(vv, row_ptr(v, Lv, b, hk, j), lane, D);
#pragma unroll
  for (int i = 0; i < DPL; ++i) ak[i] = av[i] = 0.f;
  int64_t t0 = causal ? j - (S - T) : 0;  // first query row that sees key j
  if (t0 < 0) t0 = 0;
  for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
    for (int64_t t = t0; t < T; ++t) {
      const int64_t r = (b * H + h) * T + t;
      const float* qr = row_ptr(q, Lq, b, h, t);
      const float* dr = row_ptr(dO, Ldo, b, h, t);
      const float p = expf(dot(kv, qr, lane, D) * scale - lse[r]);
      const float ds = p * (dot(vv, dr, lane, D) - delta[r]);
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int64_t d = lane + kWarp * i;
        if (d < D) {
          av[i] += p * dr[d];
          ak[i] += ds * qr[d];
        }
      }
    }
  }
  float *ok = row_ptr(dk, Ldk, b, hk, j), *ov = row_ptr(dv, Ldv, b, hk, j);
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int64_t d = lane + kWarp * i;
    if (d < D) {
      ok[d] = ak[i] * scale;
      ov[d] = av[i];
    }
  }
}

unsigned warp_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRows - 1) / kRows); }

// Calls f(std::integral_constant<int, DPL>) with the smallest lane width that holds D.
template <typename F>
void with_dpl(int64_t D, F&& f) {
  if (D <= 32) f(std::integral_constant<int, 1>{});
  else if (D <= 64) f(std::integral_constant<int, 2>{});
  else if (D <= 128) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}

}  // namespace

void attention_forward(float* o, Heads Lo, float* lse, const float* q, Heads Lq, const float* k, Heads Lk,
                       const float* v, Heads Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                       int64_t D, bool causal, float scale, cudaStream_t s) {
  const int64_t rows = B * H * T;
  if (rows <= 0) return;
  with_dpl(D, [&](auto dpl) {
    attn_fwd<decltype(dpl)::value><<<warp_blocks(rows), kThreads, 0, s>>>(o, Lo, lse, q, Lq, k, Lk, v, Lv, B, H, Hkv,
                                                                         T, S, D, causal, scale);
  });
  check_launch("attention_forward");
}

void attention_delta(float* delta, const float* dO, Heads Ldo, const float* o, Heads Lo, int64_t B, int64_t H,
                     int64_t T, int64_t D, cudaStream_t s) {
  const int64_t rows = B * H * T;
  if (rows <= 0) return;
  with_dpl(D, [&](auto dpl) {
    attn_delta<decltype(dpl)::value><<<warp_blocks(rows), kThreads, 0, s>>>(delta, dO, Ldo, o, Lo, B, H, T, D);
  });
  check_launch("attention_backward (delta)");
}

void attention_backward(float* dq, Heads Ldq, float* dk, Heads Ldk, float* dv, Heads Ldv, float* work,
                        const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k, Heads Lk,
                        const float* v, Heads Lv, const float* o, Heads Lo, const float* lse, int64_t B,
                        int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D, bool causal, float scale,
                        cudaStream_t s) {
  const int64_t qrows = B * H * T, krows = B * Hkv * S;
  with_dpl(D, [&](auto dpl) {
    constexpr int P = decltype(dpl)::value;
    if (qrows > 0) {
      attention_delta(work, dO, Ldo, o, Lo, B, H, T, D, s);
      attn_dq<P><<<warp_blocks(qrows), kThreads, 0, s>>>(dq, Ldq, dO, Ldo, q, Lq, k, Lk, v, Lv, lse, work, B, H, Hkv,
                                                         T, S, D, causal, scale);
      check_launch("attention_backward (dq)");
    }
    if (krows > 0) {
      attn_dkv<P><<<warp_blocks(krows), kThreads, 0, s>>>(dk, Ldk, dv, Ldv, dO, Ldo, q, Lq, k, Lk, v, Lv, lse, work, B,
                                                          H, Hkv, T, S, D, causal, scale);
      check_launch("attention_backward (dk, dv)");
    }
  });
}

}  // namespace fg::cuda
