// AVX2/FMA attention (float32): the tiled kernels of attention_impl.h compiled with
// -mavx2 -mfma (the tile loops over D and over keys vectorize to 8-wide FMAs) and a
// vectorized exp. Called only when the CPU has AVX2+FMA (see attention.cpp).
// -std=c++17 turns GCC's floating-point contraction off; the tile loops need a*b+c fused
// into FMAs, so turn it back on for this file (before any inline code is seen).
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"

#include "ops/attention.h"
#include "ops/attention_impl.h"

namespace fg::avx2 {

namespace {

// exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r (rel. err
// ~2e-7), 2^n through the exponent bits. x < -87.3 gives 0 (this includes -inf).
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

struct Exp8 {
  void operator()(float* x, int64_t n) const {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, exp8(_mm256_loadu_ps(x + j)));
    if (j < n) {
      alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t t = j; t < n; ++t) buf[t - j] = x[t];
      _mm256_store_ps(buf, exp8(_mm256_load_ps(buf)));
      for (int64_t t = j; t < n; ++t) x[t] = buf[t - j];
    }
  }
};

}  // namespace

// ---- hand-written AVX2/FMA tile kernels for D in {32, 64, 128} --------------------------
// Every matrix product of forward and backward goes through one register-blocked micro-kernel
// (6 rows x 16 columns, 12 ymm accumulators, K-loop of broadcast-A x two B vectors):
//   C[i, n] (+)= sum_k A[i * ars + k * acs] * B[k * ldb + n]
// Keys are pre-transposed per 64-key tile so that S = Q K^T reads B rows contiguously.
namespace {

constexpr int64_t kQ = 64;  // query rows per tile
constexpr int64_t kK = 64;  // keys per tile

template <int M>
__attribute__((always_inline)) inline void mk16(float* __restrict C, int64_t ldc, const float* __restrict A,
                                                int64_t ars, int64_t acs, const float* __restrict B,
                                                int64_t ldb, int64_t K, bool acc) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    c0[i] = acc ? _mm256_loadu_ps(C + i * ldc) : _mm256_setzero_ps();
    c1[i] = acc ? _mm256_loadu_ps(C + i * ldc + 8) : _mm256_setzero_ps();
  }
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
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_ps(C + i * ldc, c0[i]);
    _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
  }
}

// C (M x N, ldc) (+)= A (M x K, strides ars/acs) * B (K x N, ldb); N % 16 == 0.
inline void gemm(float* C, int64_t ldc, const float* A, int64_t ars, int64_t acs, const float* B,
                 int64_t ldb, int64_t M, int64_t N, int64_t K, bool acc) {
  for (int64_t n = 0; n < N; n += 16) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) mk16<6>(C + i * ldc + n, ldc, A + i * ars, ars, acs, B + n, ldb, K, acc);
    float* c = C + i * ldc + n;
    const float* a = A + i * ars;
    switch (M - i) {
      case 5: mk16<5>(c, ldc, a, ars, acs, B + n, ldb, K, acc); break;
      case 4: mk16<4>(c, ldc, a, ars, acs, B + n, ldb, K, acc); break;
      case 3: mk16<3>(c, ldc, a, ars, acs, B + n, ldb, K, acc); break;
      case 2: mk16<2>(c, ldc, a, ars, acs, B + n, ldb, K, acc); break;
      case 1: mk16<1>(c, ldc, a, ars, acs, B + n, ldb, K, acc); break;
      default: break;
    }
  }
}

inline float hmax8(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline float hsum8(__m256 x) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Kt[d * kK + j] = K[j, d] for j < n, zero-padded to kK keys.
template <int D>
inline void transpose_keys(float* __restrict Kt, const float* __restrict K, int64_t n) {
  if (n < kK) std::fill(Kt, Kt + D * kK, 0.f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) Kt[d * kK + j] = K[j * D + d];
}

inline int64_t nvis(int64_t i, int64_t off, int64_t j0, int64_t nk, bool causal) {
  if (!causal) return nk;
  return std::clamp<int64_t>(i + off + 1 - j0, 0, nk);
}

inline __m256 iota8() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }

template <int D>
void fast_forward(float* o, float* lse, const float* q, const float* k, const float* v, int64_t B,
                  int64_t H, int64_t Hkv, int64_t Tq, int64_t S, bool causal, float scale) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t nkt = (S + kK - 1) / kK, nqt = (Tq + kQ - 1) / kQ, G = H / Hkv, off = S - Tq;
  // all key tiles pre-transposed once (scratch linear in S)
  std::vector<float> Kt(B * Hkv * nkt * D * kK);
  parallel_for(B * Hkv * nkt, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t hk = t / nkt, j0 = (t % nkt) * kK;
      transpose_keys<D>(Kt.data() + t * D * kK, k + (hk * S + j0) * D, std::min(kK, S - j0));
    }
  });
  parallel_for(B * H * nqt, 1, [&](int64_t tb, int64_t te) {
    std::vector<float> Sbv(kQ * kK), accv(kQ * D), mv(kQ), lv(kQ);  // heap: thread stacks may be small
    float *Sb = Sbv.data(), *acc = accv.data(), *m = mv.data(), *l = lv.data();
    for (int64_t t = tb; t < te; ++t) {
      const int64_t bh = t / nqt, i0 = (t % nqt) * kQ, nr = std::min(kQ, Tq - i0);
      const int64_t hk = (bh / H) * Hkv + (bh % H) / G;
      const float* Q = q + (bh * Tq + i0) * D;
      const int64_t kend = causal ? std::clamp<int64_t>(i0 + nr + off, 0, S) : S;
      std::fill(m, m + kQ, ninf);
      std::fill(l, l + kQ, 0.f);
      std::fill(acc, acc + nr * D, 0.f);
      for (int64_t j0 = 0; j0 < kend; j0 += kK) {
        const int64_t nk = std::min(kK, kend - j0);
        gemm(Sb, kK, Q, D, 1, Kt.data() + (hk * nkt + j0 / kK) * D * kK, kK, nr, kK, D, false);
        const __m256 vs = _mm256_set1_ps(scale), vninf = _mm256_set1_ps(ninf);
        for (int64_t r = 0; r < nr; ++r) {
          float* s = Sb + r * kK;
          const int64_t nv = nvis(i0 + r, off, j0, nk, causal);
          if (nv <= 0) {
            std::fill(s, s + kK, 0.f);
            continue;
          }
          const __m256 vnv = _mm256_set1_ps(float(nv));
          __m256 mx = vninf;
          for (int64_t j = 0; j < kK; j += 8) {
            const __m256 ok = _mm256_cmp_ps(_mm256_add_ps(iota8(), _mm256_set1_ps(float(j))), vnv, _CMP_LT_OQ);
            const __m256 x = _mm256_blendv_ps(vninf, _mm256_mul_ps(_mm256_loadu_ps(s + j), vs), ok);
            _mm256_storeu_ps(s + j, x);
            mx = _mm256_max_ps(mx, x);
          }
          const float mn = std::max(m[r], hmax8(mx));
          const float alpha = m[r] == ninf ? 0.f : std::exp(m[r] - mn);
          const __m256 vmn = _mm256_set1_ps(mn);
          __m256 sum = _mm256_setzero_ps();
          for (int64_t j = 0; j < kK; j += 8) {
            const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmn));
            _mm256_storeu_ps(s + j, p);
            sum = _mm256_add_ps(sum, p);
          }
          l[r] = l[r] * alpha + hsum8(sum);
          m[r] = mn;
          if (alpha != 1.f) {
            const __m256 va = _mm256_set1_ps(alpha);
            float* ar = acc + r * D;
            for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(ar + d, _mm256_mul_ps(_mm256_loadu_ps(ar + d), va));
          }
        }
        gemm(acc, D, Sb, kK, 1, v + (hk * S + j0) * D, D, nr, D, nk, true);
      }
      for (int64_t r = 0; r < nr; ++r) {
        float* orow = o + (bh * Tq + i0 + r) * D;
        const float* ar = acc + r * D;
        if (m[r] == ninf) {
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

// One task per query head: loop over key tiles (dK, dV rows of the tile accumulate in place),
// inner loop over the query tiles that see the key tile; dQ accumulates in place too, so every
// output element is summed by one thread in a fixed order (bitwise identical for any thread
// count). With grouped heads (G > 1) each query head writes its own dK/dV partial, reduced
// afterwards over the group in head order.
template <int D>
void fast_backward(float* dq, float* dk, float* dv, const float* do_, const float* q, const float* k,
                   const float* v, const float* o, const float* lse, int64_t B, int64_t H, int64_t Hkv,
                   int64_t Tq, int64_t S, bool causal, float scale) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t G = H / Hkv, off = S - Tq;
  std::vector<float> Di(B * H * Tq);
  parallel_for(B * H * Tq, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(do_ + i * D + d), _mm256_loadu_ps(o + i * D + d), a);
      Di[i] = hsum8(a);
    }
  });
  std::vector<float> part(G > 1 ? 2 * B * H * S * D : 0);
  parallel_for(B * H, 1, [&](int64_t tb, int64_t te) {
    std::vector<float> Ktv(D * kK), Vtv(D * kK), Pv(kQ * kK), dSv(kQ * kK);
    float *Kt = Ktv.data(), *Vt = Vtv.data(), *P = Pv.data(), *dS = dSv.data();
    for (int64_t bh = tb; bh < te; ++bh) {
      const int64_t hk = (bh / H) * Hkv + (bh % H) / G;
      const float* Qh = q + bh * Tq * D;
      const float* dOh = do_ + bh * Tq * D;
      const float* Lh = lse + bh * Tq;
      const float* Dh = Di.data() + bh * Tq;
      float* dQh = dq + bh * Tq * D;
      const float* Kh = k + hk * S * D;
      const float* Vh = v + hk * S * D;
      float* dKh = G > 1 ? part.data() + bh * S * D : dk + hk * S * D;
      float* dVh = G > 1 ? part.data() + (B * H + bh) * S * D : dv + hk * S * D;
      std::fill(dQh, dQh + Tq * D, 0.f);
      std::fill(dKh, dKh + S * D, 0.f);
      std::fill(dVh, dVh + S * D, 0.f);
      const __m256 vs = _mm256_set1_ps(scale);
      for (int64_t j0 = 0; j0 < S; j0 += kK) {
        const int64_t nk = std::min(kK, S - j0);
        transpose_keys<D>(Kt, Kh + j0 * D, nk);
        transpose_keys<D>(Vt, Vh + j0 * D, nk);
        const int64_t ib = causal ? std::max<int64_t>(0, j0 - off) : 0;  // first query seeing j0
        for (int64_t i0 = (ib / kQ) * kQ; i0 < Tq; i0 += kQ) {
          const int64_t nr = std::min(kQ, Tq - i0);
          gemm(P, kK, Qh + i0 * D, D, 1, Kt, kK, nr, kK, D, false);
          gemm(dS, kK, dOh + i0 * D, D, 1, Vt, kK, nr, kK, D, false);
          for (int64_t r = 0; r < nr; ++r) {
            float* p = P + r * kK;
            float* ds = dS + r * kK;
            const int64_t nv = nvis(i0 + r, off, j0, nk, causal);
            const float L = Lh[i0 + r];
            if (nv <= 0 || L == ninf) {
              std::fill(p, p + kK, 0.f);
              std::fill(ds, ds + kK, 0.f);
              continue;
            }
            const __m256 vL = _mm256_set1_ps(L), vD = _mm256_set1_ps(Dh[i0 + r]), vnv = _mm256_set1_ps(float(nv));
            for (int64_t j = 0; j < kK; j += 8) {
              const __m256 ok = _mm256_cmp_ps(_mm256_add_ps(iota8(), _mm256_set1_ps(float(j))), vnv, _CMP_LT_OQ);
              const __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(p + j), vs, vL));
              const __m256 pv = _mm256_and_ps(e, ok);
              _mm256_storeu_ps(p + j, pv);
              _mm256_storeu_ps(ds + j, _mm256_mul_ps(_mm256_mul_ps(vs, pv), _mm256_sub_ps(_mm256_loadu_ps(ds + j), vD)));
            }
          }
          // dV += P^T dO, dK += dS^T Q (scale folded into dS), dQ += dS K
          gemm(dVh + j0 * D, D, P, 1, kK, dOh + i0 * D, D, nk, D, nr, true);
          gemm(dKh + j0 * D, D, dS, 1, kK, Qh + i0 * D, D, nk, D, nr, true);
          gemm(dQh + i0 * D, D, dS, kK, 1, Kh + j0 * D, D, nr, D, nk, true);
        }
      }
    }
  });
  if (G > 1) {
    parallel_for(B * Hkv * S, 64, [&](int64_t rb, int64_t re) {
      for (int64_t row = rb; row < re; ++row) {
        const int64_t hk = row / S, j = row % S, b = hk / Hkv, g = hk % Hkv;
        for (int64_t which = 0; which < 2; ++which) {
          float* out = (which ? dv : dk) + row * D;
          for (int64_t d = 0; d < D; d += 8) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t h = g * G; h < (g + 1) * G; ++h)
              a = _mm256_add_ps(a, _mm256_loadu_ps(part.data() + ((which * B * H) + b * H + h) * S * D + j * D + d));
            _mm256_storeu_ps(out + d, a);
          }
        }
      }
    });
  }
}

}  // namespace

void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                       bool causal, float scale) {
  // fast paths: the head size as a compile-time constant lets the tile loops unroll fully
  switch (D) {
    case 32: return fast_forward<32>(o, lse, q, k, v, B, H, Hkv, Tq, S, causal, scale);
    case 64: return fast_forward<64>(o, lse, q, k, v, B, H, Hkv, Tq, S, causal, scale);
    case 128: return fast_forward<128>(o, lse, q, k, v, B, H, Hkv, Tq, S, causal, scale);
    default: return attn_detail::forward<0>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* do_, const float* q,
                        const float* k, const float* v, const float* o, const float* lse,
                        int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                        bool causal, float scale) {
  switch (D) {
    case 32: return fast_backward<32>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, causal, scale);
    case 64: return fast_backward<64>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, causal, scale);
    case 128: return fast_backward<128>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, causal, scale);
    default: return attn_detail::backward<0>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, Exp8{});
  }
}

}  // namespace fg::avx2
