// AVX2/FMA layernorm kernels (float32). Compiled with -mavx2 -mfma; called only when the CPU
// has them (see layernorm.cpp). Each row is read from memory once per direction: the row
// statistics come from one pass (shifted sums in double lanes), and the second look at the
// row (writing y or dx) hits L1/L2. Outputs too big to stay in cache are written with
// streaming (non-temporal) stores, which skip the read-for-ownership of the destination:
// without them every output byte costs a read and a write of memory.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/parallel.h"
#include "ops/layernorm.h"
#include "ops/vec_avx2.h"

namespace fg::avx2 {

namespace {
// Rows are prefetched ahead only while 4 rows of this many floats fit in half the L2.
constexpr int64_t kPrefetchMaxC = 16384;

// Stores of one output row: plain, or streaming once the destination is 32-byte aligned.
template <bool NT>
inline int64_t aligned_head(const float* dst, int64_t C) {
  if constexpr (!NT) return 0;
  const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) & 31);
  return std::min<int64_t>(C, mis == 0 ? 0 : (32 - mis) / 4 & 7);  // floats before the boundary
}
template <bool NT>
inline void store8(float* p, __m256 v) {
  if constexpr (NT) _mm256_stream_ps(p, v);
  else _mm256_storeu_ps(p, v);
}

inline __m256d lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

// Row statistics in one read. Sums of d = x - K (K = x[0]) in double: var = E[d^2] - E[d]^2.
// The cancellation is bounded for every input: K is an element of the row, so
// (K - mean)^2 <= sum_i (x_i - mean)^2 = C * var, i.e. E[d]^2 <= C * var, and the relative
// error of var is at most about C * 2^-52 (1e-11 for C = 50304), far below float precision.
// A constant row gives d = 0 exactly, so mean = K and var = 0 exactly.
inline void row_stats(const float* xr, int64_t C, double eps, float* m_out, float* rs_out) {
  const double K = xr[0];
  const __m256d vk = _mm256_set1_pd(K);
  __m256d s1[4], s2[4];
  for (int j = 0; j < 4; ++j) s1[j] = s2[j] = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= C; i += 16) {
    const __m256 a = _mm256_loadu_ps(xr + i), b = _mm256_loadu_ps(xr + i + 8);
    const __m256d d0 = _mm256_sub_pd(lo_pd(a), vk), d1 = _mm256_sub_pd(hi_pd(a), vk);
    const __m256d d2 = _mm256_sub_pd(lo_pd(b), vk), d3 = _mm256_sub_pd(hi_pd(b), vk);
    s1[0] = _mm256_add_pd(s1[0], d0); s2[0] = _mm256_fmadd_pd(d0, d0, s2[0]);
    s1[1] = _mm256_add_pd(s1[1], d1); s2[1] = _mm256_fmadd_pd(d1, d1, s2[1]);
    s1[2] = _mm256_add_pd(s1[2], d2); s2[2] = _mm256_fmadd_pd(d2, d2, s2[2]);
    s1[3] = _mm256_add_pd(s1[3], d3); s2[3] = _mm256_fmadd_pd(d3, d3, s2[3]);
  }
  double a1 = hsum_pd(_mm256_add_pd(_mm256_add_pd(s1[0], s1[1]), _mm256_add_pd(s1[2], s1[3])));
  double a2 = hsum_pd(_mm256_add_pd(_mm256_add_pd(s2[0], s2[1]), _mm256_add_pd(s2[2], s2[3])));
  for (; i < C; ++i) {
    const double d = static_cast<double>(xr[i]) - K;
    a1 += d;
    a2 += d * d;
  }
  const double invC = 1.0 / static_cast<double>(C);
  const double md = a1 * invC;
  double var = a2 * invC - md * md;
  if (var < 0.0) var = 0.0;  // (not std::max(0.0, var), which turns a NaN variance into 0)
  *m_out = static_cast<float>(K + md);
  *rs_out = static_cast<float>(1.0 / std::sqrt(var + eps));
}

// y = (x - m) * rs * w + b on one (cached) row
template <bool HW, bool HB, bool NT>
// `next`: the next row of x (or nullptr). While this pass works from cache, the next row is
// prefetched into L2, so memory reads overlap the output writes (the hardware prefetcher
// alone goes quiet when the demand misses stop).
inline void row_out(float* yr, const float* xr, const float* w, const float* b, int64_t C, float m, float rs,
                    const float* next) {
  const __m256 vm = _mm256_set1_ps(m), vr = _mm256_set1_ps(rs);
  const int64_t head = aligned_head<NT>(yr, C);
  for (int64_t i = 0; i < head; ++i) {
    float t = (xr[i] - m) * rs;
    if constexpr (HW && HB) t = std::fma(t, w[i], b[i]);
    else if constexpr (HW) t = t * w[i];
    else if constexpr (HB) t = t + b[i];
    yr[i] = t;
  }
  int64_t i = head;
  for (; i + 8 <= C; i += 8) {
    if (next && ((i & 15) == 0)) _mm_prefetch(reinterpret_cast<const char*>(next + i), _MM_HINT_T1);
    __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), vm), vr);
    if constexpr (HW && HB) t = _mm256_fmadd_ps(t, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i));
    else if constexpr (HW) t = _mm256_mul_ps(t, _mm256_loadu_ps(w + i));
    else if constexpr (HB) t = _mm256_add_ps(t, _mm256_loadu_ps(b + i));
    store8<NT>(yr + i, t);
  }
  for (; i < C; ++i) {
    float t = (xr[i] - m) * rs;
    if constexpr (HW && HB) t = std::fma(t, w[i], b[i]);
    else if constexpr (HW) t = t * w[i];
    else if constexpr (HB) t = t + b[i];
    yr[i] = t;
  }
}

