// The tiled attention kernels, written once and compiled per path: portable (attention.cpp,
// T = float/double, Exp = std::exp per element) and each vector ISA (attention_body.h, T =
// float, Exp = a vectorized exp; the compiler vectorizes the tile loops over D and over keys).
// The including file defines FG_ISA (portable, avx2, avx512): the kernels land in
// fg::FG_ISA::attn_detail, one copy per set of compiler flags, never shared between them.
#pragma once
#ifndef FG_ISA
#error "define FG_ISA (the ISA namespace) before including attention_impl.h"
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/parallel.h"
#include "ops/matmul_bf16.h"

namespace fg::FG_ISA::attn_detail {

// Integer min / max / clamp for the code of this path: std::min<int64_t> & co. instantiated in
// an ISA's object are weak symbols that the linker merges with other objects' copies, so one copy
// (maybe compiled for AVX-512) would serve every path (issue 22). These live in fg::FG_ISA.
inline int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t lmax(int64_t a, int64_t b) { return a < b ? b : a; }
inline int64_t lclamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (hi < v ? hi : v); }

// n value-initialized Ts of per-task scratch. Not std::vector<T>: its members instantiated here
// would be weak symbols that the linker merges with the instance of an object built with other
// flags, so one copy (maybe the AVX-512 one) would serve every path (issue 22). This type lives
// in fg::FG_ISA, one copy per set of flags (tools/check_isa_symbols.py checks the objects).
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) : p_(new T[n]()), n_(n) {}
  ~Scratch() { delete[] p_; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p_; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }
  T& operator[](int64_t i) { return p_[i]; }

 private:
  T* p_;
  int64_t n_;
};

// x rounded to bfloat16 (nearest even), as a T: the operands of the bf16 products.
template <typename T>
inline T to_bf16(T x) { return T(bf16_to_float(bf16_round(float(x)))); }

// x[j] = to_bf16(x[j]) for j < n when bf16 (mixed precision), else nothing.
template <typename T>
inline void round_if(T* x, int64_t n, bool bf16) {
  if (bf16)
    for (int64_t j = 0; j < n; ++j) x[j] = to_bf16(x[j]);
}

constexpr int64_t kBq = 32;  // query rows per tile
constexpr int64_t kBk = 64;  // keys per tile

// Kt[d * kBk + j] = K[j0 + j, d] for j < n, 0 for n <= j < kBk: transposed, zero-padded key
// tile so dot products run over a fixed kBk keys (held in registers by row_dots).
template <typename T>
__attribute__((always_inline)) inline void transpose_tile(T* __restrict Kt, const T* __restrict K, int64_t n, int64_t D) {
  if (n < kBk) std::fill(Kt, Kt + D * kBk, T(0));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) Kt[d * kBk + j] = K[j * D + d];
}

// s[j] = sum_d x[d] * Kt[d, j] for all j < kBk (a fixed trip count, so the accumulators
// stay in registers); callers use the first n.
template <typename T>
__attribute__((always_inline)) inline void row_dots(T* __restrict s, const T* __restrict x, const T* __restrict Kt, int64_t,
                     int64_t D) {
  T acc[kBk] = {};
  for (int64_t d = 0; d < D; ++d) {
    const T xd = x[d];
    const T* __restrict kr = Kt + d * kBk;
    for (int64_t j = 0; j < kBk; ++j) acc[j] += xd * kr[j];
  }
  for (int64_t j = 0; j < kBk; ++j) s[j] = acc[j];
}

// y[d] += a * x[d]
template <typename T>
__attribute__((always_inline)) inline void axpy(T* __restrict y, T a, const T* __restrict x, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] += a * x[d];
}

// y[d] += sum_{j<n} w[j * ws] * X[j * D + d]: the y chunk stays in registers over j.
template <typename T>
__attribute__((always_inline)) inline void accum_rows(T* __restrict y, const T* __restrict w, int64_t ws,
                                                      const T* __restrict X, int64_t n, int64_t D) {
  constexpr int64_t C = 64;
  int64_t d0 = 0;
  for (; d0 + C <= D; d0 += C) {
    T a[C];
    for (int64_t c = 0; c < C; ++c) a[c] = y[d0 + c];
    for (int64_t j = 0; j < n; ++j) {
      const T wj = w[j * ws];
      const T* __restrict xr = X + j * D + d0;
      for (int64_t c = 0; c < C; ++c) a[c] += wj * xr[c];
    }
    for (int64_t c = 0; c < C; ++c) y[d0 + c] = a[c];
  }
  if (d0 < D)
    for (int64_t j = 0; j < n; ++j) axpy(y + d0, w[j * ws], X + j * D + d0, D - d0);
}

// Number of keys query row i may see (all S, or i + S - T + 1 under the causal mask), in [0, S].
inline int64_t visible(int64_t i, int64_t Tq, int64_t S, bool causal) {
  if (!causal) return S;
  return lclamp(i + S - Tq + 1, 0, S);
}

