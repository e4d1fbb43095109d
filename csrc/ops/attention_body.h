// The float32 attention kernels of one vector ISA, written once and compiled per ISA: the
// including file defines FG_ISA (avx2 or avx512) and is compiled with that ISA's flags
// (attention_avx2.cpp, attention_avx512.cpp); everything here lands in namespace fg::FG_ISA, so
// no inline function or template instance is shared between translation units built with
// different flags (the linker could otherwise keep the AVX-512 copy for the AVX2 path).
//
// Head sizes that are multiples of 16 run hand-written tile kernels: every matrix product on
// one 6x16 register-blocked FMA micro-kernel, a fast vectorized exp, causal tiles skipped or
// trimmed, deterministic parallel schedules. Other head sizes run the tiled kernels of
// attention_impl.h compiled with this ISA's flags.
//
// Where the two paths differ: in the register micro-kernel (mk16, mk16_epi): AVX-512 keeps a row
// of the 16-column micro-tile in one zmm register, AVX2 in two ymm; each lane sums the same
// products in the same order, so both give the same bits. The rest (epilogues, online softmax,
// transposes, exp) is 8-lane code that the avx512 path compiles with AVX-512VL (EVEX encodings,
// 32 registers); the loops the compiler vectorizes itself (attention_impl.h) use zmm there.
// Measured on Zen 4 (1 thread, CPU time, B*H = 12, T = 1024, D = 64, causal, fwd+bwd): avx512
// 1.05x (split heads) and 1.06x (packed qkv) the AVX2 speed. The 16-column micro-tile keeps
// D = 16, 48, 80 on the tile kernels. A wider AVX-512 tile for the plain products (P V, dV, dK,
// dQ: 6 or 8 rows x 32 columns, 12 or 16 zmm accumulators) was tried on Zen 4 and measured slower
// (small GPT's shape B 8, H 4, T 256, D 64, packed qkv, 1 thread, the two builds interleaved in one
// process: forward 0.965-0.968x, backward 0.93-0.95x; also non-causal, and also with every A value
// an embedded broadcast), so it is not used; CPUs with two 512-bit FMA units (Intel Xeons) might
// still gain from it, unmeasured. Where the time goes there (same shape, ablations): forward
// S 41%, P V 40%, exp 4%, the rest (Q transpose, softmax passes, rescaling) 15%; backward S and dP
// with their P/dS epilogues 35%, dV, dK, dQ 15-17% each, K/V tile transposes 6%, Di and the q/dO
// row packing 7%.
#ifndef FG_ISA
#error "define FG_ISA (the ISA namespace) before including attention_body.h"
#endif
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/parallel.h"

#include "ops/attention.h"
#include "ops/attention_impl.h"
#if defined(__AVX512F__)
#include "simd/vec_avx512.h"
#else
#include "simd/vec_avx2.h"
#endif

namespace fg::FG_ISA {

// The 8-lane vector type of this path (csrc/simd): the avx2 one, or the EVEX-encoded one of avx512.
#if defined(__AVX512F__)
namespace v8 = ymm;
#else
namespace v8 = ::fg::avx2;
#endif

using attn_detail::lclamp;
using attn_detail::lmax;
using attn_detail::lmin;


// ---- hand-written AVX2/FMA tile kernels for D a multiple of 16 (32, 64, 128 specialized) --
// Every matrix product of forward and backward goes through one register-blocked micro-kernel
// (6 rows x 16 columns, 12 ymm accumulators, K-loop of broadcast-A x two B vectors):
//   C[i, n] (+)= sum_k A[i * ars + k * acs] * B[k * ldb + n]
// B operands are read by rows, so the backward transposes 64-key tiles of K and V (S = Q K^T,
// dP = dO V^T) and the forward transposes its query tile (S^T = K Q^T).
namespace {

constexpr int64_t kQ = 64;  // query rows per tile
constexpr int64_t kK = 64;  // keys per tile
static_assert(kQ % 8 == 0 && kK % 16 == 0, "row vectors of 8, micro-kernel columns of 16");

// Causal trimming of the products into dK/dV/dQ and O on a diagonal tile, where tile row r
// (query) sees tile column c (key) iff c <= r + diag:
//   Tri::none    no trimming;
//   Tri::kend    C rows are queries, the k loop runs over keys: stop at the last visible key;
//   Tri::kbegin  C rows are keys, the k loop runs over queries: start at the first query that
//                sees the row's key.
// diag = kNoDiag turns trimming off (off-diagonal tiles, non-causal attention). (The score
// products trim and mask in their own epilogues: bwd_block, fwd_block.)
enum class Tri { none, kend, kbegin };
constexpr int64_t kNoDiag = int64_t(1) << 40;

// The micro-kernels are the one place where the two paths differ: AVX-512 holds a row's 16
// columns in one zmm register (AVX2: two ymm), so a k step is one load of B and M FMAs. (The
// 8-lane code compiled with AVX-512 flags measured 0.88x the AVX2 speed on Zen 4: GCC kept an
// accumulator of the ymm arrays on the stack.) Each lane sums the same products in the same
// order on both paths, so their results are the same bits.
#if defined(__AVX512F__)
#define FG_MK16_STEP(m0, m1)                                                                   \
  do {                                                                                         \
    const __m512 b = _mm512_loadu_ps(B + k * ldb);                                             \
    const float* a = A + k * acs;                                                              \
    _Pragma("GCC unroll 8") for (int i = 0; i < M; ++i) {                                      \
      if (i < (m0) || i >= (m1)) continue;                                                     \
      c[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * ars]), b, c[i]);                             \
    }                                                                                          \
  } while (0)

template <int M>
__attribute__((always_inline)) inline void mk16(float* __restrict C, int64_t ldc, const float* __restrict A,
                                                int64_t ars, int64_t acs, const float* __restrict B,
                                                int64_t ldb, int64_t K, bool acc, Tri tri = Tri::none,
                                                int64_t rel = 0) {
  __m512 c[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) c[i] = acc ? _mm512_loadu_ps(C + i * ldc) : _mm512_setzero_ps();
  if (tri == Tri::kbegin) {
    int64_t k = lmax(0, rel);
    for (const int64_t e = lmin(K, rel + M - 1); k < e; ++k) FG_MK16_STEP(0, k - rel + 1);
    for (; k < K; ++k) FG_MK16_STEP(0, M);
  } else if (tri == Tri::kend) {
    int64_t k = 0;
    for (const int64_t e = lclamp(rel + 1, 0, K); k < e; ++k) FG_MK16_STEP(0, M);
    for (const int64_t e = lmin(K, rel + M); k < e; ++k) FG_MK16_STEP(k - rel, M);
  } else {
    for (int64_t k = 0; k < K; ++k) FG_MK16_STEP(0, M);
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) _mm512_storeu_ps(C + i * ldc, c[i]);
}
#undef FG_MK16_STEP

