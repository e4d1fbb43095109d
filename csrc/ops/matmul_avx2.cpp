// AVX2/FMA float32 GEMM: the 6x16 micro-kernel and the blocking for 2 threads on Zen 3 (32 KiB
// L1d, 512 KiB L2 per core), then the shared driver (matmul_body.h) compiled with -mavx2 -mfma
// into fg::avx2. Called from matmul.cpp only when the CPU has them.
#include <immintrin.h>

#include <cstdint>

#include "ops/matmul.h"

namespace fg::avx2 {

namespace {

// Micro-kernel: c[0:6, 0:16] (= or +=) sum_p ap[p][0:6]^T bp[p][0:16].
// ap: (kc, 6) packed, bp: (kc, 16) packed and 32-byte aligned, c: row stride ldc.
// bias (16,) or nullptr, only with !add: c = acc + bias (the bias broadcast over the 6 rows).
// res (6 x 16, row stride ldc) or nullptr: added last, to the sum just formed.
// The k loop is inline asm: GCC's scheduler spills accumulators when it interleaves unrolled
// steps. One k step = 2 aligned loads of B, 6 broadcasts of A, 12 FMAs; 12 accumulators + 2 B
// + 1 A = 15 ymm, no spills. Unrolled by 4, A prefetched 8 steps ahead.
void kernel_6x16(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool add,
                 const float* bias = nullptr, const float* res = nullptr) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  // C (and the residual) are touched only after the k loop: start pulling their 6 rows in now.
  for (int r = 0; r < 6; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 15), _MM_HINT_T0);
  }
  if (res)
    for (int r = 0; r < 6; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(res + r * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(res + r * ldc + 15), _MM_HINT_T0);
    }
  int64_t k4 = kc / 4, k1 = kc % 4;
  if (k4 > 0) {
#define FG_KSTEP(B0, B1, A0)                                \
  "vmovaps " #B0 "(%[b]), %%ymm14\n\t"                       \
  "vmovaps " #B1 "(%[b]), %%ymm15\n\t"                       \
  "vbroadcastss " #A0 "+0(%[a]), %%ymm13\n\t"                \
  "vfmadd231ps %%ymm14, %%ymm13, %[c00]\n\t"                 \
  "vfmadd231ps %%ymm15, %%ymm13, %[c01]\n\t"                 \
  "vbroadcastss " #A0 "+4(%[a]), %%ymm13\n\t"                \
  "vfmadd231ps %%ymm14, %%ymm13, %[c10]\n\t"                 \
  "vfmadd231ps %%ymm15, %%ymm13, %[c11]\n\t"                 \
  "vbroadcastss " #A0 "+8(%[a]), %%ymm13\n\t"                \
  "vfmadd231ps %%ymm14, %%ymm13, %[c20]\n\t"                 \
  "vfmadd231ps %%ymm15, %%ymm13, %[c21]\n\t"                 \
  "vbroadcastss " #A0 "+12(%[a]), %%ymm13\n\t"               \
  "vfmadd231ps %%ymm14, %%ymm13, %[c30]\n\t"                 \
  "vfmadd231ps %%ymm15, %%ymm13, %[c31]\n\t"                 \
  "vbroadcastss " #A0 "+16(%[a]), %%ymm13\n\t"               \
  "vfmadd231ps %%ymm14, %%ymm13, %[c40]\n\t"                 \
  "vfmadd231ps %%ymm15, %%ymm13, %[c41]\n\t"                 \
  "vbroadcastss " #A0 "+20(%[a]), %%ymm13\n\t"               \
  "vfmadd231ps %%ymm14, %%ymm13, %[c50]\n\t"                 \
  "vfmadd231ps %%ymm15, %%ymm13, %[c51]\n\t"
    __asm__ volatile(
        "1:\n\t"
        "prefetcht0 192(%[a])\n\t"
        FG_KSTEP(0, 32, 0)
        FG_KSTEP(64, 96, 24)
        FG_KSTEP(128, 160, 48)
        FG_KSTEP(192, 224, 72)
        "addq $96, %[a]\n\t"
        "addq $256, %[b]\n\t"
        "decq %[n]\n\t"
        "jnz 1b\n\t"
        : [a] "+r"(ap), [b] "+r"(bp), [n] "+r"(k4), [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10),
          [c11] "+x"(c11), [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30), [c31] "+x"(c31),
          [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51)
        :
        : "xmm13", "xmm14", "xmm15", "memory", "cc");
#undef FG_KSTEP
  }
  for (; k1 > 0; --k1) {
    const __m256 b0 = _mm256_load_ps(bp);
    const __m256 b1 = _mm256_load_ps(bp + 8);
    __m256 av = _mm256_broadcast_ss(ap + 0);
    c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(ap + 1);
    c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(ap + 2);
    c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(ap + 3);
    c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(ap + 4);
    c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(ap + 5);
    c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
    ap += 6;
    bp += 16;
  }
  __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
  if (bias) {
    bias0 = _mm256_loadu_ps(bias);
    bias1 = _mm256_loadu_ps(bias + 8);
  }
  auto st = [&](int64_t r, __m256 v0, __m256 v1) {
    float* row = c + r * ldc;
    if (add) {
      v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));
      v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row + 8));
    } else if (bias) {
      v0 = _mm256_add_ps(v0, bias0);
      v1 = _mm256_add_ps(v1, bias1);
    }
    if (res) {
      v0 = _mm256_add_ps(v0, _mm256_loadu_ps(res + r * ldc));
      v1 = _mm256_add_ps(v1, _mm256_loadu_ps(res + r * ldc + 8));
    }
    _mm256_storeu_ps(row, v0);
    _mm256_storeu_ps(row + 8, v1);
  };
  st(0, c00, c01);
  st(1, c10, c11);
  st(2, c20, c21);
  st(3, c30, c31);
  st(4, c40, c41);
  st(5, c50, c51);
}

// A tile that sticks out of C (mr < 6 or nr < 16): compute the full 6x16 into scratch (the
// packed panels are zero-padded), then write the valid part.
void kernel_edge(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int64_t mr, int64_t nr,
                 bool add, const float* bias, const float* res) {
  alignas(64) float tile[6 * 16];
  kernel_6x16(kc, ap, bp, tile, 16, false);
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t q = 0; q < nr; ++q) {
      const float t = tile[r * 16 + q];
      const float v = add ? c[r * ldc + q] + t : bias ? t + bias[q] : t;
      c[r * ldc + q] = res ? v + res[r * ldc + q] : v;
    }
}

struct Ukr {
  static constexpr int MR = 6, NR = 16;
  static void full(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool add, const float* bias,
                   const float* res) {
    kernel_6x16(kc, ap, bp, c, ldc, add, bias, res);
  }
  static void edge(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int64_t mr, int64_t nr,
                   bool add, const float* bias, const float* res) {
    kernel_edge(kc, ap, bp, c, ldc, mr, nr, add, bias, res);
  }
};

// KC: one B micro-panel KC*NR*4 = 16 KiB sits in L1; MC: the A block MC*KC*4 = 144 KiB sits in
// L2; TW: the C tile MC*TW*4 = 144 KiB sits in L2 too. (Tuned on Zen 3; Zen 4 and the Xeons
// have 2-4x the L2, but this path runs there only when AVX-512 is off.)
const GemmBlocking& gemm_blocking() {
  static const GemmBlocking g{/*kc=*/256, /*mc=*/144, /*tw=*/256};
  return g;
}

}  // namespace

}  // namespace fg::avx2

#define FG_ISA avx2
#include "ops/matmul_body.h"