// DC > 0 fixes the head size at compile time (fast paths), DC == 0 reads it from Drt.
template <int64_t DC, typename T, typename Exp>
void forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t H, int64_t Hkv,
             int64_t Tq, int64_t S, int64_t Drt, bool causal, T scale, Exp exp_rows, bool bf16 = false) {
  const int64_t D = DC > 0 ? DC : Drt;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t nqt = (Tq + kBq - 1) / kBq, G = H / Hkv;
  parallel_for(B * H * nqt, 1, [&](int64_t tb, int64_t te) {
    Scratch<T> Kt(D * kBk), s(kBk), m(kBq), l(kBq), acc(kBq * D);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t bh = t / nqt, i0 = (t % nqt) * kBq, i1 = lmin(Tq, i0 + kBq);
      const int64_t b = bh / H, h = bh % H, hk = b * Hkv + h / G;
      const T* Q = q + (bh * Tq) * D;
      const T* K = k + hk * S * D;
      const T* V = v + hk * S * D;
      const int64_t nr = i1 - i0, kend = visible(i1 - 1, Tq, S, causal);
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), T(0));
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t j0 = 0; j0 < kend; j0 += kBk) {  // causal: tiles past kend are never touched
        const int64_t nk = lmin(kBk, kend - j0);
        transpose_tile(Kt.data(), K + j0 * D, nk, D);
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t nv = lmin(nk, visible(i0 + r, Tq, S, causal) - j0);  // visible keys here
          if (nv <= 0) continue;
          row_dots(s.data(), Q + (i0 + r) * D, Kt.data(), nv, D);
          // NaN-propagating max (std::max(m, NaN) == m would drop a NaN score from the row)
          T mt = ninf;
          for (int64_t j = 0; j < nv; ++j) { s[j] *= scale; mt = (s[j] > mt || s[j] != s[j]) ? s[j] : mt; }
          // online softmax: rescale the running sum and accumulator to the new max
          const T mn = (mt > m[r] || mt != mt) ? mt : m[r];
          const T alpha = m[r] == ninf ? T(0) : std::exp(m[r] - mn);
          for (int64_t j = 0; j < nv; ++j) s[j] -= mn;
          exp_rows(s.data(), nv);
          T ls = 0;
          for (int64_t j = 0; j < nv; ++j) ls += s[j];
          l[r] = l[r] * alpha + ls;
          m[r] = mn;
          T* ar = acc.data() + r * D;
          if (alpha != T(1)) for (int64_t d = 0; d < D; ++d) ar[d] *= alpha;
          round_if(s.data(), nv, bf16);  // P in bf16 for P V; l sums the float32 values
          accum_rows(ar, s.data(), 1, V + j0 * D, nv, D);
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        T* orow = o + (bh * Tq + i0 + r) * D;
        const T* ar = acc.data() + r * D;
        if (m[r] == ninf) {  // no visible key
          for (int64_t d = 0; d < D; ++d) orow[d] = T(0);
          lse[bh * Tq + i0 + r] = ninf;
        } else {
          const T inv = T(1) / l[r];
          for (int64_t d = 0; d < D; ++d) orow[d] = ar[d] * inv;
          // a +inf score: logsumexp is +inf (m + log(l) would be inf + log(NaN))
          lse[bh * Tq + i0 + r] = m[r] == -ninf ? m[r] : m[r] + std::log(l[r]);
        }
      }
    }
  });
}

// p[j] = exp(scale * s[j] - lse) for j < n; s holds raw dot products on entry.
template <typename T, typename Exp>
inline void probs(T* s, int64_t n, T scale, T lse, Exp& exp_rows) {
  for (int64_t j = 0; j < n; ++j) s[j] = s[j] * scale - lse;
  exp_rows(s, n);
}

