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
#include <cstdlib>
#include <new>

#include "core/parallel.h"
#include "ops/matmul_bf16.h"

namespace fg::avx512_bf16 {

namespace {

constexpr int kMR = 12;        // rows of C per micro-tile (A tiles are this tall)
constexpr int kNR = 32;        // columns of C per micro-tile (B panels are this wide)
constexpr int64_t kKCp = 128;  // K pairs per block: a 128 x 32-word B micro-panel (16 KB) stays in L1
constexpr int64_t kMC = 96;    // rows of C per task
constexpr int64_t kNC = 256;   // columns of C per task: 8 micro-panels (128 KB of B per K block) in L2

// 16 floats -> 16 bf16 (round to nearest even) in the low half of each 32-bit lane
inline __m512i bf16_lo(__m512 v) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)); }

// Packs an operand of R rows (of C) by K into tiles of W rows: dst[t][p][w] = the 32-bit pair
// (k = 2p, 2p + 1) of row t W + w, zero past R and past K; P pairs per tile (P >= ceil(K / 2)).
// Element (r, k) is src[r rs + k ks]; every operand of matmul_bf16 has rs == 1 or ks == 1.
template <int W>
void pack_pairs(uint32_t* dst, const float* src, int64_t R, int64_t K, int64_t P, int64_t rs, int64_t ks) {
  const int64_t tiles = (R + W - 1) / W;
  if (ks == 1) {
    // Rows are K contiguous: 32 k of a row become 16 pairs at once; the 16 x W block of pairs is
    // then stored transposed (pairs outer, rows inner).
    parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
      alignas(64) uint32_t tmp[W][16];
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t p0 = 0; p0 < P; p0 += 16) {
          const int64_t k0 = 2 * p0;
          const int n0 = static_cast<int>(std::clamp<int64_t>(K - k0, 0, 16));
          const int n1 = static_cast<int>(std::clamp<int64_t>(K - k0 - 16, 0, 16));
          for (int w = 0; w < W; ++w) {
            const int64_t r = t * W + w;
            __m512i v = _mm512_setzero_si512();
            if (r < R) {
              const float* s = src + r * rs + k0;
              const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n0) - 1u), s);
              const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n1) - 1u), s + 16);
              v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
            _mm512_store_si512(tmp[w], v);
          }
          const int64_t np = std::min<int64_t>(16, P - p0);
          uint32_t* d = dst + (t * P + p0) * W;
          for (int64_t i = 0; i < np; ++i)
            for (int w = 0; w < W; ++w) d[i * W + w] = tmp[w][i];
        }
    });
    return;
  }
  // Rows are contiguous across r (the operand is stored transposed): k = 2p and 2p + 1 are two
  // rows of the stored matrix; interleaving their bf16 halves gives up to 16 pairs of one tile at
  // once. Blocks of 16 pairs (32 stored rows, which stay in L2) are the outer loop and tiles the
  // inner, so the stored rows are read from memory once although each tile takes only W floats of
  // a row. (Packing A this way is still ~25% of a 768 x 2048 x 256 product, dW of the small GPT:
  // with 256 columns each packed pair is used only 8 times.)
  constexpr int64_t kPB = 16;
  parallel_for((P + kPB - 1) / kPB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t p = b0 * kPB; p < std::min(P, b1 * kPB); ++p)
        for (int c = 0; c < W; c += 16) {
          const int64_t r = t * W + c;
          const int n = static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(R - r, W - c), 0, 16));
          const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
          const int64_t k = 2 * p;
          const __m512 e = k < K ? _mm512_maskz_loadu_ps(m, src + r * rs + k * ks) : _mm512_setzero_ps();
          const __m512 o = k + 1 < K ? _mm512_maskz_loadu_ps(m, src + r * rs + (k + 1) * ks) : _mm512_setzero_ps();
          const __m512i w = _mm512_or_si512(bf16_lo(e), _mm512_slli_epi32(bf16_lo(o), 16));
          const int nw = std::min(16, W - c);  // W = 12: one vector of 12 lanes
          _mm512_mask_storeu_epi32(dst + (t * P + p) * W + c, static_cast<__mmask16>((1u << nw) - 1u), w);
        }
  });
}

// c[0:mr, 0:nr] (= or +=) the products of a packed A tile (ap[p * kMR + r]) and a B micro-panel
// (bp[p * kNR + j]) over np pairs. Rows past mr and columns past nr are computed and not stored.
__attribute__((always_inline)) inline void kernel(float* c, int64_t ldc, const uint32_t* ap, const uint32_t* bp,
                                                  int64_t np, int mr, int nr, bool add) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + p * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + p * kNR + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[p * kMR + r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1u);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xffff) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1u) : __mmask16(0);
  for (int r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    __m512 v0 = acc[r][0], v1 = acc[r][1];
    if (add) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), v0);
      v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), v1);
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

// malloc, not std::vector: a template instantiated in a TU with these flags could be the copy the
// linker keeps for portable callers too (tools/check_isa_symbols.py)
uint32_t* words(int64_t n) {
  void* p = std::aligned_alloc(64, static_cast<size_t>((n * 4 + 63) / 64 * 64));
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<uint32_t*>(p);
}

}  // namespace

void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          bool accumulate) {
  const int64_t P = (K + 1) / 2;
  const int64_t mt = (M + kMR - 1) / kMR, nt = (N + kNR - 1) / kNR;
  uint32_t* const Ap = words(mt * P * kMR);
  uint32_t* const Bp = words(nt * P * kNR);
  // A(i, k) = a[i K + k] or, transposed, a[k M + i]; B as columns j of C: B(j, k) = b[k N + j] or b[j K + k]
  pack_pairs<kMR>(Ap, a, M, K, P, trans_a ? 1 : K, trans_a ? M : 1);
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
        const bool add = accumulate || p0 > 0;
        for (int64_t j = j0; j < j1; j += kNR) {
          const uint32_t* bp = Bp + ((j / kNR) * P + p0) * kNR;
          const int nr = static_cast<int>(std::min<int64_t>(kNR, j1 - j));
          for (int64_t i = i0; i < i1; i += kMR) {
            const int mr = static_cast<int>(std::min<int64_t>(kMR, i1 - i));
            kernel(c + i * N + j, N, Ap + ((i / kMR) * P + p0) * kMR, bp, np, mr, nr, add);
          }
        }
      }
    }
  });
  std::free(Ap);
  std::free(Bp);
}

}  // namespace fg::avx512_bf16