template <bool HW, bool HB, bool NT>
void forward_rows(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                  int64_t r0, int64_t r1, int64_t C, double eps) {
  for (int64_t r = r0; r < r1; ++r) {
    float m, rs;
    row_stats(x + r * C, C, eps, &m, &rs);
    mean[r] = m;
    rstd[r] = rs;
    // (only while 2 rows fit in half the L2; see backward)
    const bool pf = r + 1 < r1 && C <= 2 * kPrefetchMaxC;
    row_out<HW, HB, NT>(y + r * C, x + r * C, w, b, C, m, rs, pf ? x + (r + 1) * C : nullptr);
  }
  if constexpr (NT) _mm_sfence();  // streaming stores visible before the caller reads y
}

template <bool NT>
void forward_dispatch(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                      int64_t r0, int64_t r1, int64_t C, double eps) {
  if (w && b) forward_rows<true, true, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
  else if (w) forward_rows<true, false, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
  else if (b) forward_rows<false, true, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
  else forward_rows<false, false, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
}

// One row of the backward: pass 1 reads dy, x (from memory) for the two row sums and adds
// into the dweight/dbias partials pdw/pdb; pass 2 writes dx from the cached row.
template <bool HW, bool NT>
inline void backward_row(float* dxr, float* pdw, float* pdb, const float* dyr, const float* xr, const float* w,
                         int64_t C, float m, float rs, const float* next_dy, const float* next_x) {
  const __m256 vm = _mm256_set1_ps(m), vr = _mm256_set1_ps(rs);
  __m256d g0 = _mm256_setzero_pd(), g1 = _mm256_setzero_pd(), h0 = _mm256_setzero_pd(), h1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= C; i += 8) {
    const __m256 dyv = _mm256_loadu_ps(dyr + i);
    const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), vm), vr);
    const __m256 g = HW ? _mm256_mul_ps(dyv, _mm256_loadu_ps(w + i)) : dyv;
    const __m256 gx = _mm256_mul_ps(g, xh);
    g0 = _mm256_add_pd(g0, lo_pd(g));
    g1 = _mm256_add_pd(g1, hi_pd(g));
    h0 = _mm256_add_pd(h0, lo_pd(gx));
    h1 = _mm256_add_pd(h1, hi_pd(gx));
    _mm256_storeu_ps(pdw + i, _mm256_fmadd_ps(dyv, xh, _mm256_loadu_ps(pdw + i)));
    _mm256_storeu_ps(pdb + i, _mm256_add_ps(dyv, _mm256_loadu_ps(pdb + i)));
  }
  double sg = hsum_pd(_mm256_add_pd(g0, g1)), sgx = hsum_pd(_mm256_add_pd(h0, h1));
  for (int64_t j = i; j < C; ++j) {
    const float xh = (xr[j] - m) * rs;
    const float g = HW ? dyr[j] * w[j] : dyr[j];
    sg += g;
    sgx += g * xh;
    pdw[j] = std::fma(dyr[j], xh, pdw[j]);
    pdb[j] += dyr[j];
  }
  const float mg = static_cast<float>(sg / static_cast<double>(C));
  const float mgx = static_cast<float>(sgx / static_cast<double>(C));
  // dx = rstd * ((g - mean(g)) - xhat * mean(g * xhat))
  const __m256 vmg = _mm256_set1_ps(mg), vmgx = _mm256_set1_ps(mgx);
  const int64_t head = aligned_head<NT>(dxr, C);
  for (i = 0; i < head; ++i) {
    const float xh = (xr[i] - m) * rs;
    const float g = HW ? dyr[i] * w[i] : dyr[i];
    dxr[i] = rs * std::fma(-xh, mgx, g - mg);
  }
  for (; i + 8 <= C; i += 8) {
    if (next_dy && ((i & 15) == 0)) {
      _mm_prefetch(reinterpret_cast<const char*>(next_dy + i), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(next_x + i), _MM_HINT_T1);
    }
    const __m256 dyv = _mm256_loadu_ps(dyr + i);
    const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), vm), vr);
    const __m256 g = HW ? _mm256_mul_ps(dyv, _mm256_loadu_ps(w + i)) : dyv;
    store8<NT>(dxr + i, _mm256_mul_ps(vr, _mm256_fnmadd_ps(xh, vmgx, _mm256_sub_ps(g, vmg))));
  }
  for (; i < C; ++i) {
    const float xh = (xr[i] - m) * rs;
    const float g = HW ? dyr[i] * w[i] : dyr[i];
    dxr[i] = rs * std::fma(-xh, mgx, g - mg);
  }
}
// Outputs larger than this are written with streaming stores (they would not survive in the
// 32 MiB L3 shared with the inputs anyway).
constexpr int64_t kStreamBytes = int64_t{8} << 20;
// (A float array that is not even 4-byte aligned can never reach the 32-byte alignment.)
inline bool stream_ok(const float* out, int64_t n) {
  return n * static_cast<int64_t>(sizeof(float)) >= kStreamBytes && (reinterpret_cast<uintptr_t>(out) & 3) == 0;
}

