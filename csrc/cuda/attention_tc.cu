// Fused attention with 16-bit tensor-core products (see kernels.h), written once over the element
// type E: bfloat16 (the CPU kernels' bf16=True arithmetic on the GPU) or float16. q, k, v and dO are
// rounded to E as their tiles are loaded; the probabilities P (for P V and P^T dO) and scale * dS
// (for dS K and dS^T Q) are rounded to E before their products; softmax statistics, every sum and
// every output are float32. delta = rowsum(dO * O) takes the rounded dO, as dP = dO V^T does (the
// CPU kernels round dO once, before both), so dP - delta carries no rounding of dO that the other
// lacks: where a row sees one key (exact dS = 0), dS is only the float32 sums' rounding.
//
// Where the two types differ (Lowp<E> below): bf16 has float32's exponent range and 8 significant
// bits; fp16 has 11 (a tighter error budget) but a range of about 6e-8 (subnormal) to 65504.
//  - q, k, v: rounded as they are (values beyond +-65504 become +-inf in fp16, as in any fp16
//    tensor; activations that large are not what fp16 attention is for).
//  - P in [0, 1]: fits either type (in fp16 a P below 6e-5 is subnormal: absolute error <= 3e-8).
//  - dO (fp16 only): gradients are often far below fp16's normal range (loss averaged over many
//    tokens), the reason fp16 training needs loss scaling. The backward scales dO by the power of
//    two sc = 2^e that puts max |dO| into [1, 2) (cuda_math::pow2_scale of a max-|dO| pass before
//    the kernels) before rounding it, and multiplies dQ, dK, dV by 1/sc as they are stored. Every
//    quantity downstream of dO (dP, delta, dS, the gradients) is linear in it, and multiplying by a
//    power of two is exact, so this is loss scaling done inside the kernel: nothing to tune, no
//    overflow steps to skip. bf16 needs none (sc = 1: the same bits as without it).
//  - scale * dS (fp16): with max |dO| < 2, |dP| and |delta| are at most 2 D max|v|, so
//    |scale dS| <= 4 sqrt(D) max|v| (45 max|v| at D 128): it overflows fp16 only where max |v|
//    exceeds about 1400 (D 128) or 2000 (D 64).
//
// Layout of the work (flash-attention 2's): a block of 4 warps takes 64 rows (queries, or keys in
// the dK/dV kernel), 16 per warp, and walks the other side in tiles of 64 staged in shared memory
// as E. Products are WMMA 16 x 16 x 16 E fragments with float32 accumulators: S = Q K^T and
// dP = dO V^T go to shared memory, where the warp's lanes apply the mask, the online softmax (or
// the recomputed P = exp(scale S - lse)) and dS = P (dP - delta) row by row. The forward output
// lives in shared memory as float32 (each new key tile rescales its rows by exp(m_old - m_new),
// which WMMA accumulators cannot do in registers); dQ, dK and dV stay in accumulator fragments.
// dQ has its own kernel (a query tile walks the key tiles) and dK/dV theirs (a key tile walks the
// query tiles of every head in its group), so each output element is summed by one warp in a fixed
// order: no atomic sums (fp16's max |dO| is an atomicMax, whose result no order changes), the same
// bits on every run. Head sizes 64 and 128 (kernels.h says which);
// written for sm_80 and later.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <math.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/math.h"

