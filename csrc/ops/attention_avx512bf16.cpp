// Attention in mixed precision on AVX512_BF16 (VDPBF16PS), forward and backward: every product takes
// bf16 operands in K pairs and sums in float32, 32 products per instruction (the float32 kernels of
// attention_body.h do 16). Compiled with the AVX-512 flags plus -mavx512bf16; attention.cpp calls it
// only where the CPU has AVX512_BF16, on the avx512 path, with bf16 = true and D % 16 == 0.
//
// Forward: the schedule and online softmax of fast_forward in attention_body.h (one task per (b, h)
// query tile of 64 rows, 64-key tiles, scores transposed so the softmax runs 16 queries per vector).
// What differs is the operands' layout, because VDPBF16PS multiplies a *pair* of bf16 along K into
// each float32 lane:
//   S^T = K Q^T  A = the key rows in bf16 (pairs along D, as stored), B = the query tile as
//                Qp[d pair][query]: one 32-bit pair per lane;
//   O += P V     A = Pp[key pair][query] (P rounded to bf16, written by the softmax pass), B = V as
//                Vp[key pair][d]: two rows of V interleaved, packed once per call (S padded to even).
// Backward (attention_backward_dpbf16): per (key tile, query tile) S^T = K Q^T and dP^T = V dO^T as
// in the forward, P and dS in float32, rounded to bf16 as the emulated kernels round them, then
// dV += P^T dO and dK += dS^T Q (A: rows of P^T / dS^T in query pairs, B: dO / Q as query pairs) and
// dQ += dS K (A: dS^T in key pairs, B: K as key pairs); every operand packed once per call.
// Masked entries get P = dS = 0; a masked key or query that shares a pair with a visible one
// multiplies its row by that 0, so a NaN or inf there reaches the sums (the float32 kernels skip
// masked entries). Conversions use VCVTNE2PS2BF16 (round to nearest even; denormals read as zero).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/parallel.h"
#include "ops/attention.h"
#include "ops/matmul_bf16.h"
#define FG_VEC_AVX512_NS avx512_bf16  // the vector type in this file's namespace (not fg::avx512's flags)
#include "simd/vec_avx512.h"

namespace fg::avx512_bf16 {

namespace {

constexpr int64_t kQ = 64;  // query rows per tile
constexpr int64_t kK = 64;  // keys per tile

inline int64_t iclamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (hi < v ? hi : v); }

// A uint32 buffer aligned to 64 bytes, uninitialized (callers write what they read), from the
// host memory cache (fresh pages for the per-call packed k and v would cost more than packing).
// Owns its memory itself (no std::unique_ptr instance shared with objects built with other flags).
class Words {
 public:
  explicit Words(int64_t n)
      : bytes_(static_cast<size_t>(n + 16) * 4), v_(static_cast<uint32_t*>(attention_scratch(bytes_))) {
    p_ = v_ + (16 - (reinterpret_cast<uintptr_t>(v_) / 4) % 16) % 16;
  }
  ~Words() { attention_scratch_free(v_, bytes_); }
  Words(const Words&) = delete;
  Words& operator=(const Words&) = delete;
  uint32_t* data() { return p_; }
  float* f() { return reinterpret_cast<float*>(p_); }

 private:
  size_t bytes_;
  uint32_t* v_;
  uint32_t* p_;
};

// bf16 pairs (x[2i], x[2i+1]) of 32 floats, i < 16 (zero past n floats).
inline __m512i pairs32(const float* x, int64_t n) {
  const __mmask16 m0 = static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << (n < 0 ? 0 : n)) - 1u);
  const __mmask16 m1 = static_cast<__mmask16>(n >= 32 ? 0xffff : (1u << (n - 16 < 0 ? 0 : n - 16)) - 1u);
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + 16), _mm512_maskz_loadu_ps(m0, x));
}

// Lane r of the result: the pair (a[r], b[r]) in bf16, a in the low half.
inline __m512i interleave(__m512 a, __m512 b) {
  const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a's 16 bf16, then b's
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, ab);
}

// dst[p] = the bf16 pair (x[2p], x[2p + 1]) for p < D / 2: a row as an operand whose pairs run
// along D.
inline void row_pairs(uint32_t* dst, const float* x, int64_t D) {
  for (int64_t d = 0; d < D; d += 32)
    _mm512_mask_storeu_epi32(dst + d / 2, static_cast<__mmask16>(D - d >= 32 ? 0xffff : 0xff), pairs32(x + d, D - d));
}