template <int M, typename Epi>
__attribute__((always_inline)) inline void mk16_epi(const float* __restrict A, int64_t ars, int64_t acs,
                                                    const float* __restrict B, int64_t ldb, int64_t K, Epi&& epi) {
  __m512 c[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) c[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b = _mm512_loadu_ps(B + k * ldb);
    const float* a = A + k * acs;
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * ars]), b, c[i]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) epi(i, _mm512_castps512_ps256(c[i]), _mm512_extractf32x8_ps(c[i], 1));
}

#else  // AVX2

// One k step of the micro-kernel for the rows m with m0 <= m < m1 (all rows: 0, M).
#define FG_MK16_STEP(m0, m1)                                                                   \
  do {                                                                                         \
    const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);    \
    const float* a = A + k * acs;                                                              \
    _Pragma("GCC unroll 8") for (int i = 0; i < M; ++i) {                                      \
      if (i < (m0) || i >= (m1)) continue;                                                     \
      const __m256 ai = _mm256_broadcast_ss(a + i * ars);                                      \
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);                                                  \
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);                                                  \
    }                                                                                          \
  } while (0)

// Row m of the micro-tile sums k over [0, K) (Tri::none), over [rel + m, K)
// (Tri::kbegin), or over [0, rel + m + 1) (Tri::kend), clamped to [0, K), one FMA per k in
// increasing k order; rows that see no k are left as initialized (0, or C when acc). The
// triangle where only some rows see k is done in registers, skipping the other rows, so a row
// never touches a B row it cannot see (0 * NaN would make it NaN).
template <int M>
__attribute__((always_inline)) inline void mk16(float* __restrict C, int64_t ldc, const float* __restrict A,
                                                int64_t ars, int64_t acs, const float* __restrict B,
                                                int64_t ldb, int64_t K, bool acc, Tri tri = Tri::none,
                                                int64_t rel = 0) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    c0[i] = acc ? _mm256_loadu_ps(C + i * ldc) : _mm256_setzero_ps();
    c1[i] = acc ? _mm256_loadu_ps(C + i * ldc + 8) : _mm256_setzero_ps();
  }
  if (tri == Tri::kbegin) {  // k in [rel, rel + M - 1): rows m <= k - rel
    int64_t k = lmax(0, rel);
    for (const int64_t e = lmin(K, rel + M - 1); k < e; ++k) FG_MK16_STEP(0, k - rel + 1);
    for (; k < K; ++k) FG_MK16_STEP(0, M);
  } else if (tri == Tri::kend) {  // k in [rel + 1, rel + M): rows m >= k - rel
    int64_t k = 0;
    for (const int64_t e = lclamp(rel + 1, 0, K); k < e; ++k) FG_MK16_STEP(0, M);
    for (const int64_t e = lmin(K, rel + M); k < e; ++k) FG_MK16_STEP(k - rel, M);
  } else {
    for (int64_t k = 0; k < K; ++k) FG_MK16_STEP(0, M);
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_ps(C + i * ldc, c0[i]);
    _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
  }
}
#undef FG_MK16_STEP

// Micro-kernel with an epilogue: the M x 16 block sum_k A[i * ars + k * acs] * B[k * ldb + :16]
// is computed in registers and handed to epi(i, lanes 0..7, lanes 8..15) row by row.
template <int M, typename Epi>
__attribute__((always_inline)) inline void mk16_epi(const float* __restrict A, int64_t ars, int64_t acs,
                                                    const float* __restrict B, int64_t ldb, int64_t K, Epi&& epi) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
    const float* a = A + k * acs;
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i * ars);
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) epi(i, c0[i], c1[i]);
}

#endif

template <int M>
inline void mk16_range(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B,
                       int64_t ldb, int64_t i, int64_t n, int64_t K, bool acc, Tri tri, int64_t diag) {
  if (diag == kNoDiag || tri == Tri::none) {
    mk16<M>(C + i * ldc + n, ldc, A + i * ars, ars, acs, B + n, ldb, K, acc);
  } else if (tri == Tri::kend) {  // row m (a query) sees k <= i + m + diag
    mk16<M>(C + i * ldc + n, ldc, A + i * ars, ars, acs, B + n, ldb, K, acc, Tri::kend, i + diag);
  } else {  // kbegin: row m (a key) is seen by k >= i + m - diag
    mk16<M>(C + i * ldc + n, ldc, A + i * ars, ars, acs, B + n, ldb, K, acc, Tri::kbegin, i - diag);
  }
}

// C (M x N, ldc) (+)= A (M x K, strides ars/acs) * B (K x N, ldb); N % 16 == 0.
inline void gemm(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B,
                 int64_t ldb, int64_t M, int64_t N, int64_t K, bool acc, Tri tri = Tri::none,
                 int64_t diag = kNoDiag) {
  for (int64_t n = 0; n < N; n += 16) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) mk16_range<6>(C, ldc, A, ars, acs, B, ldb, i, n, K, acc, tri, diag);
    switch (M - i) {
      case 5: mk16_range<5>(C, ldc, A, ars, acs, B, ldb, i, n, K, acc, tri, diag); break;
      case 4: mk16_range<4>(C, ldc, A, ars, acs, B, ldb, i, n, K, acc, tri, diag); break;
      case 3: mk16_range<3>(C, ldc, A, ars, acs, B, ldb, i, n, K, acc, tri, diag); break;
      case 2: mk16_range<2>(C, ldc, A, ars, acs, B, ldb, i, n, K, acc, tri, diag); break;
      case 1: mk16_range<1>(C, ldc, A, ars, acs, B, ldb, i, n, K, acc, tri, diag); break;
      default: break;
    }
  }
}