namespace fg::cuda {
namespace {

namespace wm = nvcuda::wmma;
using bf16 = __nv_bfloat16;
using fp16 = __half;

// What differs between the two element types (the header explains why).
template <typename E>
struct Lowp;
template <>
struct Lowp<bf16> {
  static __device__ __forceinline__ bf16 round(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ float value(bf16 x) { return __bfloat162float(x); }
  static constexpr bool kScaleDo = false;  // float32's exponent range: dO needs no scaling
  static constexpr const char* kName = "bf16";
};
template <>
struct Lowp<fp16> {
  static __device__ __forceinline__ fp16 round(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ float value(fp16 x) { return __half2float(x); }
  static constexpr bool kScaleDo = true;  // dO scaled by a power of two into fp16's range
  static constexpr const char* kName = "fp16";
};

constexpr int kTc = 64;          // rows per block and per tile of the other side
constexpr int kTcWarps = 4;      // 16 rows each
constexpr int kTcThreads = kTcWarps * kWarp;
constexpr int kLdS = kTc + 4;    // float32 score rows (a multiple of 4 floats, as WMMA needs)
constexpr int kLdP = kTc + 8;    // 16-bit probability rows (a multiple of 8 halves)
constexpr size_t kE = 2;         // bytes per element of either 16-bit type

template <typename E>
using FragA = wm::fragment<wm::matrix_a, 16, 16, 16, E, wm::row_major>;
template <typename E>
using FragBRow = wm::fragment<wm::matrix_b, 16, 16, 16, E, wm::row_major>;
template <typename E>
using FragBCol = wm::fragment<wm::matrix_b, 16, 16, 16, E, wm::col_major>;
using FragC = wm::fragment<wm::accumulator, 16, 16, 16, float>;

// Shared-memory layout of a kernel with D-wide 16-bit tiles (bf16 and fp16 alike): every section a
// multiple of 128 bytes, so every fragment pointer is 32-byte aligned as WMMA requires.
template <int D>
struct Tiles {
  static constexpr int kLdH = D + 8;  // 16-bit tile rows
  static constexpr int kLdO = D + 4;  // float32 output rows
  static constexpr size_t kTile = size_t(kTc) * kLdH * kE;
  static constexpr size_t kScores = size_t(kTc) * kLdS * sizeof(float);
  static constexpr size_t kProbs = size_t(kTc) * kLdP * kE;
  static constexpr size_t kOut = size_t(kTc) * kLdO * sizeof(float);
  static constexpr size_t kRows = size_t(kTc) * 2 * sizeof(float);  // two per-row statistics
  static_assert(kTile % 128 == 0 && kScores % 128 == 0 && kProbs % 128 == 0 && kOut % 128 == 0, "alignment");
  // the dQ / dK / dV staging reuses the two score buffers: 16 rows x kLdO per warp must fit
  static_assert(kOut <= 2 * kScores, "staging");
};
static_assert(sizeof(bf16) == kE && sizeof(fp16) == kE, "16-bit types");

__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// rows [r0, r0 + 64) of one head's (t, d) matrix at base (row stride st), times mul (a power of
// two: dO's scale; 1 otherwise), into a 16-bit tile, rows at or past `rows` as zeros
template <typename E, int D>
__device__ __forceinline__ void load_tile(E* dst, const float* base, int64_t st, int64_t r0, int64_t rows,
                                          float mul = 1.f) {
  for (int i = threadIdx.x; i < kTc * D; i += kTcThreads) {
    const int r = i / D, d = i % D;
    const int64_t t = r0 + r;
    dst[r * Tiles<D>::kLdH + d] = Lowp<E>::round(t < rows ? base[t * st + d] * mul : 0.f);
  }
}

// dO's scale: fp16's from the largest |dO| (float bits) that the amax pass wrote; 1 for bf16
template <typename E>
__device__ __forceinline__ float do_scale(const unsigned* amax) {
  if constexpr (Lowp<E>::kScaleDo) return cuda_math::pow2_scale(__uint_as_float(*amax));
  else return 1.f;
}

// out (16 x 64 float32, row stride kLdS) = a rows (16 x D) times b rows (64 x D) transposed
template <typename E, int D>
__device__ __forceinline__ void rows_times_rows_t(float* out, const E* a, const E* b) {
  constexpr int ld = Tiles<D>::kLdH;
#pragma unroll
  for (int n = 0; n < kTc / 16; ++n) {
    FragC acc;
    wm::fill_fragment(acc, 0.f);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      FragA<E> fa;
      FragBCol<E> fb;  // (k, n) of b^T is b[n][k]: column-major with leading dimension ld
      wm::load_matrix_sync(fa, a + kk * 16, ld);
      wm::load_matrix_sync(fb, b + n * 16 * ld + kk * 16, ld);
      wm::mma_sync(acc, fa, fb, acc);
    }
    wm::store_matrix_sync(out + n * 16, acc, kLdS, wm::mem_row_major);
  }
}

// acc[dn] (16 x D in fragments) += p (16 x 64, row stride kLdP) times b (64 x D rows)
template <typename E, int D>
__device__ __forceinline__ void probs_times_rows(FragC (&acc)[D / 16], const E* p, const E* b) {
  constexpr int ld = Tiles<D>::kLdH;
#pragma unroll
  for (int kk = 0; kk < kTc / 16; ++kk) {
    FragA<E> fa;
    wm::load_matrix_sync(fa, p + kk * 16, kLdP);
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      FragBRow<E> fb;
      wm::load_matrix_sync(fb, b + kk * 16 * ld + dn * 16, ld);
      wm::mma_sync(acc[dn], fa, fb, acc[dn]);
    }
  }
}

// Writes 16 rows x D of accumulator fragments (times `mul`) to global rows r0.. (< rows) through
// the warp's staging rows.
template <int D>
__device__ __forceinline__ void store_rows(float* base, int64_t st, int64_t r0, int64_t rows, FragC (&acc)[D / 16],
                                           float* stage, float mul) {
  constexpr int ld = Tiles<D>::kLdO;
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn) wm::store_matrix_sync(stage + dn * 16, acc[dn], ld, wm::mem_row_major);
  __syncwarp();
  for (int r = 0; r < 16; ++r) {
    const int64_t t = r0 + r;
    if (t >= rows) break;
    for (int d = lane; d < D; d += kWarp) base[t * st + d] = stage[r * ld + d] * mul;
  }
}

__device__ __forceinline__ int64_t last_key(int64_t t, int64_t T, int64_t S, bool causal) {
  return causal ? t + S - T : S - 1;  // query t sees keys [0, last_key]
}

template <typename E, int D>
__global__ void __launch_bounds__(kTcThreads)
    attn_fwd_tc(float* o, Heads Lo, float* lse, const float* q, Heads Lq, const float* k, Heads Lk, const float* v,
                Heads Lv, int64_t H, int64_t Hkv, int64_t T, int64_t S, bool causal, float scale) {
  using L = Tiles<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Qs = reinterpret_cast<E*>(smem);
  E* Ks = reinterpret_cast<E*>(smem + L::kTile);
  E* Vs = reinterpret_cast<E*>(smem + 2 * L::kTile);
  float* Ss = reinterpret_cast<float*>(smem + 3 * L::kTile);
  E* Ps = reinterpret_cast<E*>(smem + 3 * L::kTile + L::kScores);
  float* Os = reinterpret_cast<float*>(smem + 3 * L::kTile + L::kScores + L::kProbs);

  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, hk = h / (H / Hkv);
  const int64_t q0 = int64_t(blockIdx.y) * kTc;
  const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = w * 16;
  const float* qb = q + b * Lq.sb + h * Lq.sh;
  const float* kb = k + b * Lk.sb + hk * Lk.sh;
  const float* vb = v + b * Lv.sb + hk * Lv.sh;
  load_tile<E, D>(Qs, qb, Lq.st, q0, T);
  for (int i = threadIdx.x; i < kTc * L::kLdO; i += kTcThreads) Os[i] = 0.f;
  float m[16], l[16];
#pragma unroll
  for (int r = 0; r < 16; ++r) m[r] = -INFINITY, l[r] = 0.f;
  const int64_t last_row = (q0 + kTc < T ? q0 + kTc : T) - 1;
  int64_t kend = last_key(last_row, T, S, causal) + 1;
  kend = kend < 0 ? 0 : (kend < S ? kend : S);
  float* Sw = Ss + r0 * kLdS;
  E* Pw = Ps + r0 * kLdP;
  float* Ow = Os + r0 * L::kLdO;
  for (int64_t j0 = 0; j0 < kend; j0 += kTc) {
    __syncthreads();  // every warp is done with the previous K and V tiles
    load_tile<E, D>(Ks, kb, Lk.st, j0, S);
    load_tile<E, D>(Vs, vb, Lv.st, j0, S);
    __syncthreads();
    rows_times_rows_t<E, D>(Sw, Qs + r0 * L::kLdH, Ks);
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      const int64_t t = q0 + r0 + r, lim = last_key(t, T, S, causal);
      float s[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t j = j0 + lane + 32 * c;
        s[c] = (t < T && j < S && j <= lim) ? Sw[r * kLdS + lane + 32 * c] * scale : -INFINITY;
      }
      const float mn = nan_max(m[r], warp_max(nan_max(s[0], s[1])));
      float alpha = 1.f, p0 = 0.f, p1 = 0.f;  // a row with no finite score yet: weight 0
      if (mn != -INFINITY) {
        alpha = expf(m[r] - mn);
        p0 = expf(s[0] - mn);
        p1 = expf(s[1] - mn);
      }
      l[r] = l[r] * alpha + warp_sum(p0 + p1);  // sums the float32 p, as the CPU kernels
      m[r] = mn;
      Pw[r * kLdP + lane] = Lowp<E>::round(p0);
      Pw[r * kLdP + lane + 32] = Lowp<E>::round(p1);
      for (int d = lane; d < D; d += kWarp) Ow[r * L::kLdO + d] *= alpha;
    }
    __syncwarp();
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      FragC acc;
      wm::load_matrix_sync(acc, Ow + dn * 16, L::kLdO, wm::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTc / 16; ++kk) {
        FragA<E> fa;
        FragBRow<E> fb;
        wm::load_matrix_sync(fa, Pw + kk * 16, kLdP);
        wm::load_matrix_sync(fb, Vs + kk * 16 * L::kLdH + dn * 16, L::kLdH);
        wm::mma_sync(acc, fa, fb, acc);
      }
      wm::store_matrix_sync(Ow + dn * 16, acc, L::kLdO, wm::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();  // Os was zeroed by every thread (no key tile may have synchronized since)
  float* ob = o + b * Lo.sb + h * Lo.sh;
#pragma unroll
  for (int r = 0; r < 16; ++r) {
    const int64_t t = q0 + r0 + r;
    if (t >= T) break;
    const bool none = m[r] == -INFINITY;  // a row that sees no key: o = 0, lse = -inf
    const float inv = none ? 0.f : 1.f / l[r];
    for (int d = lane; d < D; d += kWarp) ob[t * Lo.st + d] = none ? 0.f : Ow[r * L::kLdO + d] * inv;
    if (lane == 0) lse[bh * T + t] = none ? -INFINITY : m[r] + logf(l[r]);
  }
}

// *amax = the largest |dO| as float bits (non-negative floats order as their bits; NaN above
// inf), by atomicMax on bits the caller zeroed: any order of the updates gives the same result.
// One warp per row.
__global__ void attn_do_amax(unsigned* amax, const float* dO, Heads Ldo, int64_t H, int64_t rows, int64_t T,
                             int64_t D) {
  const int lane = threadIdx.x % kWarp;
  unsigned mx = 0;
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; row < rows;
       row += int64_t(gridDim.x) * blockDim.x / kWarp) {
    const int64_t b = row / (H * T), h = row / T % H, t = row % T;
    const float* d = dO + b * Ldo.sb + h * Ldo.sh + t * Ldo.st;
    for (int64_t i = lane; i < D; i += kWarp) mx = max(mx, __float_as_uint(fabsf(d[i])));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0 && mx) atomicMax(amax, mx);
}

// delta[row] = sum_d round(dO * sc) * o: the rounded (and scaled) dO of the products dP = dO V^T,
// so the two differ by no rounding of dO. One warp per row, fixed order.
template <typename E>
__global__ void attn_delta_tc(float* delta, const float* dO, Heads Ldo, const float* o, Heads Lo,
                              const unsigned* amax, int64_t H, int64_t rows, int64_t T, int64_t D) {
  const int lane = threadIdx.x % kWarp;
  const float sc = do_scale<E>(amax);
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; row < rows;
       row += int64_t(gridDim.x) * blockDim.x / kWarp) {
    const int64_t b = row / (H * T), h = row / T % H, t = row % T;
    const float* d = dO + b * Ldo.sb + h * Ldo.sh + t * Ldo.st;
    const float* oo = o + b * Lo.sb + h * Lo.sh + t * Lo.st;
    float acc = 0.f;
    for (int64_t i = lane; i < D; i += kWarp) acc += Lowp<E>::value(Lowp<E>::round(d[i] * sc)) * oo[i];
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
  }
}

