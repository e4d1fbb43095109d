// AVX2/FMA float32 softmax_xent kernels over a range of rows (declared in softmax_xent.h).
// Compiled with -mavx2 -mfma; called only when the CPU has them. Memory-bound design:
//  - row statistics (max, sum exp) in ONE read of the row from memory: the row is walked in
//    chunks of kChunk floats; a chunk's max is taken as it streams in, then its exps are summed
//    from L1 against the running max (the sum is rescaled when the max grows: online softmax);
//  - the second pass of a row (writing y / dx) reads it back from L1/L2, never from memory.
// Outputs use ordinary stores: non-temporal stores were measured (2-core Zen 3 VM, shapes of
// bench_softmax_xent) to be no faster for fwd+bwd pairs, and slower for cross-entropy.
// Every row is computed by one thread in a fixed order, so results do not depend on the
// number of threads. NaN/inf rows take an exact slow path with the portable semantics.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/softmax_xent.h"
#include "ops/vec_avx2.h"

namespace fg::avx2 {

namespace {
#define FG_INLINE __attribute__((always_inline)) inline
constexpr int64_t kChunk = 512;  // floats (2 KiB, a multiple of 32 bytes): stays in L1 between sweeps
// Software prefetch distance (floats) for rows streamed from memory while exps are computed: the
// hardware prefetcher alone left memory idle during the exp work (no overlap, measured).
constexpr int64_t kAhead = 1024;
FG_INLINE void prefetch(const float* p) { __builtin_prefetch(p, 0, 3); }

FG_INLINE __m256i lanes_below(int64_t k) {  // lanes [0, k) set, 0 <= k <= 8
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// 8 floats at p, or the first k of them and `fill` in the other lanes (never reads past p + k)
FG_INLINE __m256 load(const float* p, int64_t k, __m256 fill) {
  if (k >= 8) return _mm256_loadu_ps(p);
  const __m256i m = lanes_below(k);
  return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
FG_INLINE __m256 load(const float* p, int64_t k) { return load(p, k, _mm256_setzero_ps()); }
FG_INLINE __m256d widen_add(__m256d acc, __m256 v) {  // acc += the 8 lanes of v, in double
  acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// y[i] = f(i, k) for i in [0, n), where f returns the 8 values at [i, i + 8) computed from
// inputs read with load(p + i, k) (k valid lanes).
template <typename F>
FG_INLINE void write_row(float* y, int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(i, int64_t{8}));
  if (i < n) _mm256_maskstore_ps(y + i, lanes_below(n - i), f(i, n - i));
}

// sum of g(i, k) over [0, n) in 8-float groups: float within a chunk (2 chains), double across
template <typename G>
FG_INLINE double chunked_sum(int64_t n, G&& g) {
  __m256d acc = _mm256_setzero_pd();
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t e = std::min(n, c + kChunk);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = c;
    for (; i + 16 <= e; i += 16) {
      s0 = _mm256_add_ps(s0, g(i, int64_t{8}));
      s1 = _mm256_add_ps(s1, g(i + 8, int64_t{8}));
    }
    for (; i < e; i += 8) s0 = _mm256_add_ps(s0, g(i, std::min<int64_t>(8, e - i)));
    acc = widen_add(acc, _mm256_add_ps(s0, s1));
  }
  return hsum_pd(acc);
}

// Exact NaN-propagating max: _mm256_max_ps drops a NaN in its first operand, so NaN lanes are
// tracked apart and a row holding any NaN has max NaN.
float row_max_exact(const float* x, int64_t V) {
  __m256 a = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    a = _mm256_max_ps(a, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan)) return NAN;
  float m = hmax8(a);
  for (; i < V; ++i) m = x[i] > m || x[i] != x[i] ? x[i] : m;
  return m;
}

// Row statistics in one read: m = max(x), s = sum exp(x - m) (double). With E non-null, chunk c
// also leaves e = exp(x - mc[c]) in E and its running max in mc[c] (so y = e * exp(mc - m) / s).
// Returns false when the fast path cannot vouch for the result (a NaN or +-inf max): the caller
// then uses row_stats_exact.
template <bool kStore>
FG_INLINE bool row_stats_fast(const float* x, int64_t V, float* m_out, double* s_out, float* E, float* mc) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  float m = -FLT_MAX, top = -INFINITY;
  __m256d acc = _mm256_setzero_pd();
  for (int64_t c = 0; c < V; c += kChunk) {
    const int64_t n = std::min(kChunk, V - c);
    const float* p = x + c;
    // chunk max, straight from memory (4 chains)
    __m256 a0 = ninf, a1 = ninf, a2 = ninf, a3 = ninf;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      a0 = _mm256_max_ps(a0, _mm256_loadu_ps(p + i));
      a1 = _mm256_max_ps(a1, _mm256_loadu_ps(p + i + 8));
      a2 = _mm256_max_ps(a2, _mm256_loadu_ps(p + i + 16));
      a3 = _mm256_max_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    for (; i < n; i += 8) a0 = _mm256_max_ps(a0, load(p + i, n - i, ninf));
    const float cm = hmax8(_mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)));
    top = cm > top ? cm : top;
    if (cm > m) {  // rescale the sum to the new max (exp(m - cm) <= 1; 0 for the first chunk)
      acc = _mm256_mul_pd(acc, _mm256_set1_pd(_mm256_cvtss_f32(exp8(_mm256_set1_ps(m - cm)))));
      m = cm;
    }
    // chunk sum of exp(x - m), from L1; padding lanes are -inf, so exp gives 0. One chain: its
    // add latency hides under exp8's throughput, and more chains spill exp8's constants.
    const __m256 vm = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps();
    float* e = kStore ? E + c : nullptr;
    for (i = 0; i < n; i += 8) {
      // while the exps run, ask for the data ahead (the max sweep then finds it arriving)
      if ((i & 15) == 0) prefetch(p + kAhead + i);
      const int64_t k = std::min<int64_t>(8, n - i);
      const __m256 e0 = exp8(_mm256_sub_ps(load(p + i, k, ninf), vm));
      if constexpr (kStore) {
        if (k == 8) _mm256_storeu_ps(e + i, e0);
        else _mm256_maskstore_ps(e + i, lanes_below(k), e0);
      }
      s0 = _mm256_add_ps(s0, e0);
    }
    if constexpr (kStore) mc[c / kChunk] = m;
    acc = widen_add(acc, s0);
  }
  const double s = hsum_pd(acc);
  *m_out = m;
  *s_out = s;
  // a NaN in x makes s NaN (exp8 propagates it), and a non-finite max is not handled here
  return std::isfinite(top) && !std::isnan(s);
}