// Dt[c * ldd + r] = scale * X[r * ldx + c] for r < n, 0 for n <= r < npad (npad % 8 == 0),
// c < D (D % 8 == 0): 8 x 8 blocks transposed in registers.
inline void transpose_scaled(float* __restrict Dt, int64_t ldd, const float* __restrict X, int64_t ldx, int64_t n,
                             int64_t npad, int64_t D, float scale) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t r0 = 0; r0 < npad; r0 += 8) {
    if (r0 >= n) {
      for (int64_t c = 0; c < D; ++c) _mm256_storeu_ps(Dt + c * ldd + r0, _mm256_setzero_ps());
      continue;
    }
    for (int64_t c0 = 0; c0 < D; c0 += 8) {
      __m256 x[8];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r)
        x[r] = r0 + r < n ? _mm256_mul_ps(vs, _mm256_loadu_ps(X + (r0 + r) * ldx + c0)) : _mm256_setzero_ps();
      const __m256 t0 = _mm256_unpacklo_ps(x[0], x[1]), t1 = _mm256_unpackhi_ps(x[0], x[1]);
      const __m256 t2 = _mm256_unpacklo_ps(x[2], x[3]), t3 = _mm256_unpackhi_ps(x[2], x[3]);
      const __m256 t4 = _mm256_unpacklo_ps(x[4], x[5]), t5 = _mm256_unpackhi_ps(x[4], x[5]);
      const __m256 t6 = _mm256_unpacklo_ps(x[6], x[7]), t7 = _mm256_unpackhi_ps(x[6], x[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = Dt + c0 * ldd + r0;
      _mm256_storeu_ps(d + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
  }
}

// Kt[d * kK + j] = K[j * ldk + d] for j < n, zero-padded to kK keys.
template <int DC>
inline void transpose_keys(float* __restrict Kt, const float* __restrict K, int64_t ldk, int64_t n, int64_t Drt) {
  transpose_scaled(Kt, kK, K, ldk, n, kK, DC > 0 ? DC : Drt, 1.f);
}

// Y[r * ldy + d] = X[r * ldx + d] for r < n, d < D (D % 8 == 0).
inline void copy_rows(float* __restrict Y, int64_t ldy, const float* __restrict X, int64_t ldx, int64_t n, int64_t D) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(Y + r * ldy + d, _mm256_loadu_ps(X + r * ldx + d));
}

// Most floats of q and do rows copied to contiguous scratch by one backward task (per thread).
constexpr int64_t kPackMax = int64_t(1) << 16;

// Sets rows [t0, t1) of head `base` (row stride ld) to zero.
inline void zero_rows(float* base, int64_t ld, int64_t t0, int64_t t1, int64_t D) {
  for (int64_t t = t0; t < t1; ++t) std::fill(base + t * ld, base + t * ld + D, 0.f);
}

inline int64_t nvis(int64_t i, int64_t off, int64_t j0, int64_t nk, bool causal) {
  if (!causal) return nk;
  return lclamp(i + off + 1 - j0, 0, nk);
}

// Lanes j..j+7 of a tile row that are visible (j + lane < nv), as an all-ones/zero mask.
inline __m256 vis_mask(int64_t j, int64_t nv) {
  return _mm256_cmp_ps(_mm256_add_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps(float(j))),
                       _mm256_set1_ps(float(nv)), _CMP_LT_OQ);
}

// e^x for 8 floats: exp_softmax of csrc/simd/vec_math.h (the one the VDPBF16PS kernels take on 16
// lanes) on this path's 8-lane vector type. x < -87.33 (and -inf) gives exactly 0, so a visible key
// whose score is -inf gets no weight (a row whose every visible score is -inf has no key, o = 0);
// NaN in, NaN out.
inline __m256 fast_exp8(__m256 x) { return v8::exp_softmax(v8::Vf{x}).v; }

// x rounded to bfloat16 (nearest even; NaN stays NaN), kept as float32: the bf16 products'
// operands (bf16_round of matmul_bf16.h, 8 lanes at a time).
inline __m256 round_bf16_8(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))),
                                     _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  return _mm256_blendv_ps(_mm256_castsi256_ps(r), x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

// The exp of attention_impl.h's tiled kernels (head sizes not a multiple of 16).
struct Exp8 {
  void operator()(float* x, int64_t n) const {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, fast_exp8(_mm256_loadu_ps(x + j)));
    if (j < n) {
      alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t t = j; t < n; ++t) buf[t - j] = x[t];
      _mm256_store_ps(buf, fast_exp8(_mm256_load_ps(buf)));
      for (int64_t t = j; t < n; ++t) x[t] = buf[t - j];
    }
  }
};


inline float hsum8(__m256 x) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Task order for per-(head, tile) tasks under dynamic_tasks: task t is tile u = t % nt of head
// t / nt, u counted from the costly end (causal: the last query tile, the first key tile).
// Head-major, so the tasks running at one time share their head's k and v in cache (large T:
// spread over all heads, they would stream from memory), and the cheapest tasks of the last
// head come last, evening out the threads' finishing times.
inline void tile_task(int64_t t, int64_t nt, int64_t& head, int64_t& u) {
  head = t / nt;
  u = t % nt;
}

// A float buffer whose data() is 64-byte aligned, so that a 16-float row of a tile is one cache
// line (unaligned tiles cost the micro-kernel ~6%). Zero-filled unless `zero` is false (for
// buffers the caller overwrites entirely). Heap, not stack: thread stacks may be small.
// Owns its memory itself: a std::unique_ptr<float[]> instance here would be a weak symbol shared
// with objects built with other flags (issue 22).
class Buf {
 public:
  explicit Buf(int64_t n, bool zero = true) : v_(zero ? new float[n + 16]() : new float[n + 16]) {
    p_ = v_ + (16 - (reinterpret_cast<uintptr_t>(v_) / sizeof(float)) % 16) % 16;
  }
  Buf(Buf&& o) noexcept : v_(o.v_), p_(o.p_) { o.v_ = o.p_ = nullptr; }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf& operator=(Buf&&) = delete;
  ~Buf() { delete[] v_; }
  float* data() { return p_; }
  const float* data() const { return p_; }

 private:
  float* v_;
  float* p_;
};