// dQ = sum over key tiles of (scale dS) K, dS = P (dP - delta), P = exp(scale Q K^T - lse), dP = dO V^T
// (dO times its scale sc: dQ is stored times 1/sc)
template <typename E, int D>
__global__ void __launch_bounds__(kTcThreads)
    attn_dq_tc(float* dq, Heads Ldq, const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k, Heads Lk,
               const float* v, Heads Lv, const float* lse, const float* delta, const unsigned* amax, int64_t H,
               int64_t Hkv, int64_t T, int64_t S, bool causal, float scale) {
  using L = Tiles<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Qs = reinterpret_cast<E*>(smem);
  E* dOs = reinterpret_cast<E*>(smem + L::kTile);
  E* Ks = reinterpret_cast<E*>(smem + 2 * L::kTile);
  E* Vs = reinterpret_cast<E*>(smem + 3 * L::kTile);
  float* Ss = reinterpret_cast<float*>(smem + 4 * L::kTile);  // then dPs right after it
  float* dPs = Ss + kTc * kLdS;
  E* Ps = reinterpret_cast<E*>(smem + 4 * L::kTile + 2 * L::kScores);
  float* rowL = reinterpret_cast<float*>(smem + 4 * L::kTile + 2 * L::kScores + L::kProbs);
  float* rowD = rowL + kTc;

  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, hk = h / (H / Hkv);
  const int64_t q0 = int64_t(blockIdx.y) * kTc;
  const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = w * 16;
  const float sc = do_scale<E>(amax);
  load_tile<E, D>(Qs, q + b * Lq.sb + h * Lq.sh, Lq.st, q0, T);
  load_tile<E, D>(dOs, dO + b * Ldo.sb + h * Ldo.sh, Ldo.st, q0, T, sc);
  for (int i = threadIdx.x; i < kTc; i += kTcThreads) {
    const int64_t t = q0 + i;
    rowL[i] = t < T ? lse[bh * T + t] : 0.f;
    rowD[i] = t < T ? delta[bh * T + t] : 0.f;
  }
  FragC acc[D / 16];
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn) wm::fill_fragment(acc[dn], 0.f);
  const int64_t last_row = (q0 + kTc < T ? q0 + kTc : T) - 1;
  int64_t kend = last_key(last_row, T, S, causal) + 1;
  kend = kend < 0 ? 0 : (kend < S ? kend : S);
  const float* kb = k + b * Lk.sb + hk * Lk.sh;
  const float* vb = v + b * Lv.sb + hk * Lv.sh;
  float *Sw = Ss + r0 * kLdS, *dPw = dPs + r0 * kLdS;
  E* Pw = Ps + r0 * kLdP;
  for (int64_t j0 = 0; j0 < kend; j0 += kTc) {
    __syncthreads();
    load_tile<E, D>(Ks, kb, Lk.st, j0, S);
    load_tile<E, D>(Vs, vb, Lv.st, j0, S);
    __syncthreads();
    rows_times_rows_t<E, D>(Sw, Qs + r0 * L::kLdH, Ks);
    rows_times_rows_t<E, D>(dPw, dOs + r0 * L::kLdH, Vs);
    __syncwarp();
    for (int r = 0; r < 16; ++r) {
      const int64_t t = q0 + r0 + r, lim = last_key(t, T, S, causal);
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int col = lane + 32 * c;
        const int64_t j = j0 + col;
        float ds = 0.f;
        if (t < T && j < S && j <= lim) {
          const float p = expf(Sw[r * kLdS + col] * scale - rowL[r0 + r]);
          ds = p * (dPw[r * kLdS + col] - rowD[r0 + r]) * scale;
        }
        Pw[r * kLdP + col] = Lowp<E>::round(ds);
      }
    }
    __syncwarp();
    probs_times_rows<E, D>(acc, Pw, Ks);
  }
  __syncthreads();  // the staging rows overlap other warps' score rows
  store_rows<D>(dq + b * Ldq.sb + h * Ldq.sh, Ldq.st, q0 + r0, T, acc, Ss + r0 * L::kLdO, 1.f / sc);
}