// The exact path for rows the fast one declines: m = NaN-propagating max; s over a second read.
void row_stats_exact(const float* x, int64_t V, float* m_out, double* s_out) {
  const float m = row_max_exact(x, V);
  *m_out = m;
  if (!std::isfinite(m)) { *s_out = 1; return; }
  const __m256 vm = _mm256_set1_ps(m), ninf = _mm256_set1_ps(-INFINITY);
  *s_out = chunked_sum(V, [&](int64_t i, int64_t k) { return exp8(_mm256_sub_ps(load(x + i, k, ninf), vm)); });
}

struct Scratch {  // per-thread buffers for softmax_forward_rows
  std::vector<float> e, mc;
};
Scratch& scratch(int64_t V) {
  thread_local Scratch s;
  if (static_cast<int64_t>(s.e.size()) < V) s.e.resize(static_cast<size_t>(V));
  const auto nc = static_cast<size_t>((V + kChunk - 1) / kChunk);
  if (s.mc.size() < nc) s.mc.resize(nc);
  return s;
}
}  // namespace

void row_lse(const float* x, int64_t V, float* m, float* log_s) {
  double s;
  if (!row_stats_fast<false>(x, V, m, &s, nullptr, nullptr)) row_stats_exact(x, V, m, &s);
  *log_s = std::isfinite(*m) ? static_cast<float>(std::log(s)) : 0.f;
}