template <int64_t DC, typename T, typename Exp>
void backward(T* dq, T* dk, T* dv, const T* do_, const T* q, const T* k, const T* v, const T* o,
              const T* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t Drt,
              bool causal, T scale, Exp exp_rows, bool bf16 = false) {
  const int64_t D = DC > 0 ? DC : Drt;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t G = H / Hkv;
  // Di = rowsum(dO * O): (B, H, T) scratch, linear in T
  Scratch<T> Di(B * H * Tq);
  parallel_for(B * H * Tq, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T acc = 0;
      for (int64_t d = 0; d < D; ++d) acc += do_[i * D + d] * o[i * D + d];
      Di[i] = acc;
    }
  });

  // dq_i = scale * sum_j P_ij (dP_ij - D_i) k_j, with dP = dO V^T; one task per query tile
  const int64_t nqt = (Tq + kBq - 1) / kBq;
  parallel_for(B * H * nqt, 1, [&](int64_t tb, int64_t te) {
    Scratch<T> Kt(D * kBk), Vt(D * kBk), p(kBk), dp(kBk);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t bh = t / nqt, i0 = (t % nqt) * kBq, i1 = lmin(Tq, i0 + kBq);
      const int64_t b = bh / H, h = bh % H, hk = b * Hkv + h / G;
      const T* K = k + hk * S * D;
      const T* V = v + hk * S * D;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t d = 0; d < D; ++d) dq[(bh * Tq + i) * D + d] = T(0);
      const int64_t kend = visible(i1 - 1, Tq, S, causal);
      for (int64_t j0 = 0; j0 < kend; j0 += kBk) {
        const int64_t nk = lmin(kBk, kend - j0);
        transpose_tile(Kt.data(), K + j0 * D, nk, D);
        transpose_tile(Vt.data(), V + j0 * D, nk, D);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t row = bh * Tq + i;
          const int64_t nv = lmin(nk, visible(i, Tq, S, causal) - j0);
          if (nv <= 0 || lse[row] == ninf) continue;
          row_dots(p.data(), q + row * D, Kt.data(), nv, D);
          probs(p.data(), nv, scale, lse[row], exp_rows);
          row_dots(dp.data(), do_ + row * D, Vt.data(), nv, D);
          for (int64_t j = 0; j < nv; ++j) p[j] = scale * p[j] * (dp[j] - Di[row]);  // scale * dS
          round_if(p.data(), nv, bf16);
          accum_rows(dq + row * D, p.data(), 1, K + j0 * D, nv, D);
        }
      }
    }
  });

  // dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i dS_ij q_i, summed over the query heads of
  // the group in a fixed order; one task per (b, kv head, key tile) => deterministic.
  const int64_t nkt = (S + kBk - 1) / kBk;
  parallel_for(B * Hkv * nkt, 1, [&](int64_t tb, int64_t te) {
    Scratch<T> Kt(D * kBk), Vt(D * kBk), p(kBk), dp(kBk), Pt(kBk * kBq), St(kBk * kBq);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t hk = t / nkt, j0 = (t % nkt) * kBk, nk = lmin(kBk, S - j0);
      const int64_t b = hk / Hkv, g = hk % Hkv;
      T* dK = dk + (hk * S + j0) * D;
      T* dV = dv + (hk * S + j0) * D;
      std::fill(dK, dK + nk * D, T(0));
      std::fill(dV, dV + nk * D, T(0));
      transpose_tile(Kt.data(), k + (hk * S + j0) * D, nk, D);
      transpose_tile(Vt.data(), v + (hk * S + j0) * D, nk, D);
      // first query that sees key j0: i + S - T >= j0
      const int64_t ib = causal ? lmax(0, j0 - (S - Tq)) : 0;
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        const int64_t bh = b * H + h;
        // blocks of kBq query rows: Pt[j, r] = P, St[j, r] = scale * dS (0 where masked), then
        // dV_j += sum_r Pt[j, r] dO_r and dK_j += sum_r St[j, r] q_r with dV_j, dK_j in registers
        for (int64_t i0 = ib; i0 < Tq; i0 += kBq) {
          const int64_t nr = lmin(kBq, Tq - i0);
          std::fill(Pt.begin(), Pt.end(), T(0));
          std::fill(St.begin(), St.end(), T(0));
          for (int64_t r = 0; r < nr; ++r) {
            const int64_t row = bh * Tq + i0 + r;
            const int64_t nv = lmin(nk, visible(i0 + r, Tq, S, causal) - j0);
            if (nv <= 0 || lse[row] == ninf) continue;
            row_dots(p.data(), q + row * D, Kt.data(), nv, D);
            probs(p.data(), nv, scale, lse[row], exp_rows);
            row_dots(dp.data(), do_ + row * D, Vt.data(), nv, D);
            for (int64_t j = 0; j < nv; ++j) {
              const T dsj = scale * p[j] * (dp[j] - Di[row]);
              Pt[j * kBq + r] = bf16 ? to_bf16(p[j]) : p[j];
              St[j * kBq + r] = bf16 ? to_bf16(dsj) : dsj;
            }
          }
          const int64_t rb = bh * Tq + i0;
          for (int64_t j = 0; j < nk; ++j) {
            // only the rows that see key j0 + j: a masked row adds 0 * dO, which is NaN when
            // that row's dO holds NaN/Inf (and would poison keys the row cannot see)
            const int64_t r0 = causal ? lclamp(j0 + j - (S - Tq) - i0, 0, nr) : 0;
            accum_rows(dV + j * D, Pt.data() + j * kBq + r0, 1, do_ + (rb + r0) * D, nr - r0, D);
            accum_rows(dK + j * D, St.data() + j * kBq + r0, 1, q + (rb + r0) * D, nr - r0, D);
          }
        }
      }
    }
  });
}

}  // namespace fg::FG_ISA::attn_detail