// dst[d] = the bf16 pair (a[d], b[d]) for d < D (b = nullptr reads as zeros): two rows interleaved,
// the B operand of a product summed over rows.
inline void rows_interleaved(uint32_t* dst, const float* a, const float* b, int64_t D) {
  for (int64_t d = 0; d < D; d += 16)
    _mm512_storeu_si512(dst + d, interleave(_mm512_loadu_ps(a + d), b ? _mm512_loadu_ps(b + d) : _mm512_setzero_ps()));
}

// x[i] lane j <- x[j] lane i: a 16 x 16 transpose of 32-bit elements (4 x 4 blocks inside the 128-bit
// lanes, then the blocks across lanes).
inline void transpose16(__m512i (&x)[16]) {
  __m512i u[16];
  for (int g = 0; g < 16; g += 4) {
    const __m512i t0 = _mm512_unpacklo_epi32(x[g], x[g + 1]), t1 = _mm512_unpackhi_epi32(x[g], x[g + 1]);
    const __m512i t2 = _mm512_unpacklo_epi32(x[g + 2], x[g + 3]), t3 = _mm512_unpackhi_epi32(x[g + 2], x[g + 3]);
    u[g] = _mm512_unpacklo_epi64(t0, t2);  // lane k: column 4k + (0..3) of rows g..g+3
    u[g + 1] = _mm512_unpackhi_epi64(t0, t2);
    u[g + 2] = _mm512_unpacklo_epi64(t1, t3);
    u[g + 3] = _mm512_unpackhi_epi64(t1, t3);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i a = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), b = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
    const __m512i c = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), d = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
    x[j] = _mm512_shuffle_i32x4(a, c, 0x88);
    x[4 + j] = _mm512_shuffle_i32x4(b, d, 0x88);
    x[8 + j] = _mm512_shuffle_i32x4(a, c, 0xdd);
    x[12 + j] = _mm512_shuffle_i32x4(b, d, 0xdd);
  }
}

// dst[p * ld + r] = the bf16 pair (x_r[2p], x_r[2p + 1]) of row x_r = X + r * st for r < n, zero for
// n <= r < npad (npad % 16 == 0): a tile of rows as a B operand with one row per lane, pairs along D.
inline void tile_pairs(uint32_t* dst, int64_t ld, const float* X, int64_t st, int64_t n, int64_t npad, int64_t D) {
  for (int64_t r0 = 0; r0 < npad; r0 += 16)
    for (int64_t d = 0; d < D; d += 32) {
      __m512i x[16];
      for (int i = 0; i < 16; ++i) x[i] = r0 + i < n ? pairs32(X + (r0 + i) * st + d, D - d) : _mm512_setzero_si512();
      transpose16(x);
      for (int64_t p = 0; p < 16 && d / 2 + p < D / 2; ++p) _mm512_storeu_si512(dst + (d / 2 + p) * ld + r0, x[p]);
    }
}

// fn(hk, j, two, K0, V0) for every kv head hk < BHkv and even key j < S, in parallel: K0, V0 = key and
// value row j of head hk, two = whether row j + 1 exists (the rows one call packs).
template <typename F>
void for_key_pairs(const float* k, HeadLayout Lk, const float* v, HeadLayout Lv, int64_t BHkv, int64_t Hkv, int64_t S,
                   F&& fn) {
  const int64_t S2 = (S + 1) / 2;
  parallel_for(BHkv * S2, 16, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t hk = t / S2, j = 2 * (t % S2);
      fn(hk, j, j + 1 < S, k + Lk.head(hk, Hkv) + j * Lk.st, v + Lv.head(hk, Hkv) + j * Lv.st);
    }
  });
}

// e^x for 16 floats: exp_softmax of csrc/simd/vec_math.h (attention_body.h's exp, on 16 lanes).
inline __m512 fast_exp16(__m512 x) { return exp_softmax(Vf{x}).v; }