// Below this many elements a call runs on the calling thread alone; backward uses at most
// kMaxSlices slices of at least kMinParallel elements.
constexpr int64_t kMinParallel = int64_t{1} << 16;
constexpr int64_t kMaxSlices = 8;

}  // namespace

// Rows are handed out in chunks through an atomic counter, so any number of participating
// threads (and any scheduling) computes the same result.
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t N, int64_t C, double eps, int64_t grain) {
  const bool nt = stream_ok(y, N * C);
  const int64_t chunk = std::max<int64_t>(1, grain), nchunks = (N + chunk - 1) / chunk;
  const int threads = N * C >= kMinParallel ? static_cast<int>(std::min<int64_t>(get_num_threads(), nchunks)) : 1;
  std::atomic<int64_t> next{0};
  parallel_region(threads, [&](int, int) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < nchunks;) {
      const int64_t b = c * chunk, e = std::min(N, b + chunk);
      if (nt) forward_dispatch<true>(y, mean, rstd, x, weight, bias, b, e, C, eps);
      else forward_dispatch<false>(y, mean, rstd, x, weight, bias, b, e, C, eps);
    }
  });
}

// dweight/dbias: the rows are cut into S fixed slices (S depends only on N and C); each slice
// sums its rows in order into its own partial (slice 0 straight into dweight/dbias), and the
// partials are added in slice order. Slices are handed out dynamically, so the result is the
// same for any number of threads and any scheduling.
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        int64_t grain) {
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>({kMaxSlices, N, N * C / kMinParallel}));
  const int64_t per = (N + S - 1) / S;
  const int threads = static_cast<int>(std::min<int64_t>(get_num_threads(), S));
  std::fill(dweight, dweight + C, 0.f);
  std::fill(dbias, dbias + C, 0.f);
  thread_local std::vector<float> part_cache;  // kept between calls: no page faults per call
  const size_t part_n = static_cast<size_t>(S - 1) * 2 * C;
  if (part_cache.size() < part_n) part_cache.resize(part_n);
  float* part = part_cache.data();
  const bool stream = stream_ok(dx, N * C);
  std::atomic<int64_t> next{0};
  parallel_region(threads, [&](int, int) {
    for (int64_t s; (s = next.fetch_add(1, std::memory_order_relaxed)) < S;) {
      float* pdw = s == 0 ? dweight : part + static_cast<size_t>(s - 1) * 2 * C;
      float* pdb = s == 0 ? dbias : pdw + C;
      if (s > 0) std::fill(pdw, pdw + 2 * C, 0.f);
      const int64_t b = std::min(N, s * per), e = std::min(N, b + per);
      for (int64_t r = b; r < e; ++r) {
        float* dxr = dx + r * C;
        const float *dyr = dy + r * C, *xr = x + r * C;
        // prefetch the next rows during pass 2 only while 4 rows fit in half the L2 (past that
        // the prefetches would evict the lines pass 2 is about to read)
        const bool pf = r + 1 < e && C <= kPrefetchMaxC;
        const float* ndy = pf ? dyr + C : nullptr;
        const float* nx = pf ? xr + C : nullptr;
        if (stream) {
          if (weight) backward_row<true, true>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
          else backward_row<false, true>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
        } else {
          if (weight) backward_row<true, false>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
          else backward_row<false, false>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
        }
      }
    }
    if (stream) _mm_sfence();
  });
  for (int64_t s = 1; s < S; ++s) {
    const float* pdw = part + static_cast<size_t>(s - 1) * 2 * C;
    const float* pdb = pdw + C;
    int64_t i = 0;
    for (; i + 8 <= C; i += 8) {
      _mm256_storeu_ps(dweight + i, _mm256_add_ps(_mm256_loadu_ps(dweight + i), _mm256_loadu_ps(pdw + i)));
      _mm256_storeu_ps(dbias + i, _mm256_add_ps(_mm256_loadu_ps(dbias + i), _mm256_loadu_ps(pdb + i)));
    }
    for (; i < C; ++i) { dweight[i] += pdw[i]; dbias[i] += pdb[i]; }
  }
}

}  // namespace fg::avx2