void softmax_forward_rows(float* y, const float* x, int64_t r0, int64_t r1, int64_t V) {
  Scratch& S = scratch(V);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * V;
    float* yr = y + r * V;
    float m;
    double s;
    // y = exp(x - mc) * (exp(mc - m) / s), the exps kept from the statistics sweep
    if (row_stats_fast<true>(xr, V, &m, &s, S.e.data(), S.mc.data())) {
      const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / s));
      for (int64_t c = 0; c < V; c += kChunk) {
        const __m256 f = _mm256_mul_ps(exp8(_mm256_set1_ps(S.mc[c / kChunk] - m)), inv);
        const float* e = S.e.data() + c;
        write_row(yr + c, std::min(kChunk, V - c), [&](int64_t i, int64_t k) { return _mm256_mul_ps(f, load(e + i, k)); });
      }
      continue;
    }
    row_stats_exact(xr, V, &m, &s);
    // a NaN or +-inf max makes every exp(x - m) / s NaN (inf - inf, or NaN), as in the portable path
    const __m256 vm = _mm256_set1_ps(m);
    const __m256 inv = _mm256_set1_ps(std::isfinite(m) ? static_cast<float>(1.0 / s) : NAN);
    write_row(yr, V, [&](int64_t i, int64_t k) { return _mm256_mul_ps(inv, exp8(_mm256_sub_ps(load(xr + i, k), vm))); });
  }
}

void softmax_backward_rows(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1, int64_t V) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *dyr = dy + r * V, *yr = y + r * V;
    // dx = y * (dy - sum(dy * y))
    const __m256 s = _mm256_set1_ps(static_cast<float>(
        chunked_sum(V, [&](int64_t i, int64_t k) { return _mm256_mul_ps(load(dyr + i, k), load(yr + i, k)); })));
    write_row(dx + r * V, V, [&](int64_t i, int64_t k) {
      return _mm256_mul_ps(load(yr + i, k), _mm256_sub_ps(load(dyr + i, k), s));
    });
  }
}

void log_softmax_forward_rows(float* y, const float* x, int64_t r0, int64_t r1, int64_t V) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * V;
    float m, ls;
    row_lse(xr, V, &m, &ls);
    // y = (x - m) - log_s: exact-ish even for |m| ~ 1e4
    const __m256 vm = _mm256_set1_ps(m), vl = _mm256_set1_ps(ls);
    write_row(y + r * V, V, [&](int64_t i, int64_t k) { return _mm256_sub_ps(_mm256_sub_ps(load(xr + i, k), vm), vl); });
  }
}

void log_softmax_backward_rows(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1, int64_t V) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *dyr = dy + r * V, *yr = y + r * V;
    // dx = dy - exp(y) * sum(dy)
    const __m256 s = _mm256_set1_ps(static_cast<float>(chunked_sum(V, [&](int64_t i, int64_t k) { return load(dyr + i, k); })));
    write_row(dx + r * V, V, [&](int64_t i, int64_t k) {  // y comes from memory: prefetch it
      if ((i & 15) == 0) prefetch(yr + i + kAhead);
      return _mm256_fnmadd_ps(exp8(load(yr + i, k)), s, load(dyr + i, k));
    });
  }
}

void xent_grad_row(float* d, const float* x, int64_t V, float lse, float scale, int64_t t) {
  // d = scale * (exp(x - lse) - [i == t]); the target lane is fixed in the group that holds it
  const __m256 vl = _mm256_set1_ps(lse), vs = _mm256_set1_ps(scale);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  write_row(d, V, [&](int64_t i, int64_t k) {
    if ((i & 15) == 0) prefetch(x + i + kAhead);
    const __m256 g = _mm256_mul_ps(vs, exp8(_mm256_sub_ps(load(x + i, k), vl)));
    if (static_cast<uint64_t>(t - i) >= 8) return g;
    const __m256i hit = _mm256_cmpeq_epi32(iota, _mm256_set1_epi32(static_cast<int>(t - i)));
    return _mm256_sub_ps(g, _mm256_and_ps(vs, _mm256_castsi256_ps(hit)));
  });
}

}  // namespace fg::avx2