// dV = sum of P^T dO and dK = sum of (scale dS)^T Q over the query tiles of every head in kv head
// hk's group that see the block's keys (dO times its scale sc: dK and dV are stored times 1/sc)
template <typename E, int D>
__global__ void __launch_bounds__(kTcThreads)
    attn_dkv_tc(float* dk, Heads Ldk, float* dv, Heads Ldv, const float* dO, Heads Ldo, const float* q, Heads Lq,
                const float* k, Heads Lk, const float* v, Heads Lv, const float* lse, const float* delta,
                const unsigned* amax, int64_t H, int64_t Hkv, int64_t T, int64_t S, bool causal, float scale) {
  using L = Tiles<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Ks = reinterpret_cast<E*>(smem);
  E* Vs = reinterpret_cast<E*>(smem + L::kTile);
  E* Qs = reinterpret_cast<E*>(smem + 2 * L::kTile);
  E* dOs = reinterpret_cast<E*>(smem + 3 * L::kTile);
  float* Ss = reinterpret_cast<float*>(smem + 4 * L::kTile);  // S^T, then dP^T right after it
  float* dPs = Ss + kTc * kLdS;
  E* Ps = reinterpret_cast<E*>(smem + 4 * L::kTile + 2 * L::kScores);
  E* dSs = reinterpret_cast<E*>(smem + 4 * L::kTile + 2 * L::kScores + L::kProbs);
  float* rowL = reinterpret_cast<float*>(smem + 4 * L::kTile + 2 * L::kScores + 2 * L::kProbs);
  float* rowD = rowL + kTc;

  const int64_t bk = blockIdx.x, b = bk / Hkv, hk = bk % Hkv, G = H / Hkv;
  const int64_t j0 = int64_t(blockIdx.y) * kTc;
  const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = w * 16;
  const float sc = do_scale<E>(amax);
  load_tile<E, D>(Ks, k + b * Lk.sb + hk * Lk.sh, Lk.st, j0, S);
  load_tile<E, D>(Vs, v + b * Lv.sb + hk * Lv.sh, Lv.st, j0, S);
  FragC ak[D / 16], av[D / 16];
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn) {
    wm::fill_fragment(ak[dn], 0.f);
    wm::fill_fragment(av[dn], 0.f);
  }
  int64_t t_first = causal ? j0 - (S - T) : 0;  // the first query row that sees key j0
  t_first = t_first < 0 ? 0 : t_first / kTc * kTc;
  float *Sw = Ss + r0 * kLdS, *dPw = dPs + r0 * kLdS;
  E *Pw = Ps + r0 * kLdP, *dSw = dSs + r0 * kLdP;
  for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
    const int64_t bh = b * H + h;
    for (int64_t i0 = t_first; i0 < T; i0 += kTc) {
      __syncthreads();
      load_tile<E, D>(Qs, q + b * Lq.sb + h * Lq.sh, Lq.st, i0, T);
      load_tile<E, D>(dOs, dO + b * Ldo.sb + h * Ldo.sh, Ldo.st, i0, T, sc);
      for (int i = threadIdx.x; i < kTc; i += kTcThreads) {
        const int64_t t = i0 + i;
        rowL[i] = t < T ? lse[bh * T + t] : 0.f;
        rowD[i] = t < T ? delta[bh * T + t] : 0.f;
      }
      __syncthreads();
      rows_times_rows_t<E, D>(Sw, Ks + r0 * L::kLdH, Qs);    // S^T: the warp's 16 keys x 64 queries
      rows_times_rows_t<E, D>(dPw, Vs + r0 * L::kLdH, dOs);  // dP^T
      __syncwarp();
      for (int r = 0; r < 16; ++r) {
        const int64_t j = j0 + r0 + r;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = lane + 32 * c;
          const int64_t t = i0 + col;
          float p = 0.f, ds = 0.f;
          if (j < S && t < T && j <= last_key(t, T, S, causal)) {
            p = expf(Sw[r * kLdS + col] * scale - rowL[col]);
            ds = p * (dPw[r * kLdS + col] - rowD[col]) * scale;
          }
          Pw[r * kLdP + col] = Lowp<E>::round(p);
          dSw[r * kLdP + col] = Lowp<E>::round(ds);
        }
      }
      __syncwarp();
      probs_times_rows<E, D>(av, Pw, dOs);
      probs_times_rows<E, D>(ak, dSw, Qs);
    }
  }
  __syncthreads();
  float* stage = Ss + r0 * L::kLdO;
  store_rows<D>(dk + b * Ldk.sb + hk * Ldk.sh, Ldk.st, j0 + r0, S, ak, stage, 1.f / sc);
  __syncwarp();
  store_rows<D>(dv + b * Ldv.sb + hk * Ldv.sh, Ldv.st, j0 + r0, S, av, stage, 1.f / sc);
}