// C (M x 16 NV, ldc) (+)= sum_p A[i * ars + p * acs] (a bf16 pair) . B[p * ldb + 0..16 NV) (16 NV pairs),
// P pair steps, NV VDPBF16PS per row and step. (Each lane sums its products in p order whatever M and
// NV are, so the micro-tile shape never changes the bits.)
template <int M, int NV>
__attribute__((always_inline)) inline void mk(float* __restrict C, int64_t ldc, const uint32_t* __restrict A,
                                              int64_t ars, int64_t acs, const uint32_t* __restrict B, int64_t ldb,
                                              int64_t P, bool acc) {
  __m512 c[M][NV];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = acc ? _mm512_loadu_ps(C + i * ldc + 16 * j) : _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    __m512bh b[NV];
    for (int j = 0; j < NV; ++j) b[j] = (__m512bh)_mm512_loadu_si512(B + p * ldb + 16 * j);
    const uint32_t* a = A + p * acs;
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * ars]));
      for (int j = 0; j < NV; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], ai, b[j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(C + i * ldc + 16 * j, c[i][j]);
}

// The products a tile on the causal diagonal needs, where query r sees key c iff c <= r + diag:
//   cols    C rows are keys, columns queries (S^T, dP^T): micro-tiles with every entry masked are
//           skipped, left unwritten (the softmax pass masks what it reads there);
//   kbegin  C rows are keys, pairs run over queries (dV, dK): a micro-tile starts at the pair of the
//           first query that sees its first key;
//   kend    C rows are queries, pairs run over keys (dQ, O): a micro-tile ends after the pair of the
//           last key its last query sees.
// The pairs left out multiply P = 0 or dS = 0 (masked): sums keep their value.
// diag = kNoDiag (off the diagonal, or not causal) trims nothing.
constexpr int64_t kNoDiag = int64_t(1) << 40;
struct Trim {
  enum Kind { none, cols, kbegin, kend } kind = none;
  int64_t diag = kNoDiag;
};
inline int64_t half_floor(int64_t x) { return x >= 0 ? x / 2 : -((1 - x) / 2); }

// Columns [n, n + 16 NV) of C (M x N) (+)= A B: 8-row micro-tiles, then the rest of M.
template <int NV, int Mt>
__attribute__((always_inline)) inline void dp_tile(float* C, int64_t ldc, const uint32_t* A, int64_t ars, int64_t acs,
                                                   const uint32_t* B, int64_t ldb, int64_t i, int64_t n, int64_t P,
                                                   bool acc, Trim t) {
  int64_t p0 = 0, p1 = P;
  if (t.kind == Trim::cols && i > n + 16 * NV - 1 + t.diag) return;
  if (t.kind == Trim::kbegin) p0 = iclamp(half_floor(i - t.diag), 0, P);
  if (t.kind == Trim::kend) p1 = iclamp(half_floor(i + Mt - 1 + t.diag) + 1, 0, P);
  mk<Mt, NV>(C + i * ldc + n, ldc, A + i * ars + p0 * acs, ars, acs, B + p0 * ldb + n, ldb, p1 - p0, acc);
}
template <int NV>
inline void dp_cols(float* C, int64_t ldc, const uint32_t* A, int64_t ars, int64_t acs, const uint32_t* B, int64_t ldb,
                    int64_t M, int64_t n, int64_t P, bool acc, Trim t) {
  int64_t i = 0;
  for (; i + 8 <= M; i += 8) dp_tile<NV, 8>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t);
  switch (M - i) {
    case 7: dp_tile<NV, 7>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    case 6: dp_tile<NV, 6>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    case 5: dp_tile<NV, 5>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    case 4: dp_tile<NV, 4>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    case 3: dp_tile<NV, 3>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    case 2: dp_tile<NV, 2>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    case 1: dp_tile<NV, 1>(C, ldc, A, ars, acs, B, ldb, i, n, P, acc, t); break;
    default: break;
  }
}

// C (M x N) (+)= A B over P pairs, N % 16 == 0: 8 x 32 micro-tiles (16 accumulators, enough to hide
// VDPBF16PS's latency), a last 16 columns on 8 x 16.
inline void dp_gemm(float* C, int64_t ldc, const uint32_t* A, int64_t ars, int64_t acs, const uint32_t* B, int64_t ldb,
                    int64_t M, int64_t N, int64_t P, bool acc, Trim t = {}) {
  int64_t n = 0;
  for (; n + 32 <= N; n += 32) dp_cols<2>(C, ldc, A, ars, acs, B, ldb, M, n, P, acc, t);
  if (n < N) dp_cols<1>(C, ldc, A, ars, acs, B, ldb, M, n, P, acc, t);
}

}  // namespace

