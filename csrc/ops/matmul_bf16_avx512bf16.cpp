// AVX512_BF16 kernels of matmul_bf16 (see matmul_bf16.h). Compiled with the AVX-512 flags plus
// -mavx512bf16 and called only when CPUID reports AVX512_BF16 on the avx512 path.
//
// Why this kernel is shaped differently from the float32 GEMM: VDPBF16PS multiplies *pairs* of
// bf16 along K into each float32 lane (lane j: c_j += a_2p b_2p,j + a_2p+1 b_2p+1,j), so a K pair
// (32 bits) is the unit both operands are packed in. Each operand is packed once, straight from
// float32 (VCVTNEPS2BF16 rounds to nearest even): A into tiles of 12 rows, B into panels of 32
// columns, each as [pair][row or column] words. The micro-kernel broadcasts one pair of A per row
// against two vectors of B pairs: a 12 x 32 tile of C in 24 accumulators, like the float32 AVX-512
// kernel's 12 x 32 tile with one K pair in place of one k.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/parallel.h"
#include "ops/matmul_bf16.h"
#include "ops/matmul_bf16_amx_body.h"
#include "ops/matmul_bf16_pack.h"

namespace fg::avx512_bf16 {

namespace {

using bf16_pack::pack_pairs;
using bf16_pack::words;

constexpr int kMR = 12;        // rows of C per micro-tile (A tiles are this tall)
constexpr int kNR = 32;        // columns of C per micro-tile (B panels are this wide)
constexpr int64_t kKCp = 128;  // K pairs per block: a 128 x 32-word B micro-panel (16 KB) stays in L1
constexpr int64_t kMC = 96;    // rows of C per task
constexpr int64_t kNC = 256;   // columns of C per task: 8 micro-panels (128 KB of B per K block) in L2

// A stored transposed (trans_a: dW = dy^T x) is packed in blocks of kAW rows instead: each K pair of
// the block is then three whole vectors of the two stored rows (12-row tiles took one 12-lane masked
// vector per pair: the packing was ~27% of a 768 x 2048 x 256 dW). The micro-kernel reads a 12-row
// tile of such a block with a pair stride of kAW words.
constexpr int kAW = 48;
static_assert(kAW % kMR == 0 && kMC % kAW == 0, "a task's 12-row tiles must not straddle two A blocks");

// c[0:mr, 0:nr] (= or +=) the products of a packed A tile (ap[p * as + r]) and a B micro-panel
// (bp[p * kNR + j]) over np pairs. Rows past mr and columns past nr are computed and not stored.
__attribute__((always_inline)) inline void kernel(float* c, int64_t ldc, const uint32_t* ap, const uint32_t* bp,
                                                  int64_t np, int64_t as, int mr, int nr, bool add,
                                                  const float* bias, const float* res) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + p * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + p * kNR + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[p * as + r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1u);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xffff) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1u) : __mmask16(0);
  // unrolled with a constant row index, so the accumulators stay in registers (a loop to mr spilled
  // all 24 of them to the stack around every call: ~10% of a 2048 x 256 x 768 product)
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) {
    if (r >= mr) break;
    float* cr = c + r * ldc;
    __m512 v0 = acc[r][0], v1 = acc[r][1];
    if (add) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), v0);
      v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), v1);
    }
    if (bias) {  // the epilogue (last K block only): (product + bias) + residual, in that order
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, bias));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, bias + 16));
    }
    if (res) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, res + r * ldc), v0);
      v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, res + r * ldc + 16), v1);
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

}  // namespace