// Launches kernel<E, D> with `bytes` of dynamic shared memory (raising the 48 KB default once).
template <typename K, typename... A>
void launch(K kernel, size_t bytes, dim3 grid, cudaStream_t s, const std::string& what, A... args) {
  FG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  kernel<<<grid, kTcThreads, bytes, s>>>(args...);
  check_launch(what.c_str());
}

// f(E{}, D constant) for the element type and head size asked for
template <typename F>
void with_types(TcType t, int64_t D, F&& f) {
  auto with_d = [&](auto e) {
    if (D == 64) f(e, std::integral_constant<int, 64>{});
    else if (D == 128) f(e, std::integral_constant<int, 128>{});
    else throw std::invalid_argument("attention (tensor cores): head size must be 64 or 128");
  };
  if (t == TcType::fp16) with_d(fp16{});
  else with_d(bf16{});
}

unsigned tiles(int64_t n) { return static_cast<unsigned>((n + kTc - 1) / kTc); }

template <typename E>
std::string tc_name(const char* op, const char* part = "") {
  return std::string(op) + " (" + Lowp<E>::kName + " tensor cores" + part + ")";
}

}  // namespace

bool attention_tc_supported(int64_t D) { return D == 64 || D == 128; }

void attention_forward_tc(float* o, Heads Lo, float* lse, const float* q, Heads Lq, const float* k, Heads Lk,
                          const float* v, Heads Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                          int64_t D, bool causal, float scale, cudaStream_t s, TcType t) {
  if (B * H <= 0 || T <= 0) return;
  with_types(t, D, [&](auto e, auto d) {
    using E = decltype(e);
    constexpr int Dc = decltype(d)::value;
    using L = Tiles<Dc>;
    const size_t bytes = 3 * L::kTile + L::kScores + L::kProbs + L::kOut;
    launch(attn_fwd_tc<E, Dc>, bytes, dim3(unsigned(B * H), tiles(T)), s, tc_name<E>("attention_forward"), o, Lo,
           lse, q, Lq, k, Lk, v, Lv, H, Hkv, T, S, causal, scale);
  });
}