bool attention_forward_dpbf16(float* o, HeadLayout Lo, float* lse, const float* q, HeadLayout Lq, const float* k,
                              HeadLayout Lk, const float* v, HeadLayout Lv, int64_t B, int64_t H, int64_t Hkv,
                              int64_t Tq, int64_t S, int64_t D, bool causal, float scale) {
  if (D % 16 != 0) return false;
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t D2 = D / 2, S2 = (S + 1) / 2, nqt = (Tq + kQ - 1) / kQ, G = H / Hkv, off = S - Tq;
  // Once per call: the keys in bf16 (row j: D2 pairs along D) and the values as key pairs
  // (Vp[j2][d] = (v[2 j2][d], v[2 j2 + 1][d]), zero past S).
  Words Kb(B * Hkv * S * D2), Vp(B * Hkv * S2 * D);
  for_key_pairs(k, Lk, v, Lv, B * Hkv, Hkv, S, [&](int64_t hk, int64_t j, bool two, const float* K0, const float* V0) {
    for (int e = 0; e < 1 + two; ++e) row_pairs(Kb.data() + (hk * S + j + e) * D2, K0 + e * Lk.st, D);
    rows_interleaved(Vp.data() + (hk * S2 + j / 2) * D, V0, two ? V0 + Lv.st : nullptr, D);
  });
  const int64_t per = B * H >= 4 * get_num_threads() && nqt > 0 ? nqt : 1;
  dynamic_tasks(B * H * nqt / per, [&](auto next) {
    Words Qp(D2 * kQ), St(kK * kQ), Pp(kK / 2 * kQ), accv(kQ * D), mv(kQ), lv(kQ), alv(kQ);
    float *acc = accv.f(), *m = mv.f(), *l = lv.f(), *al = alv.f(), *s = St.f();
    const __m512 vninf = _mm512_set1_ps(ninf), vs = _mm512_set1_ps(scale);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t t; (t = next()) >= 0;)
      for (int64_t w = t * per; w < (t + 1) * per; ++w) {
        const int64_t bh = w / nqt, u = w % nqt;
        const int64_t i0 = (nqt - 1 - u) * kQ, nr = imin(kQ, Tq - i0), nc = (nr + 15) / 16 * 16;
        const int64_t hk = (bh / H) * Hkv + (bh % H) / G;
        const float* Q = q + Lq.head(bh, H) + i0 * Lq.st;
        const uint32_t* Kh = Kb.data() + hk * S * D2;
        const uint32_t* Vh = Vp.data() + hk * S2 * D;
        const int64_t kend = causal ? iclamp(i0 + nr + off, 0, S) : S;
        // Qp[p][r] = the bf16 pair (q[r][2p], q[r][2p + 1]), zero for padding rows r >= nr
        tile_pairs(Qp.data(), kQ, Q, Lq.st, nr, nc, D);
        std::fill(m, m + kQ, ninf);
        std::fill(l, l + kQ, 0.f);
        for (int64_t j0 = 0; j0 < kend; j0 += kK) {
          const int64_t nk = imin(kK, kend - j0), nk2 = (nk + 1) / 2;
          const int64_t diag = causal && i0 + off - j0 < kK - 1 ? i0 + off - j0 : kNoDiag;
          const bool masked = causal && i0 + off - j0 < kK - 1;
          // St[c][r] = k_c . q_r (raw dot products), keys x queries
          dp_gemm(s, kQ, Kh + j0 * D2, D2, 1, Qp.data(), kQ, nk, nc, D2, false, {Trim::cols, diag});
          for (int64_t r = 0; r < nc; r += 16) {
            // lanes r..r+15 see key c iff c <= r + lane + diag; rows c >= ce are masked for all
            const __m512 rl = _mm512_add_ps(iota, _mm512_set1_ps(float(r + (masked ? diag : 0))));
            const int64_t ce = masked ? iclamp(r + 16 + diag, 0, nk) : nk;
            __m512 mx = vninf;
            for (int64_t c = 0; c < ce; ++c) {
              __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + c * kQ + r), vs);
              if (masked) x = _mm512_mask_mov_ps(vninf, _mm512_cmp_ps_mask(rl, _mm512_set1_ps(float(c)), _CMP_GE_OQ), x);
              _mm512_storeu_ps(s + c * kQ + r, x);
              mx = _mm512_max_ps(mx, x);
            }
            const __m512 mo = _mm512_loadu_ps(m + r), mnv = _mm512_max_ps(mo, mx);
            const __m512 alpha = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mo, vninf, _CMP_NEQ_OQ),
                                                     fast_exp16(_mm512_sub_ps(mo, mnv)));
            // while every score seen is -inf, subtract 0 (p = 0, not exp(-inf + inf) = NaN)
            const __m512 msub = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mnv, vninf, _CMP_NEQ_OQ), mnv);
            __m512 sum = _mm512_setzero_ps();
            for (int64_t c = 0; c < 2 * nk2; c += 2) {
              const __m512 p0 = c < ce ? fast_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + c * kQ + r), msub))
                                       : _mm512_setzero_ps();
              const __m512 p1 = c + 1 < ce ? fast_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + (c + 1) * kQ + r), msub))
                                           : _mm512_setzero_ps();
              sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
              _mm512_storeu_si512(Pp.data() + (c / 2) * kQ + r, interleave(p0, p1));  // P V's operand, in bf16
            }
            _mm512_storeu_ps(l + r, _mm512_fmadd_ps(_mm512_loadu_ps(l + r), alpha, sum));
            _mm512_storeu_ps(m + r, mnv);
            _mm512_storeu_ps(al + r, alpha);
          }
          for (int64_t r = 0; r < nr && j0 > 0; ++r) {  // acc *= alpha (the first tile overwrites acc)
            if (al[r] == 1.f) continue;
            const __m512 va = _mm512_set1_ps(al[r]);
            float* ar = acc + r * D;
            for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(ar + d, _mm512_mul_ps(_mm512_loadu_ps(ar + d), va));
          }
          // acc += P V over the tile's key pairs
          dp_gemm(acc, D, Pp.data(), 1, kQ, Vh + (j0 / 2) * D, D, nr, D, nk2, j0 > 0, {Trim::kend, diag});
        }
        for (int64_t r = 0; r < nr; ++r) {
          float* orow = o + Lo.head(bh, H) + (i0 + r) * Lo.st;
          const float* ar = acc + r * D;
          if (m[r] == ninf && l[r] == 0.f) {  // no visible key
            std::fill(orow, orow + D, 0.f);
            lse[bh * Tq + i0 + r] = ninf;
          } else {
            const __m512 inv = _mm512_set1_ps(1.f / l[r]);
            for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(orow + d, _mm512_mul_ps(_mm512_loadu_ps(ar + d), inv));
            lse[bh * Tq + i0 + r] = m[r] + std::log(l[r]);
          }
        }
      }
  });
  return true;
}