// Kt[(t * D + d) * kK + j] = K[t * kK + j, d] for every key tile t of every kv head:
// all key (or value) tiles transposed and zero-padded once, scratch the size of k.
template <int DC>
Buf transpose_all(const float* k, HeadLayout Lk, int64_t Hkv, int64_t BHkv, int64_t S, int64_t Drt) {
  const int64_t D = DC > 0 ? DC : Drt;
  const int64_t nkt = (S + kK - 1) / kK;
  Buf Kt(BHkv * nkt * D * kK, /*zero=*/false);  // transpose_keys writes every element
  parallel_for(BHkv * nkt, 4, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t hk = t / nkt, j0 = (t % nkt) * kK;
      transpose_keys<DC>(Kt.data() + t * D * kK, k + Lk.head(hk, Hkv) + j0 * Lk.st, Lk.st, lmin(kK, S - j0), D);
    }
  });
  return Kt;
}

// Rows [i, i + M) (keys) x columns [n, n + 16) (queries) of the forward's transposed scores
// St = K Qt, and cmax[n..n+16] = max(cmax, visible scores of the block): key row c is visible
// to query column r iff c <= r + diag. Blocks with no visible entry are skipped (left unwritten).
template <int M>
__attribute__((always_inline)) inline void fwd_block(float* __restrict St, float* __restrict cmax, const float* K,
                                                     int64_t ldk, const float* Qt, int64_t i, int64_t n, int64_t D,
                                                     int64_t diag) {
  if (n + 16 + diag <= i) return;
  const __m256 vninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 r0 = _mm256_add_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps(float(n)));
  const __m256 r1 = _mm256_add_ps(r0, _mm256_set1_ps(8.f));
  __m256 mx0 = _mm256_loadu_ps(cmax + n), mx1 = _mm256_loadu_ps(cmax + n + 8);
  mk16_epi<M>(K + i * ldk, ldk, 1, Qt + n, kQ, D, [&](int m, __m256 s0, __m256 s1) __attribute__((always_inline)) {
    _mm256_storeu_ps(St + (i + m) * kQ + n, s0);
    _mm256_storeu_ps(St + (i + m) * kQ + n + 8, s1);
    const int64_t c = i + m;
    if (c - diag > n) {  // query lanes r < c - diag do not see key c
      const __m256 lim = _mm256_set1_ps(float(c - diag));
      s0 = _mm256_blendv_ps(vninf, s0, _mm256_cmp_ps(r0, lim, _CMP_GE_OQ));
      s1 = _mm256_blendv_ps(vninf, s1, _mm256_cmp_ps(r1, lim, _CMP_GE_OQ));
    }
    mx0 = _mm256_max_ps(mx0, s0);
    mx1 = _mm256_max_ps(mx1, s1);
  });
  _mm256_storeu_ps(cmax + n, mx0);
  _mm256_storeu_ps(cmax + n + 8, mx1);
}

// St (nk x kQ) = K Qt for one key tile and the column maxima cmax (kQ) over visible keys.
inline void fwd_scores(float* St, float* cmax, const float* K, int64_t ldk, const float* Qt, int64_t nk, int64_t D,
                       int64_t diag) {
  std::fill(cmax, cmax + kQ, -std::numeric_limits<float>::infinity());
  for (int64_t n = 0; n < kQ; n += 16) {
    int64_t i = 0;
    for (; i + 6 <= nk; i += 6) fwd_block<6>(St, cmax, K, ldk, Qt, i, n, D, diag);
    switch (nk - i) {
      case 5: fwd_block<5>(St, cmax, K, ldk, Qt, i, n, D, diag); break;
      case 4: fwd_block<4>(St, cmax, K, ldk, Qt, i, n, D, diag); break;
      case 3: fwd_block<3>(St, cmax, K, ldk, Qt, i, n, D, diag); break;
      case 2: fwd_block<2>(St, cmax, K, ldk, Qt, i, n, D, diag); break;
      case 1: fwd_block<1>(St, cmax, K, ldk, Qt, i, n, D, diag); break;
      default: break;
    }
  }
}