void attention_backward_tc(float* dq, Heads Ldq, float* dk, Heads Ldk, float* dv, Heads Ldv, float* work,
                           const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k, Heads Lk,
                           const float* v, Heads Lv, const float* o, Heads Lo, const float* lse, int64_t B,
                           int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D, bool causal, float scale,
                           cudaStream_t s, TcType t) {
  with_types(t, D, [&](auto e, auto d) {
    using E = decltype(e);
    constexpr int Dc = decltype(d)::value;
    using L = Tiles<Dc>;
    const size_t bytes = 4 * L::kTile + 2 * L::kScores + 2 * L::kProbs + L::kRows;
    const int64_t rows = B * H * T;
    // fp16: work[rows] receives the largest |dO| (as float bits) before anything reads dO
    unsigned* amax = Lowp<E>::kScaleDo ? reinterpret_cast<unsigned*>(work + (rows > 0 ? rows : 0)) : nullptr;
    if (amax) {
      FG_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(unsigned), s));
      if (rows > 0) {
        attn_do_amax<<<grid_for(rows * kWarp), kThreads, 0, s>>>(amax, dO, Ldo, H, rows, T, D);
        check_launch(tc_name<E>("attention_backward", ", max |dO|").c_str());
      }
    }
    if (rows > 0) {
      attn_delta_tc<E><<<grid_for(rows * kWarp), kThreads, 0, s>>>(work, dO, Ldo, o, Lo, amax, H, rows, T, D);
      check_launch(tc_name<E>("attention_backward", ", delta").c_str());
      launch(attn_dq_tc<E, Dc>, bytes, dim3(unsigned(B * H), tiles(T)), s, tc_name<E>("attention_backward", ", dq"),
             dq, Ldq, dO, Ldo, q, Lq, k, Lk, v, Lv, lse, work, static_cast<const unsigned*>(amax), H, Hkv, T, S,
             causal, scale);
    }
    if (B * Hkv > 0 && S > 0)
      launch(attn_dkv_tc<E, Dc>, bytes, dim3(unsigned(B * Hkv), tiles(S)), s,
             tc_name<E>("attention_backward", ", dk, dv"), dk, Ldk, dv, Ldv, dO, Ldo, q, Lq, k, Lk, v, Lv, lse, work,
             static_cast<const unsigned*>(amax), H, Hkv, T, S, causal, scale);
  });
}

}  // namespace fg::cuda