namespace {

// (b, kv head) groups from which the backward runs one task per group (dK, dV and dQ together); below,
// one task per key tile for dK, dV and one per query tile for dQ (S and dP computed twice).
constexpr int64_t kManyHeads = 16;

// x rounded to bf16 (VCVTNEPS2BF16), as float32.
inline __m512 round16(__m512 x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)), 16));
}

// Per-task scratch of the backward: one (key tile, query tile) pair, keys x queries.
struct BwdScratch {
  Words St{kK * kQ}, dPt{kK * kQ};           // S^T, dP^T (float32 sums)
  Words Pr{kK * kQ / 2}, dSr{kK * kQ / 2};   // P^T, scale dS^T: [key][query pair]
  Words dSc{kK / 2 * kQ};                    // scale dS^T: [key pair][query]
  Words Lt{kQ}, Dt{kQ};                      // lse and Di of the tile's queries, padded
};

// P and dS of query rows [i0, i0 + nr) of one head against keys [j0, j0 + nk) of its kv head. The
// products St = K Q^T and dPt = V dO^T (keys x queries) on VDPBF16PS from the bf16 operands (Kd, Vd:
// the tile's key / value rows, pairs along D; Qt, dOt: the query tile, [d pair][query]); then in float32
// P = exp(scale S - lse), dS = scale P (dP - Di), zero where masked, for padding queries and for rows
// that see no key (lse = -inf); both rounded to bf16 into the operands of the products that follow:
//   kv: w.Pr, w.dSr [key][query pair]  (A of dV += P^T dO, dK += dS^T Q)
//   q:  w.dSc [key pair][query]        (A of dQ += dS K)
// Query r sees key c iff c <= r + diag (kNoDiag: every key).
void bwd_tile(BwdScratch& w, const uint32_t* Kd, const uint32_t* Vd, const uint32_t* Qt, const uint32_t* dOt,
              const float* L, const float* Di, int64_t nr, int64_t nk, int64_t D2, int64_t diag, float scale, bool kv,
              bool q) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t nc = (nr + 31) / 32 * 32;  // whole 32-query rows of pairs
  float *St = w.St.f(), *dPt = w.dPt.f(), *Lt = w.Lt.f(), *Dt = w.Dt.f();
  dp_gemm(St, kQ, Kd, D2, 1, Qt, kQ, nk, nc, D2, false, {Trim::cols, diag});  // (masked micro-tiles unwritten)
  dp_gemm(dPt, kQ, Vd, D2, 1, dOt, kQ, nk, nc, D2, false, {Trim::cols, diag});
  for (int64_t r = 0; r < nc; ++r) {
    Lt[r] = r < nr ? L[r] : ninf;
    Dt[r] = r < nr ? Di[r] : 0.f;
  }
  const bool masked = diag != kNoDiag;
  const __m512 vs = _mm512_set1_ps(scale), vninf = _mm512_set1_ps(ninf);
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t c = 0; c < nk; c += 2)
    for (int64_t r = 0; r < nc; r += 32) {
      __m512 p[2][2], ds[2][2];  // [key c, c + 1][queries r.., r + 16..]
      for (int h = 0; h < 2; ++h) {
        const int64_t rh = r + 16 * h;
        const __m512 vL = _mm512_load_ps(Lt + rh), vD = _mm512_load_ps(Dt + rh);
        const __mmask16 live = _mm512_cmp_ps_mask(vL, vninf, _CMP_NEQ_OQ);
        const __m512 rl = _mm512_add_ps(iota, _mm512_set1_ps(float(rh + (masked ? diag : 0))));
        for (int e = 0; e < 2; ++e) {
          const int64_t ce = c + e;
          if (ce >= nk) {
            p[e][h] = ds[e][h] = _mm512_setzero_ps();
            continue;
          }
          __mmask16 m = live;
          if (masked) m &= _mm512_cmp_ps_mask(rl, _mm512_set1_ps(float(ce)), _CMP_GE_OQ);
          p[e][h] = _mm512_maskz_mov_ps(m, fast_exp16(_mm512_fmsub_ps(_mm512_load_ps(St + ce * kQ + rh), vs, vL)));
          const __m512 dp = _mm512_sub_ps(_mm512_load_ps(dPt + ce * kQ + rh), vD);
          ds[e][h] = _mm512_maskz_mov_ps(m, _mm512_mul_ps(_mm512_mul_ps(vs, p[e][h]), dp));
        }
        if (q) _mm512_store_si512(w.dSc.data() + (c / 2) * kQ + rh, interleave(ds[0][h], ds[1][h]));
      }
      if (kv)
        for (int e = 0; e < 2 && c + e < nk; ++e) {
          const int64_t at = (c + e) * (kQ / 2) + r / 2;
          _mm512_store_si512(w.Pr.data() + at, (__m512i)_mm512_cvtne2ps_pbh(p[e][1], p[e][0]));
          _mm512_store_si512(w.dSr.data() + at, (__m512i)_mm512_cvtne2ps_pbh(ds[e][1], ds[e][0]));
        }
    }
}