// Forward, one task per (b, h, query tile of kQ rows), with the scores transposed: per key tile
// St = K Qt (keys x queries, Qt = scale * Q^T of the task's tile, made once), so the online
// softmax runs down the columns with 8 queries per vector (no horizontal reductions), then
// acc += St^T V. Keys are read in place: no transposed copy of k.
template <int DC>
void fast_forward(float* o, HeadLayout Lo, float* lse, const float* q, HeadLayout Lq, const float* k,
                  HeadLayout Lk, const float* v, HeadLayout Lv, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                  int64_t S, bool causal, float scale, int64_t Drt, bool bf16) {
  const int64_t D = DC > 0 ? DC : Drt;  // a constant expression in the fast paths (DC > 0)
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t nqt = (Tq + kQ - 1) / kQ, G = H / Hkv, off = S - Tq;
  // One task per head (its query tiles in turn: k and v stay in the core's cache) when there
  // are heads enough to keep every thread busy, else one per query tile. Rows do not depend on
  // the grouping, so neither do the results.
  const int64_t per = B * H >= 4 * get_num_threads() && nqt > 0 ? nqt : 1;  // (no query tiles: no tasks)
  dynamic_tasks(B * H * nqt / per, [&](auto next) {
    Buf Qtv(D * kQ), Stv(kK * kQ), accv(kQ * D), mv(kQ), lv(kQ), alv(kQ), cmv(kQ);
    float *Qt = Qtv.data(), *St = Stv.data(), *acc = accv.data(), *m = mv.data(), *l = lv.data(), *al = alv.data();
    float* cm = cmv.data();
    const __m256 vninf = _mm256_set1_ps(ninf), iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t t; (t = next()) >= 0;)
    for (int64_t s = t * per; s < (t + 1) * per; ++s) {
      int64_t bh, u;
      tile_task(s, nqt, bh, u);
      const int64_t i0 = (nqt - 1 - u) * kQ, nr = lmin(kQ, Tq - i0);
      const int64_t hk = (bh / H) * Hkv + (bh % H) / G;
      const float* Q = q + Lq.head(bh, H) + i0 * Lq.st;
      const float* Kh = k + Lk.head(hk, Hkv);
      const float* Vh = v + Lv.head(hk, Hkv);
      const int64_t kend = causal ? lclamp(i0 + nr + off, 0, S) : S;
      // Qt[d, r] = scale * Q[r, d], zero-padded to kQ queries
      transpose_scaled(Qt, kQ, Q, Lq.st, nr, kQ, D, scale);
      std::fill(m, m + kQ, ninf);
      std::fill(l, l + kQ, 0.f);
      for (int64_t j0 = 0; j0 < kend; j0 += kK) {  // causal: key tiles past kend are skipped
        const int64_t nk = lmin(kK, kend - j0);
        // diagonal tile: query r sees key j0 + c iff c <= r + diag
        const int64_t diag = causal && i0 + off - j0 < kK - 1 ? i0 + off - j0 : kNoDiag;
        const bool masked = diag != kNoDiag;
        // scores and their column maxima over the visible keys
        fwd_scores(St, cm, Kh + j0 * Lk.st, Lk.st, Qt, nk, D, diag);
        for (int64_t r = 0; r < nr; r += 8) {
          // lanes r..r+7: visible key rows c satisfy r + lane >= c - diag, so rows c >= ce are
          // masked for all 8 lanes: not read here, and never read by the P V product (Tri::kend)
          const __m256 rl = _mm256_add_ps(iota, _mm256_set1_ps(float(r + (masked ? diag : 0))));
          const int64_t ce = masked ? lclamp(r + 8 + diag, 0, nk) : nk;
          const __m256 mx = _mm256_loadu_ps(cm + r);
          const __m256 mo = _mm256_loadu_ps(m + r), mnv = _mm256_max_ps(mo, mx);
          // alpha = exp(m_old - m_new), 0 while m_old = -inf
          const __m256 alpha = _mm256_and_ps(fast_exp8(_mm256_sub_ps(mo, mnv)), _mm256_cmp_ps(mo, vninf, _CMP_NEQ_OQ));
          // pass 2: p = exp(s - m_new), masked entries 0; column sums. While every score seen
          // is -inf (m_new = -inf) subtract 0 instead, so p = 0, not exp(-inf + inf) = NaN.
          const __m256 msub = _mm256_andnot_ps(_mm256_cmp_ps(mnv, vninf, _CMP_EQ_OQ), mnv);
          __m256 sum = _mm256_setzero_ps();
          for (int64_t c = 0; c < ce; ++c) {
            __m256 p = fast_exp8(_mm256_sub_ps(_mm256_loadu_ps(St + c * kQ + r), msub));
            if (masked) p = _mm256_and_ps(p, _mm256_cmp_ps(rl, _mm256_set1_ps(float(c)), _CMP_GE_OQ));
            _mm256_storeu_ps(St + c * kQ + r, bf16 ? round_bf16_8(p) : p);  // P V's operand; l sums float32
            sum = _mm256_add_ps(sum, p);
          }
          _mm256_storeu_ps(l + r, _mm256_fmadd_ps(_mm256_loadu_ps(l + r), alpha, sum));
          _mm256_storeu_ps(m + r, mnv);
          _mm256_storeu_ps(al + r, alpha);
        }
        for (int64_t r = 0; r < nr && j0 > 0; ++r) {  // acc *= alpha (the first tile overwrites acc)
          if (al[r] == 1.f) continue;
          const __m256 va = _mm256_set1_ps(al[r]);
          float* ar = acc + r * D;
          for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(ar + d, _mm256_mul_ps(_mm256_loadu_ps(ar + d), va));
        }
        // acc += P V with P[r, c] = St[c, r]
        gemm(acc, D, St, 1, kQ, Vh + j0 * Lv.st, Lv.st, nr, D, nk, j0 > 0, Tri::kend, diag);
      }
      for (int64_t r = 0; r < nr; ++r) {
        float* orow = o + Lo.head(bh, H) + (i0 + r) * Lo.st;
        const float* ar = acc + r * D;
        // no visible key: zeros. (A NaN score can leave m = -inf, because max drops a NaN
        // followed by a masked lane, but it has made l NaN: that row falls through to NaN.)
        if (m[r] == ninf && l[r] == 0.f) {
          std::fill(orow, orow + D, 0.f);
          lse[bh * Tq + i0 + r] = ninf;
        } else {
          const __m256 inv = _mm256_set1_ps(1.f / l[r]);
          for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(orow + d, _mm256_mul_ps(_mm256_loadu_ps(ar + d), inv));
          lse[bh * Tq + i0 + r] = m[r] + std::log(l[r]);
        }
      }
    }
  });
}

// Rows [i, i + M) x columns [n, n + 16) of the backward tile: S and dP on the micro-kernel,
// P and dS written straight from its registers. nv[r]: visible keys of row r (0 for a row
// with no key); masked entries are 0.
template <int M>
__attribute__((always_inline)) inline void bwd_block(float* __restrict P, float* __restrict dS, const float* Q,
                                                     int64_t ldq, const float* dO, int64_t ldo, const float* Kt,
                                                     const float* Vt, const int64_t* nv, const float* L,
                                                     const float* Dd, int64_t i, int64_t n, int64_t D, float scale,
                                                     bool bf16) {
  bool none = true;  // nothing visible in the block: zeros, no products
  for (int m = 0; m < M; ++m) none = none && nv[i + m] <= n;
  if (none) {
    for (int m = 0; m < M; ++m) {
      _mm256_storeu_ps(P + (i + m) * kK + n, _mm256_setzero_ps());
      _mm256_storeu_ps(P + (i + m) * kK + n + 8, _mm256_setzero_ps());
      _mm256_storeu_ps(dS + (i + m) * kK + n, _mm256_setzero_ps());
      _mm256_storeu_ps(dS + (i + m) * kK + n + 8, _mm256_setzero_ps());
    }
    return;
  }
  const __m256 vs = _mm256_set1_ps(scale);
  // P = exp(scale * S - lse)
  mk16_epi<M>(Q + i * ldq, ldq, 1, Kt + n, kK, D, [&](int m, __m256 s0, __m256 s1) __attribute__((always_inline)) {
    const __m256 vL = _mm256_broadcast_ss(L + i + m);
    __m256 p0 = fast_exp8(_mm256_fmsub_ps(s0, vs, vL)), p1 = fast_exp8(_mm256_fmsub_ps(s1, vs, vL));
    const int64_t v = nv[i + m];
    if (v < n + 16) {  // masked lanes may hold anything
      p0 = _mm256_and_ps(p0, vis_mask(n, v));
      p1 = _mm256_and_ps(p1, vis_mask(n + 8, v));
    }
    _mm256_storeu_ps(P + (i + m) * kK + n, p0);
    _mm256_storeu_ps(P + (i + m) * kK + n + 8, p1);
  });
  // dS = scale * P * (dP - Di), dP = dO V^T
  mk16_epi<M>(dO + i * ldo, ldo, 1, Vt + n, kK, D, [&](int m, __m256 d0, __m256 d1) __attribute__((always_inline)) {
    const __m256 vD = _mm256_broadcast_ss(Dd + i + m);
    const float* p = P + (i + m) * kK + n;
    __m256 g0 = _mm256_mul_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(p)), _mm256_sub_ps(d0, vD));
    __m256 g1 = _mm256_mul_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(p + 8)), _mm256_sub_ps(d1, vD));
    const int64_t v = nv[i + m];
    if (v < n + 16) {
      g0 = _mm256_and_ps(g0, vis_mask(n, v));
      g1 = _mm256_and_ps(g1, vis_mask(n + 8, v));
    }
    if (bf16) {  // the operands of dV = P^T dO, dK = dS^T Q, dQ = dS K (dS from the float32 P)
      g0 = round_bf16_8(g0);
      g1 = round_bf16_8(g1);
      _mm256_storeu_ps(P + (i + m) * kK + n, round_bf16_8(_mm256_loadu_ps(p)));
      _mm256_storeu_ps(P + (i + m) * kK + n + 8, round_bf16_8(_mm256_loadu_ps(p + 8)));
    }
    _mm256_storeu_ps(dS + (i + m) * kK + n, g0);
    _mm256_storeu_ps(dS + (i + m) * kK + n + 8, g1);
  });
}

