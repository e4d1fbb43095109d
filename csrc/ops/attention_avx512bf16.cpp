// Attention forward in mixed precision on AVX512_BF16 (VDPBF16PS): the two products S = Q K^T and
// O = P V take bf16 operands in K pairs and sum in float32, 32 products per instruction (the
// float32 kernels of attention_body.h do 16). Compiled with the AVX-512 flags plus -mavx512bf16;
// attention.cpp calls it only where the CPU has AVX512_BF16, on the avx512 path, with bf16 = true
// and D % 16 == 0. The backward runs the rounded float32 tile kernels (attention_body.h).
//
// Same schedule and online softmax as fast_forward in attention_body.h (one task per (b, h) query
// tile of 64 rows, 64-key tiles, scores transposed so the softmax runs 16 queries per vector). What
// differs is the operands' layout, because VDPBF16PS multiplies a *pair* of bf16 along K into each
// float32 lane:
//   S^T = K Q^T  A = the key rows in bf16 (pairs along D, as stored), B = the query tile as
//                Qp[d pair][query]: one 32-bit pair per lane;
//   O += P V     A = Pp[key pair][query] (P rounded to bf16, written by the softmax pass), B = V as
//                Vp[key pair][d]: two rows of V interleaved, packed once per call (S padded to even).
// Masked keys get P = 0; a masked key that shares a pair with a visible one multiplies its v by
// that 0, so a NaN or inf in such a v reaches the row (the float32 kernels skip masked keys).
// Conversions use VCVTNE2PS2BF16 (round to nearest even; denormals read as zero).
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

// e^x for 16 floats: exp_softmax of csrc/simd/vec_math.h (attention_body.h's exp, on 16 lanes).
inline __m512 fast_exp16(__m512 x) { return exp_softmax(Vf{x}).v; }

// C (M x 16, ldc) (+)= sum_p A[i * ars + p * acs] (a bf16 pair) . B[p * ldb + 0..15] (16 pairs),
// P pair steps, one VDPBF16PS per row and step.
template <int M>
__attribute__((always_inline)) inline void mk(float* __restrict C, int64_t ldc, const uint32_t* __restrict A,
                                              int64_t ars, int64_t acs, const uint32_t* __restrict B, int64_t ldb,
                                              int64_t P, bool acc) {
  __m512 c[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) c[i] = acc ? _mm512_loadu_ps(C + i * ldc) : _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    const __m512bh b = (__m512bh)_mm512_loadu_si512(B + p * ldb);
    const uint32_t* a = A + p * acs;
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i)
      c[i] = _mm512_dpbf16_ps(c[i], (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * ars])), b);
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) _mm512_storeu_ps(C + i * ldc, c[i]);
}

// C (M x N) (+)= A B over P pairs, N % 16 == 0, on 8 x 16 micro-tiles.
inline void dp_gemm(float* C, int64_t ldc, const uint32_t* A, int64_t ars, int64_t acs, const uint32_t* B, int64_t ldb,
                 int64_t M, int64_t N, int64_t P, bool acc) {
  for (int64_t n = 0; n < N; n += 16) {
    int64_t i = 0;
    for (; i + 8 <= M; i += 8) mk<8>(C + i * ldc + n, ldc, A + i * ars, ars, acs, B + n, ldb, P, acc);
    float* c = C + i * ldc + n;
    const uint32_t* a = A + i * ars;
    switch (M - i) {
      case 7: mk<7>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      case 6: mk<6>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      case 5: mk<5>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      case 4: mk<4>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      case 3: mk<3>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      case 2: mk<2>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      case 1: mk<1>(c, ldc, a, ars, acs, B + n, ldb, P, acc); break;
      default: break;
    }
  }
}

// Runs body(next) on up to get_num_threads() threads; next() hands out 0..n-1, then -1.
template <typename F>
void dynamic_tasks(int64_t n, F&& body) {
  if (n <= 0) return;
  std::atomic<int64_t> ctr{0};
  auto next = [&]() -> int64_t {
    const int64_t t = ctr.fetch_add(1, std::memory_order_relaxed);
    return t < n ? t : -1;
  };
  parallel_region(static_cast<int>(imin(get_num_threads(), n)), [&](int, int) { body(next); });
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
  parallel_for(B * Hkv * S2, 16, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t hk = t / S2, j = 2 * (t % S2);
      const float* K0 = k + Lk.head(hk, Hkv) + j * Lk.st;
      const float* V0 = v + Lv.head(hk, Hkv) + j * Lv.st;
      const bool two = j + 1 < S;
      uint32_t* kb = Kb.data() + (hk * S + j) * D2;
      uint32_t* vp = Vp.data() + (hk * S2 + j / 2) * D;
      for (int64_t d = 0; d < D; d += 32) {
        _mm512_mask_storeu_epi32(kb + d / 2, static_cast<__mmask16>(D - d >= 32 ? 0xffff : 0xff), pairs32(K0 + d, D - d));
        if (two)
          _mm512_mask_storeu_epi32(kb + D2 + d / 2, static_cast<__mmask16>(D - d >= 32 ? 0xffff : 0xff),
                                   pairs32(K0 + Lk.st + d, D - d));
      }
      for (int64_t d = 0; d < D; d += 16) {
        const __m512 a = _mm512_loadu_ps(V0 + d), b = two ? _mm512_loadu_ps(V0 + Lv.st + d) : _mm512_setzero_ps();
        _mm512_storeu_si512(vp + d, interleave(a, b));
      }
    }
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
        alignas(64) uint32_t row[16];
        for (int64_t r = 0; r < nc; ++r)
          for (int64_t d = 0; d < D; d += 32) {
            _mm512_store_si512(row, r < nr ? pairs32(Q + r * Lq.st + d, D - d) : _mm512_setzero_si512());
            for (int64_t p = 0; p < 16 && d / 2 + p < D2; ++p) Qp.data()[(d / 2 + p) * kQ + r] = row[p];
          }
        std::fill(m, m + kQ, ninf);
        std::fill(l, l + kQ, 0.f);
        for (int64_t j0 = 0; j0 < kend; j0 += kK) {
          const int64_t nk = imin(kK, kend - j0), nk2 = (nk + 1) / 2;
          const int64_t diag = causal && i0 + off - j0 < kK - 1 ? i0 + off - j0 : int64_t(1) << 40;
          const bool masked = causal && i0 + off - j0 < kK - 1;
          // St[c][r] = k_c . q_r (raw dot products), keys x queries
          dp_gemm(s, kQ, Kh + j0 * D2, D2, 1, Qp.data(), kQ, nk, nc, D2, false);
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
          dp_gemm(acc, D, Pp.data(), 1, kQ, Vh + (j0 / 2) * D, D, nr, D, nk2, j0 > 0);
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

}  // namespace fg::avx512_bf16