// Rows [0, n) of base (row stride ld) set to zero.
inline void zero_rows(float* base, int64_t ld, int64_t n, int64_t D) {
  for (int64_t t = 0; t < n; ++t) std::memset(base + t * ld, 0, static_cast<size_t>(D) * sizeof(float));
}

}  // namespace

bool attention_backward_dpbf16(float* dq, HeadLayout Ldq, float* dk, HeadLayout Ldk, float* dv, HeadLayout Ldv,
                               const float* do_, HeadLayout Ldo, const float* q, HeadLayout Lq, const float* k,
                               HeadLayout Lk, const float* v, HeadLayout Lv, const float* o, HeadLayout Lo,
                               const float* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                               bool causal, float scale) {
  if (D % 16 != 0) return false;
  const int64_t D2 = D / 2, S2 = (S + 1) / 2, T2 = (Tq + 1) / 2, G = H / Hkv, off = S - Tq;
  const int64_t nqt = (Tq + kQ - 1) / kQ, nkt = (S + kK - 1) / kK;
  // Once per call, the operands in bf16: key and value rows with pairs along D (A of St, dPt), keys as
  // key pairs (B of dQ), query and dO tiles as [d pair][query] (B of St, dPt), queries and dO as query
  // pairs (B of dK, dV); every pair past the end (odd S or T) is zero. Di = rowsum(bf16(dO) * O).
  Words Kd(B * Hkv * S * D2), Vd(B * Hkv * S * D2), Kp(B * Hkv * S2 * D);
  Words Qt(B * H * nqt * D2 * kQ), dOt(B * H * nqt * D2 * kQ), Qp(B * H * T2 * D), dOp(B * H * T2 * D), Dv(B * H * Tq);
  float* Di = Dv.f();
  for_key_pairs(k, Lk, v, Lv, B * Hkv, Hkv, S, [&](int64_t hk, int64_t j, bool two, const float* K0, const float* V0) {
    for (int e = 0; e < 1 + two; ++e) {
      row_pairs(Kd.data() + (hk * S + j + e) * D2, K0 + e * Lk.st, D);
      row_pairs(Vd.data() + (hk * S + j + e) * D2, V0 + e * Lv.st, D);
    }
    rows_interleaved(Kp.data() + (hk * S2 + j / 2) * D, K0, two ? K0 + Lk.st : nullptr, D);
  });
  parallel_for(B * H * nqt, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t bh = t / nqt, i0 = (t % nqt) * kQ, nr = imin(kQ, Tq - i0);
      const float* Q = q + Lq.head(bh, H) + i0 * Lq.st;
      const float* dO = do_ + Ldo.head(bh, H) + i0 * Ldo.st;
      const float* O = o + Lo.head(bh, H) + i0 * Lo.st;
      tile_pairs(Qt.data() + t * D2 * kQ, kQ, Q, Lq.st, nr, kQ, D);
      tile_pairs(dOt.data() + t * D2 * kQ, kQ, dO, Ldo.st, nr, kQ, D);
      for (int64_t r = 0; r < nr; r += 2) {
        const bool two = r + 1 < nr;
        rows_interleaved(Qp.data() + (bh * T2 + (i0 + r) / 2) * D, Q + r * Lq.st, two ? Q + (r + 1) * Lq.st : nullptr, D);
        rows_interleaved(dOp.data() + (bh * T2 + (i0 + r) / 2) * D, dO + r * Ldo.st,
                         two ? dO + (r + 1) * Ldo.st : nullptr, D);
      }
      for (int64_t r = 0; r < nr; ++r) {
        __m512 a = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16)
          a = _mm512_fmadd_ps(round16(_mm512_loadu_ps(dO + r * Ldo.st + d)), _mm512_loadu_ps(O + r * Lo.st + d), a);
        Di[bh * Tq + i0 + r] = reduce_add(Vf{a});
      }
    }
  });

  // first query tile that sees key tile j0 (causal: query i sees key j iff j <= i + off)
  auto first_qtile = [&](int64_t j0) { return causal ? iclamp(j0 - off, 0, Tq) / kQ * kQ : 0; };
  // tile (i0, j0) on the causal diagonal: query row r sees key column c iff c <= r + diag
  auto diagonal = [&](int64_t i0, int64_t j0) { return causal && i0 + off - j0 < kK - 1 ? i0 + off - j0 : kNoDiag; };
  auto tile = [&](BwdScratch& w, int64_t bh, int64_t i0, int64_t j0, bool kv, bool qq) {
    const int64_t hk = (bh / H) * Hkv + (bh % H) / G, diag = diagonal(i0, j0);
    const int64_t at = (bh * nqt + i0 / kQ) * D2 * kQ;
    bwd_tile(w, Kd.data() + (hk * S + j0) * D2, Vd.data() + (hk * S + j0) * D2, Qt.data() + at, dOt.data() + at,
             lse + bh * Tq + i0, Di + bh * Tq + i0, imin(kQ, Tq - i0), imin(kK, S - j0), D2, diag, scale, kv, qq);
  };
  // dV (+)= P^T dO and dK (+)= dS^T Q for the tile's keys (summed over query pairs): the first product
  // into a key tile overwrites it
  auto kv_products = [&](BwdScratch& w, int64_t bh, int64_t i0, int64_t j0) {
    const bool acc = bh != (bh / H) * H + (bh % H) / G * G || i0 != first_qtile(j0);
    const int64_t hk = (bh / H) * Hkv + (bh % H) / G, nk = imin(kK, S - j0), nr2 = (imin(kQ, Tq - i0) + 1) / 2;
    const int64_t at = (bh * T2 + i0 / 2) * D;
    dp_gemm(dv + Ldv.head(hk, Hkv) + j0 * Ldv.st, Ldv.st, w.Pr.data(), kQ / 2, 1, dOp.data() + at, D, nk, D, nr2, acc,
            {Trim::kbegin, diagonal(i0, j0)});
    dp_gemm(dk + Ldk.head(hk, Hkv) + j0 * Ldk.st, Ldk.st, w.dSr.data(), kQ / 2, 1, Qp.data() + at, D, nk, D, nr2, acc,
            {Trim::kbegin, diagonal(i0, j0)});
  };
  // dQ (+)= dS K for the tile's queries (summed over key pairs): key tile 0 overwrites
  auto q_product = [&](BwdScratch& w, int64_t bh, int64_t i0, int64_t j0) {
    const int64_t hk = (bh / H) * Hkv + (bh % H) / G, nk2 = (imin(kK, S - j0) + 1) / 2;
    dp_gemm(dq + Ldq.head(bh, H) + i0 * Ldq.st, Ldq.st, w.dSc.data(), 1, kQ, Kp.data() + (hk * S2 + j0 / 2) * D, D,
            imin(kQ, Tq - i0), D, nk2, j0 != 0, {Trim::kend, diagonal(i0, j0)});
  };

  // Every output row is summed by one task in a fixed order (key tiles ascending for dQ; query heads
  // of the group, then query tiles ascending, for dK and dV), the same order in both schedules, so the
  // bits do not depend on the schedule or on the thread count. Rows that get no product are zeroed:
  // dQ rows of query tiles that see no key (T > S, or S = 0), dK, dV when there are no queries.
  if (B * Hkv >= kManyHeads) {
    dynamic_tasks(B * Hkv, [&](auto next) {
      BwdScratch w;
      for (int64_t hk; (hk = next()) >= 0;) {
        const int64_t bh0 = (hk / Hkv) * H + (hk % Hkv) * G;  // first query head of the group
        for (int64_t bh = bh0; bh < bh0 + G; ++bh) zero_rows(dq + Ldq.head(bh, H), Ldq.st, S ? first_qtile(0) : Tq, D);
        if (Tq == 0) {
          zero_rows(dk + Ldk.head(hk, Hkv), Ldk.st, S, D);
          zero_rows(dv + Ldv.head(hk, Hkv), Ldv.st, S, D);
        }
        for (int64_t j0 = 0; j0 < S; j0 += kK)
          for (int64_t bh = bh0; bh < bh0 + G; ++bh)
            for (int64_t i0 = first_qtile(j0); i0 < Tq; i0 += kQ) {
              tile(w, bh, i0, j0, true, true);
              kv_products(w, bh, i0, j0);
              q_product(w, bh, i0, j0);
            }
      }
    });
    return true;
  }
  dynamic_tasks(B * Hkv * nkt, [&](auto next) {  // dK, dV: one task per (b, kv head, key tile)
    BwdScratch w;
    for (int64_t t; (t = next()) >= 0;) {
      const int64_t hk = t / nkt, j0 = (t % nkt) * kK, bh0 = (hk / Hkv) * H + (hk % Hkv) * G;
      if (Tq == 0) {
        zero_rows(dk + Ldk.head(hk, Hkv) + j0 * Ldk.st, Ldk.st, imin(kK, S - j0), D);
        zero_rows(dv + Ldv.head(hk, Hkv) + j0 * Ldv.st, Ldv.st, imin(kK, S - j0), D);
      }
      for (int64_t bh = bh0; bh < bh0 + G; ++bh)
        for (int64_t i0 = first_qtile(j0); i0 < Tq; i0 += kQ) {
          tile(w, bh, i0, j0, true, false);
          kv_products(w, bh, i0, j0);
        }
    }
  });
  dynamic_tasks(B * H * nqt, [&](auto next) {  // dQ: one task per (b, h, query tile), the costly ones first
    BwdScratch w;
    for (int64_t t; (t = next()) >= 0;) {
      const int64_t bh = t / nqt, i0 = (nqt - 1 - t % nqt) * kQ, nr = imin(kQ, Tq - i0);
      const int64_t kend = causal ? iclamp(i0 + nr + off, 0, S) : S;
      if (kend == 0) zero_rows(dq + Ldq.head(bh, H) + i0 * Ldq.st, Ldq.st, nr, D);
      for (int64_t j0 = 0; j0 < kend; j0 += kK) {
        tile(w, bh, i0, j0, false, true);
        q_product(w, bh, i0, j0);
      }
    }
  });
  return true;
}

}  // namespace fg::avx512_bf16