// Backward tile: P = exp(scale * Q K^T - lse) and dS = scale * P * (dO V^T - Di) for query
// rows i0..i0+nr of one head against key tile j0..j0+nk (Kt, Vt: transposed tiles), both
// kQ x kK row-major. Masked entries, padding keys and rows with no visible key are 0.
template <int DC>
inline void bwd_tile(float* __restrict P, float* __restrict dS, const float* Q, int64_t ldq, const float* dO,
                     int64_t ldo, const float* Kt, const float* Vt, const float* L, const float* Dd, int64_t i0,
                     int64_t nr, int64_t j0, int64_t nk, int64_t off, bool causal, float scale,
                     int64_t /*diag*/, int64_t Drt, bool bf16) {
  const int64_t D = DC > 0 ? DC : Drt;
  const float ninf = -std::numeric_limits<float>::infinity();
  int64_t nv[kQ];
  for (int64_t r = 0; r < nr; ++r) nv[r] = L[i0 + r] == ninf ? 0 : nvis(i0 + r, off, j0, nk, causal);
  Q += i0 * ldq;
  dO += i0 * ldo;
  L += i0;
  Dd += i0;
  for (int64_t n = 0; n < kK; n += 16) {
    int64_t i = 0;
    for (; i + 6 <= nr; i += 6) bwd_block<6>(P, dS, Q, ldq, dO, ldo, Kt, Vt, nv, L, Dd, i, n, D, scale, bf16);
    switch (nr - i) {
      case 5: bwd_block<5>(P, dS, Q, ldq, dO, ldo, Kt, Vt, nv, L, Dd, i, n, D, scale, bf16); break;
      case 4: bwd_block<4>(P, dS, Q, ldq, dO, ldo, Kt, Vt, nv, L, Dd, i, n, D, scale, bf16); break;
      case 3: bwd_block<3>(P, dS, Q, ldq, dO, ldo, Kt, Vt, nv, L, Dd, i, n, D, scale, bf16); break;
      case 2: bwd_block<2>(P, dS, Q, ldq, dO, ldo, Kt, Vt, nv, L, Dd, i, n, D, scale, bf16); break;
      case 1: bwd_block<1>(P, dS, Q, ldq, dO, ldo, Kt, Vt, nv, L, Dd, i, n, D, scale, bf16); break;
      default: break;
    }
  }
}

// Backward. Di = rowsum(dO * O), then per (query tile, key tile) pair the five products
// S = Q K^T, dP = dO V^T (P, dS by bwd_tile), dV += P^T dO, dK += dS^T Q, dQ += dS K.
// Two schedules, both deterministic for any thread count (each output element is summed by
// one task in a fixed order); which one runs depends on the shape only, never on threads:
//  - many heads (B * Hkv >= kManyHeads): one task per (b, kv head) doing Di and all five
//    products for the heads of its group, dK/dV/dQ accumulated in place (the first product
//    into a tile overwrites it);
//  - few heads: dK/dV by one task per (b, kv head, key tile) (4 products, query heads of the
//    group in order), then dQ by one task per (b, h, query tile) (3 products), so the work
//    spreads over all threads at the price of recomputing S and dP.
constexpr int64_t kManyHeads = 16;

