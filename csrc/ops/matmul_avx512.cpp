// AVX-512 float32 GEMM: a 12x32 micro-kernel and its blocking, then the shared driver
// (matmul_body.h) compiled with the AVX-512 F/BW/VL/DQ flags into fg::avx512. Called from
// matmul.cpp on the avx512 path.
//
// Where this differs from the AVX2 path (matmul_avx2.cpp), and why:
//  - register tile 12 x 32: 24 zmm accumulators (of the 32 registers AVX-512 has; AVX2's 16
//    allow only 12 ymm, hence its 6 x 16) plus two B vectors; each A value is broadcast once
//    and feeds two FMAs (GCC's choice; making each FMA take it as an embedded broadcast from
//    memory measured 1.006x on Zen 4, not kept). 24 independent FMA chains cover two 512-bit FMA
//    pipes of 4-cycle latency (Intel Xeons: 8 in flight needed), and per k step 14 loads feed
//    24 FMAs.
//  - tiles that stick out of C are stored straight from the registers with masked loads and
//    stores (AVX-512 masks); AVX2 computes them into scratch and copies the valid part.
//  - blocking (gemm_blocking below): a longer K block than AVX2's, measured.
// On Zen 4, whose 512-bit FMAs issue at half the rate of 256-bit ones (the same FLOP/s), this
// kernel measured 1.03x the AVX2 one (see gemm_blocking); on Xeons with two 512-bit FMA units
// its FMA peak is twice AVX2's.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <unistd.h>

#include "ops/matmul.h"

namespace fg::avx512 {

namespace {

// k steps before the end of the micro-kernel's k loop at which it prefetches its C tile
constexpr int64_t kCTail = 32;

// c[0:12, 0:32] (= or +=) sum_p ap[p][0:12]^T bp[p][0:32]; ap: (kc, 12) packed, bp: (kc, 32)
// packed and 64-byte aligned. Epilogue as the AVX2 kernel's: c = acc (+ c when add, else
// + bias), then + res. kEdge: only rows < mr and columns < nr of c, bias and res are touched.
template <bool kEdge>
__attribute__((always_inline)) inline void kernel_12x32(int64_t kc, const float* ap, const float* bp, float* c,
                                                        int64_t ldc, bool add, const float* bias, const float* res,
                                                        int64_t mr, int64_t nr) {
  constexpr int R = 12;
  __m512 c0[R], c1[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  auto step = [&](int64_t n) __attribute__((always_inline)) {
#pragma GCC unroll 2
    for (int64_t p = 0; p < n; ++p) {
      const __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const __m512 a = _mm512_set1_ps(ap[r]);
        c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
      }
      ap += R;
      bp += 32;
    }
  };
  // C (and the residual) are touched only after the k loop: pull their rows in during its last
  // kCTail steps. Pulled in before the loop, they were evicted again by the 32-column B panel and
  // A streaming through L1: prefetching late measured 1.016-1.027x on the small GPT's 12 products
  // (Zen 4, 2 threads; K = 256 gains most, up to 1.07x). The AVX2 kernel, whose B panel is half
  // as wide, measured no gain from it (0.996x) and prefetches before its loop.
  const int64_t tail = kc < kCTail ? kc : kCTail;
  step(kc - tail);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 31), _MM_HINT_T0);
    if (res) {
      _mm_prefetch(reinterpret_cast<const char*>(res + r * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(res + r * ldc + 31), _MM_HINT_T0);
    }
  }
  step(tail);
  const __mmask16 m0 = kEdge ? __mmask16((1u << std::min<int64_t>(nr, 16)) - 1) : __mmask16(0xFFFF);
  const __mmask16 m1 = kEdge ? __mmask16(nr > 16 ? (1u << (nr - 16)) - 1 : 0) : __mmask16(0xFFFF);
  auto ld = [&](const float* x, __mmask16 m) { return kEdge ? _mm512_maskz_loadu_ps(m, x) : _mm512_loadu_ps(x); };
  __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
  if (bias) {
    bias0 = ld(bias, m0);
    bias1 = ld(bias + 16, m1);
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    if (kEdge && r >= mr) break;
    float* row = c + r * ldc;
    __m512 v0 = c0[r], v1 = c1[r];
    if (add) {
      v0 = _mm512_add_ps(v0, ld(row, m0));
      v1 = _mm512_add_ps(v1, ld(row + 16, m1));
    } else if (bias) {
      v0 = _mm512_add_ps(v0, bias0);
      v1 = _mm512_add_ps(v1, bias1);
    }
    if (res) {
      v0 = _mm512_add_ps(v0, ld(res + r * ldc, m0));
      v1 = _mm512_add_ps(v1, ld(res + r * ldc + 16, m1));
    }
    if (kEdge) {
      _mm512_mask_storeu_ps(row, m0, v0);
      _mm512_mask_storeu_ps(row + 16, m1, v1);
    } else {
      _mm512_storeu_ps(row, v0);
      _mm512_storeu_ps(row + 16, v1);
    }
  }
}

struct Ukr {
  static constexpr int MR = 12, NR = 32;
  static void full(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool add, const float* bias,
                   const float* res) {
    kernel_12x32<false>(kc, ap, bp, c, ldc, add, bias, res, MR, NR);
  }
  static void edge(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int64_t mr, int64_t nr,
                   bool add, const float* bias, const float* res) {
    kernel_12x32<true>(kc, ap, bp, c, ldc, add, bias, res, mr, nr);
  }
};

// Per CPU, from its L2 size. Measured on Zen 4 (32 KiB L1d, 1 MiB L2), 1 thread, CPU time, against
// the AVX2 path in the same process: KC 192 0.99x the AVX2 speed, 384 1.01x, 512 1.02x,
// 768 and 1024 1.03x (107-110 GFLOP/s of a 112 peak at square 1024/2048 and the GPT-2 shapes):
// a larger KC means fewer passes of C through the kernel, and the B micro-panel (KC x 32 floats)
// streams from L2 fast enough (2 loads per 24 FMAs). The A block (MC x KC), the C tile (MC x TW)
// and the B panel then take ~690 KiB of the L2. CPUs with a smaller L2 get KC = 384 (untested).
const GemmBlocking& gemm_blocking() {
  static const GemmBlocking g = [] {
    long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return l2 > 0 && l2 < (1 << 20) ? GemmBlocking{/*kc=*/384, /*mc=*/144, /*tw=*/256}
                                    : GemmBlocking{/*kc=*/768, /*mc=*/144, /*tw=*/256};
  }();
  return g;
}

}  // namespace

}  // namespace fg::avx512

#define FG_ISA avx512
#include "ops/matmul_body.h"