void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          bool accumulate, const float* bias, const float* res) {
  const int64_t P = (K + 1) / 2;
  const int64_t aw = trans_a ? kAW : kMR;  // rows per packed block of A
  const int64_t mt = (M + aw - 1) / aw, nt = (N + kNR - 1) / kNR;
  uint32_t* const Ap = words(mt * P * aw);
  uint32_t* const Bp = words(nt * P * kNR);
  // A(i, k) = a[i K + k] or, transposed, a[k M + i]; B as columns j of C: B(j, k) = b[k N + j] or b[j K + k]
  if (trans_a) pack_pairs<kAW>(Ap, a, M, K, P, 1, M);
  else pack_pairs<kMR>(Ap, a, M, K, P, K, 1);
  pack_pairs<kNR>(Bp, b, N, K, P, trans_b ? K : 1, trans_b ? 1 : N);
  // Tasks: kMC x kNC blocks of C, each computed by one thread over all of K in the same order (the
  // result does not depend on the thread count).
  const int64_t tm = (M + kMC - 1) / kMC, tn = (N + kNC - 1) / kNC;
  parallel_for(tm * tn, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = (t / tn) * kMC, j0 = (t % tn) * kNC;
      const int64_t i1 = std::min(M, i0 + kMC), j1 = std::min(N, j0 + kNC);
      for (int64_t p0 = 0; p0 < P; p0 += kKCp) {
        const int64_t np = std::min(kKCp, P - p0);
        const bool add = accumulate || p0 > 0, last = p0 + np == P;
        for (int64_t j = j0; j < j1; j += kNR) {
          const uint32_t* bp = Bp + ((j / kNR) * P + p0) * kNR;
          const int nr = static_cast<int>(std::min<int64_t>(kNR, j1 - j));
          for (int64_t i = i0; i < i1; i += kMR) {
            const int mr = static_cast<int>(std::min<int64_t>(kMR, i1 - i));
            kernel(c + i * N + j, N, Ap + ((i / aw) * P + p0) * aw + i % aw, bp, np, aw, mr, nr, add,
                   last && bias ? bias + j : nullptr, last && res ? res + i * N + j : nullptr);
          }
        }
      }
    }
  });
  std::free(Ap);
  std::free(Bp);
}

}  // namespace fg::avx512_bf16

// ---- The AMX kernel (matmul_bf16_amx_body.h) over tile operations done in software ----

namespace fg::avx512_bf16 {

namespace {

// Eight 16 x 64-byte tiles per thread and TDPBF16PS's arithmetic as Intel documents it: each
// product of two bf16 values is exact in float32 and added on its own, round to nearest even,
// denormal inputs read as zero and denormal results flushed to zero. Slow (scalar): for tests.
struct SimTiles {
  struct State {
    alignas(64) uint32_t t[8][16][16];
  };
  static State& s() {
    static thread_local State st;
    return st;
  }
  static float daz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }
  static float lo(uint32_t w) { return daz(bf16_to_float(static_cast<uint16_t>(w & 0xffffu))); }
  static float hi(uint32_t w) { return daz(bf16_to_float(static_cast<uint16_t>(w >> 16))); }
  static void configure() {}
  static void release() {}
  static void load(int i, const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(s().t[i][r], static_cast<const char*>(p) + r * stride, 64);
  }
  static void store(int i, void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(p) + r * stride, s().t[i][r], 64);
  }
  static void dp(int ci, int ai, int bi) {
    auto& t = s().t;
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float acc;
        std::memcpy(&acc, &t[ci][m][n], 4);
        for (int p = 0; p < 16; ++p) {
          acc = daz(acc + lo(t[ai][m][p]) * lo(t[bi][p][n]));
          acc = daz(acc + hi(t[ai][m][p]) * hi(t[bi][p][n]));
        }
        std::memcpy(&t[ci][m][n], &acc, 4);
      }
  }
  template <int I>
  static void c_zero() {
    std::memset(s().t[I], 0, sizeof s().t[I]);
  }
  template <int I>
  static void c_load(const void* p, int64_t stride) {
    load(I, p, stride);
  }
  template <int I>
  static void c_store(void* p, int64_t stride) {
    store(I, p, stride);
  }
  static void step(const void* a0, const void* a1, const void* b, int64_t b_stride) {
    load(4, a0, 64);
    load(5, a1, 64);
    load(6, b, b_stride);
    load(7, static_cast<const char*>(b) + 64, b_stride);
    dp(0, 4, 6);
    dp(1, 4, 7);
    dp(2, 5, 6);
    dp(3, 5, 7);
  }
};

}  // namespace

void gemm_amx_simulated(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
                        bool trans_b, bool accumulate) {
  amx_body::gemm<SimTiles>(c, a, b, M, N, K, trans_a, trans_b, accumulate);
}

}  // namespace fg::avx512_bf16