template <int DC>
void fast_backward(float* dq, HeadLayout Ldq, float* dk, HeadLayout Ldk, float* dv, HeadLayout Ldv,
                   const float* do_, HeadLayout Ldo, const float* q, HeadLayout Lq, const float* k,
                   HeadLayout Lk, const float* v, HeadLayout Lv, const float* o, HeadLayout Lo,
                   const float* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, bool causal,
                   float scale, int64_t Drt, bool bf16) {
  const int64_t D = DC > 0 ? DC : Drt;
  const int64_t G = H / Hkv, off = S - Tq, nkt = (S + kK - 1) / kK, nqt = (Tq + kQ - 1) / kQ;
  attn_detail::Scratch<float> Di(B * H * Tq);
  // Di[bh * Tq + t] = dO_t . O_t for the rows [t0, t1) of head bh
  auto rowdots = [&](int64_t bh, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* dorow = do_ + Ldo.head(bh, H) + t * Ldo.st;
      const float* orow = o + Lo.head(bh, H) + t * Lo.st;
      __m256 a = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(dorow + d), _mm256_loadu_ps(orow + d), a);
      Di[bh * Tq + t] = hsum8(a);
    }
  };
  // first query tile that sees key tile j0 (causal: query i sees key j iff j <= i + off)
  auto first_qtile = [&](int64_t j0) { return causal ? lclamp(j0 - off, 0, Tq) / kQ * kQ : 0; };
  // tile (i0, j0) on the causal diagonal: row r sees key column c iff c <= r + diag
  auto diagonal = [&](int64_t i0, int64_t j0) { return causal && i0 + off - j0 < kK - 1 ? i0 + off - j0 : kNoDiag; };

  if (B * Hkv >= kManyHeads) {
    // Strided q and do rows of the group's heads, and k rows of the key tile, are copied to
    // contiguous scratch (the group's when it is small enough): operands read by rows with the
    // large strides of packed qkv (3 H D floats) map to a few cache sets and evict each other.
    const bool pack = (Lq.st != D || Ldo.st != D) && G * Tq * D <= kPackMax, pack_k = Lk.st != D;
    dynamic_tasks(B * Hkv, [&](auto next) {
      Buf Ktv(D * kK), Vtv(D * kK), Pv(kQ * kK), dSv(kQ * kK), Kcv(kK * D, false);
      Buf Qcv(pack ? G * Tq * D : 1, false), dOcv(pack ? G * Tq * D : 1, false);
      float *Kt = Ktv.data(), *Vt = Vtv.data(), *P = Pv.data(), *dS = dSv.data(), *Kc = Kcv.data();
      const int64_t ldq = pack ? D : Lq.st, ldo = pack ? D : Ldo.st;
      for (int64_t hk; (hk = next()) >= 0;) {
        const float* Kh = k + Lk.head(hk, Hkv);
        const float* Vh = v + Lv.head(hk, Hkv);
        float* dKh = dk + Ldk.head(hk, Hkv);
        float* dVh = dv + Ldv.head(hk, Hkv);
        const int64_t bh0 = (hk / Hkv) * H + (hk % Hkv) * G;  // first query head of the group
        auto Qof = [&](int64_t bh) { return pack ? Qcv.data() + (bh - bh0) * Tq * D : q + Lq.head(bh, H); };
        auto dOof = [&](int64_t bh) { return pack ? dOcv.data() + (bh - bh0) * Tq * D : do_ + Ldo.head(bh, H); };
        for (int64_t bh = bh0; bh < bh0 + G; ++bh) rowdots(bh, 0, Tq);  // the group's Di, in the task
        if (pack)
          for (int64_t bh = bh0; bh < bh0 + G; ++bh) {
            copy_rows(Qcv.data() + (bh - bh0) * Tq * D, D, q + Lq.head(bh, H), Lq.st, Tq, D);
            copy_rows(dOcv.data() + (bh - bh0) * Tq * D, D, do_ + Ldo.head(bh, H), Ldo.st, Tq, D);
          }
        // The first product into a dK/dV/dQ tile overwrites it (gemm with acc = false writes
        // every row, masked ones as 0); only rows that get no product at all are zeroed.
        // dQ rows below first_qtile(0) see no key (S < T).
        for (int64_t bh = bh0; bh < bh0 + G; ++bh) zero_rows(dq + Ldq.head(bh, H), Ldq.st, 0, first_qtile(0), D);
        for (int64_t j0 = 0; j0 < S; j0 += kK) {
          const int64_t nk = lmin(kK, S - j0), iq = first_qtile(j0);
          if (iq >= Tq) {  // no query sees this key tile
            zero_rows(dKh, Ldk.st, j0, j0 + nk, D);
            zero_rows(dVh, Ldv.st, j0, j0 + nk, D);
            continue;
          }
          transpose_keys<DC>(Kt, Kh + j0 * Lk.st, Lk.st, nk, D);
          transpose_keys<DC>(Vt, Vh + j0 * Lv.st, Lv.st, nk, D);
          if (pack_k) copy_rows(Kc, D, Kh + j0 * Lk.st, Lk.st, nk, D);
          const float* Kr = pack_k ? Kc : Kh + j0 * Lk.st;  // the key tile's rows, D floats apart
          for (int64_t bh = bh0; bh < bh0 + G; ++bh) {
            const float* Qh = Qof(bh);
            const float* dOh = dOof(bh);
            float* dQh = dq + Ldq.head(bh, H);
            for (int64_t i0 = iq; i0 < Tq; i0 += kQ) {
              const int64_t nr = lmin(kQ, Tq - i0);
              const int64_t diag = diagonal(i0, j0);
              const bool acc_kv = bh != bh0 || i0 != iq;
              bwd_tile<DC>(P, dS, Qh, ldq, dOh, ldo, Kt, Vt, lse + bh * Tq, Di.data() + bh * Tq, i0, nr, j0, nk, off,
                           causal, scale, diag, D, bf16);
              gemm(dVh + j0 * Ldv.st, Ldv.st, P, 1, kK, dOh + i0 * ldo, ldo, nk, D, nr, acc_kv, Tri::kbegin, diag);
              gemm(dKh + j0 * Ldk.st, Ldk.st, dS, 1, kK, Qh + i0 * ldq, ldq, nk, D, nr, acc_kv, Tri::kbegin, diag);
              gemm(dQh + i0 * Ldq.st, Ldq.st, dS, kK, 1, Kr, D, nr, D, nk, j0 != 0, Tri::kend, diag);
            }
          }
        }
      }
    });
    return;
  }

  parallel_for(B * H * Tq, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e;) {
      const int64_t bh = i / Tq, t1 = lmin(e, (bh + 1) * Tq);
      rowdots(bh, i % Tq, t1 - bh * Tq);
      i = t1;
    }
  });
  const Buf Kt = transpose_all<DC>(k, Lk, Hkv, B * Hkv, S, D), Vt = transpose_all<DC>(v, Lv, Hkv, B * Hkv, S, D);
  // dK, dV: one task per (b, kv head, key tile)
  dynamic_tasks(B * Hkv * nkt, [&](auto next) {
    Buf Pv(kQ * kK), dSv(kQ * kK);
    float *P = Pv.data(), *dS = dSv.data();
    for (int64_t t; (t = next()) >= 0;) {
      int64_t hk, jt;
      tile_task(t, nkt, hk, jt);
      const int64_t j0 = jt * kK, nk = lmin(kK, S - j0);
      const int64_t bh0 = (hk / Hkv) * H + (hk % Hkv) * G;
      const float* Ktt = Kt.data() + (hk * nkt + jt) * D * kK;
      const float* Vtt = Vt.data() + (hk * nkt + jt) * D * kK;
      float* dKt = dk + Ldk.head(hk, Hkv) + j0 * Ldk.st;
      float* dVt = dv + Ldv.head(hk, Hkv) + j0 * Ldv.st;
      const int64_t iq = first_qtile(j0);
      if (iq >= Tq) {  // no query sees this key tile
        zero_rows(dKt, Ldk.st, 0, nk, D);
        zero_rows(dVt, Ldv.st, 0, nk, D);
      }
      for (int64_t bh = bh0; bh < bh0 + G; ++bh) {
        const float* Qh = q + Lq.head(bh, H);
        const float* dOh = do_ + Ldo.head(bh, H);
        for (int64_t i0 = iq; i0 < Tq; i0 += kQ) {
          const int64_t nr = lmin(kQ, Tq - i0);
          const int64_t diag = diagonal(i0, j0);
          const bool acc_kv = bh != bh0 || i0 != iq;  // the first product overwrites
          bwd_tile<DC>(P, dS, Qh, Lq.st, dOh, Ldo.st, Ktt, Vtt, lse + bh * Tq, Di.data() + bh * Tq, i0, nr, j0, nk, off,
                       causal, scale, diag, D, bf16);
          gemm(dVt, Ldv.st, P, 1, kK, dOh + i0 * Ldo.st, Ldo.st, nk, D, nr, acc_kv, Tri::kbegin, diag);
          gemm(dKt, Ldk.st, dS, 1, kK, Qh + i0 * Lq.st, Lq.st, nk, D, nr, acc_kv, Tri::kbegin, diag);
        }
      }
    }
  });
  // dQ: one task per (b, h, query tile)
  dynamic_tasks(B * H * nqt, [&](auto next) {
    Buf Pv(kQ * kK), dSv(kQ * kK);
    float *P = Pv.data(), *dS = dSv.data();
    for (int64_t t; (t = next()) >= 0;) {
      int64_t bh, u;
      tile_task(t, nqt, bh, u);
      const int64_t i0 = (nqt - 1 - u) * kQ, nr = lmin(kQ, Tq - i0);
      const int64_t hk = (bh / H) * Hkv + (bh % H) / G;
      float* dQt = dq + Ldq.head(bh, H) + i0 * Ldq.st;
      const int64_t kend = causal ? lclamp(i0 + nr + off, 0, S) : S;
      if (kend <= 0) zero_rows(dQt, Ldq.st, 0, nr, D);  // else the j0 = 0 product overwrites
      for (int64_t j0 = 0; j0 < kend; j0 += kK) {
        const int64_t nk = lmin(kK, S - j0);
        const int64_t tile = (hk * nkt + j0 / kK) * D * kK, diag = diagonal(i0, j0);
        bwd_tile<DC>(P, dS, q + Lq.head(bh, H), Lq.st, do_ + Ldo.head(bh, H), Ldo.st, Kt.data() + tile,
                     Vt.data() + tile, lse + bh * Tq, Di.data() + bh * Tq, i0, nr, j0, nk, off, causal, scale, diag, D, bf16);
        gemm(dQt, Ldq.st, dS, kK, 1, k + Lk.head(hk, Hkv) + j0 * Lk.st, Lk.st, nr, D, nk, j0 != 0, Tri::kend, diag);
      }
    }
  });
}

}  // namespace

// The entry points' rounding of q, k, v and dO (bf16 = true), 8 floats at a time.
void round_bf16(float* dst, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, round_bf16_8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(dst + i, m, round_bf16_8(_mm256_maskload_ps(x + i, m)));
  }
}

bool attention_forward_strided(float* o, HeadLayout Lo, float* lse, const float* q, HeadLayout Lq,
                               const float* k, HeadLayout Lk, const float* v, HeadLayout Lv, int64_t B,
                               int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal,
                               float scale, bool bf16) {
  // the common head sizes as compile-time constants (loops over D unroll fully); any other
  // multiple of 16 on the same tile kernels with D read at run time
  switch (D) {
    case 32: fast_forward<32>(o, Lo, lse, q, Lq, k, Lk, v, Lv, B, H, Hkv, Tq, S, causal, scale, D, bf16); return true;
    case 64: fast_forward<64>(o, Lo, lse, q, Lq, k, Lk, v, Lv, B, H, Hkv, Tq, S, causal, scale, D, bf16); return true;
    case 128: fast_forward<128>(o, Lo, lse, q, Lq, k, Lk, v, Lv, B, H, Hkv, Tq, S, causal, scale, D, bf16); return true;
    default:
      if (D % 16 != 0) return false;
      fast_forward<0>(o, Lo, lse, q, Lq, k, Lk, v, Lv, B, H, Hkv, Tq, S, causal, scale, D, bf16);
      return true;
  }
}

bool attention_backward_strided(float* dq, HeadLayout Ldq, float* dk, HeadLayout Ldk, float* dv,
                                HeadLayout Ldv, const float* do_, HeadLayout Ldo, const float* q,
                                HeadLayout Lq, const float* k, HeadLayout Lk, const float* v, HeadLayout Lv,
                                const float* o, HeadLayout Lo, const float* lse, int64_t B, int64_t H,
                                int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, float scale,
                                bool bf16) {
#define FG_BWD(DC) \
  fast_backward<DC>(dq, Ldq, dk, Ldk, dv, Ldv, do_, Ldo, q, Lq, k, Lk, v, Lv, o, Lo, lse, B, H, Hkv, Tq, S, causal, scale, \
                    D, bf16)
  switch (D) {
    case 32: FG_BWD(32); return true;
    case 64: FG_BWD(64); return true;
    case 128: FG_BWD(128); return true;
    default:
      if (D % 16 != 0) return false;
      FG_BWD(0);
      return true;
  }
#undef FG_BWD
}

void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                       bool causal, float scale, bool bf16) {
  const HeadLayout Lq = heads_contiguous(H, Tq, D), Lkv = heads_contiguous(Hkv, S, D);
  if (attention_forward_strided(o, Lq, lse, q, Lq, k, Lkv, v, Lkv, B, H, Hkv, Tq, S, D, causal, scale, bf16)) return;
  attn_detail::forward<0>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, Exp8{}, bf16);
}

void attention_backward(float* dq, float* dk, float* dv, const float* do_, const float* q,
                        const float* k, const float* v, const float* o, const float* lse,
                        int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                        bool causal, float scale, bool bf16) {
  const HeadLayout Lq = heads_contiguous(H, Tq, D), Lkv = heads_contiguous(Hkv, S, D);
  if (attention_backward_strided(dq, Lq, dk, Lkv, dv, Lkv, do_, Lq, q, Lq, k, Lkv, v, Lkv, o, Lq, lse, B, H, Hkv,
                                 Tq, S, D, causal, scale, bf16))
    return;
  attn_detail::backward<0>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, Exp8{}, bf16);
}

}  // namespace fg::FG_ISA
