// Portable softmax / log-softmax / cross-entropy kernels (float32 and float64).
// Rows are split over threads; each row is read from memory once per pass and revisited in cache.
// float32 on SIMD paths goes to the row kernels of softmax_xent_body.h (per ISA); the loops here are the
// plain reference versions (float64, and float32 on the portable path).
#include "ops/softmax_xent.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/cpu.h"
#include "core/parallel.h"
#include "simd/dispatch.h"

namespace fg {

namespace {
int64_t row_grain(int64_t V) { return std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(V, 1)); }

// Calls fn(b, e) on blocks of ~64K elements of rows [0, N), handed out first come, first served
// (at least row_grain(V) rows per thread, as parallel_for). On a shared machine a thread that the
// OS preempts holds up one block, not half of the rows. Every row is still computed by one thread
// with the same code, so results do not depend on the schedule or the thread count.
template <typename F>
void for_rows(int64_t N, int64_t V, F&& fn) {
  const int nt = static_cast<int>(std::min<int64_t>(get_num_threads(), std::max<int64_t>(1, N / row_grain(V))));
  if (nt <= 1) { if (N > 0) fn(int64_t{0}, N); return; }
  const int64_t block = std::max<int64_t>(1, std::min((1 << 16) / std::max<int64_t>(V, 1), (N + nt - 1) / nt));
  std::atomic<int64_t> next{0};
  parallel_region(nt, [&](int, int) {
    for (int64_t b; (b = next.fetch_add(block, std::memory_order_relaxed)) < N;) fn(b, std::min(N, b + block));
  });
}

// sum of f(i) over [0, V) in double with 8 independent lanes (vectorizable, fixed order)
template <typename F>
double lane_sum(int64_t V, F&& f) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= V; i += 8)
    for (int l = 0; l < 8; ++l) a[l] += static_cast<double>(f(i + l));
  double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; i < V; ++i) s += static_cast<double>(f(i));
  return s;
}

template <typename T>
T max_of(const T* x, int64_t V) {
  // NaN-propagating max: std::max(m, NaN) returns m, which would let a NaN logit vanish from
  // the row (softmax/cross-entropy must return NaN for it, so a diverged run is noticed)
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < V; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
  return m;
}

// Row max m and log(sum(exp(x - m))); logsumexp = m + log_s. Kept apart so callers can form
// (x - m) - log_s, which stays exact-ish when |m| is large (1e4 in float32 has ulp 1e-3).
template <typename T>
void row_lse(const T* x, int64_t V, T* m_out, T* log_s_out) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(row_lse, x, V, m_out, log_s_out);
  const T m = max_of(x, V);
  if (!std::isfinite(m)) { *m_out = m; *log_s_out = 0; return; }  // +-inf / NaN rows propagate
  double s = 0;  // row sums accumulate in double: 50304 float terms would lose ~1e-4 relative
  for (int64_t i = 0; i < V; ++i) s += std::exp(x[i] - m);
  *m_out = m;
  *log_s_out = static_cast<T>(std::log(s));
}
}  // namespace

template <typename T>
void softmax_forward(T* y, const T* x, int64_t N, int64_t V) {
  for_rows(N, V, [&](int64_t b, int64_t e) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
    if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(softmax_forward_rows, y, x, b, e, V);
#endif
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * V;
      T* yr = y + r * V;
      const T m = max_of(xr, V);
      double s = 0;
      for (int64_t i = 0; i < V; ++i) { yr[i] = std::exp(xr[i] - m); s += yr[i]; }
      const T inv = static_cast<T>(1.0 / s);
      for (int64_t i = 0; i < V; ++i) yr[i] *= inv;
    }
  });
}

template <typename T>
void softmax_backward(T* dx, const T* dy, const T* y, int64_t N, int64_t V) {
  for_rows(N, V, [&](int64_t b, int64_t e) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
    if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(softmax_backward_rows, dx, dy, y, b, e, V);
#endif
    for (int64_t r = b; r < e; ++r) {
      const T *dyr = dy + r * V, *yr = y + r * V;
      T* dxr = dx + r * V;
      const T s = static_cast<T>(lane_sum(V, [&](int64_t i) { return static_cast<double>(dyr[i]) * yr[i]; }));
      for (int64_t i = 0; i < V; ++i) dxr[i] = yr[i] * (dyr[i] - s);
    }
  });
}

template <typename T>
void log_softmax_forward(T* y, const T* x, int64_t N, int64_t V) {
  for_rows(N, V, [&](int64_t b, int64_t e) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
    if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(log_softmax_forward_rows, y, x, b, e, V);
#endif
    for (int64_t r = b; r < e; ++r) {
      T m, ls;
      row_lse(x + r * V, V, &m, &ls);
      for (int64_t i = 0; i < V; ++i) y[r * V + i] = (x[r * V + i] - m) - ls;
    }
  });
}

template <typename T>
void log_softmax_backward(T* dx, const T* dy, const T* y, int64_t N, int64_t V) {
  for_rows(N, V, [&](int64_t b, int64_t e) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
    if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(log_softmax_backward_rows, dx, dy, y, b, e, V);
#endif
    for (int64_t r = b; r < e; ++r) {
      const T *dyr = dy + r * V, *yr = y + r * V;
      T* dxr = dx + r * V;
      const T s = static_cast<T>(lane_sum(V, [&](int64_t i) { return dyr[i]; }));
      for (int64_t i = 0; i < V; ++i) dxr[i] = dyr[i] - std::exp(yr[i]) * s;
    }
  });
}

template <typename T, typename I>
double cross_entropy_forward(T* lse, const T* logits, const I* targets, int64_t ignore_index,
                             int64_t N, int64_t V) {
  std::vector<double> loss_rows(static_cast<size_t>(N));
  for_rows(N, V, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = logits + r * V;
      T m, ls;
      row_lse(xr, V, &m, &ls);
      lse[r] = m + ls;
      const int64_t t = static_cast<int64_t>(targets[r]);
      // loss = (m - x[t]) + log_s, without the rounding of lse to T
      loss_rows[r] = t == ignore_index ? 0.0 : static_cast<double>(m - xr[t]) + static_cast<double>(ls);
    }
  });
  double sum = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < N; ++r) {
    if (static_cast<int64_t>(targets[r]) == ignore_index) continue;
    sum += loss_rows[r];
    ++count;
  }
  return count ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

template <typename T, typename I>
void cross_entropy_backward(T* dlogits, const T* logits, const I* targets, const T* lse,
                            double dloss, int64_t ignore_index, int64_t N, int64_t V) {
  int64_t count = 0;
  for (int64_t r = 0; r < N; ++r) count += static_cast<int64_t>(targets[r]) != ignore_index;
  const T scale = count ? static_cast<T>(dloss / static_cast<double>(count)) : T(0);
  void (*grad_row)(float*, const float*, int64_t, float, float, int64_t) = nullptr;
  if constexpr (std::is_same_v<T, float>) grad_row = FG_SIMD_PICK(xent_grad_row);
  for_rows(N, V, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = logits + r * V;
      T* dr = dlogits + r * V;
      const int64_t t = static_cast<int64_t>(targets[r]);
      if (t == ignore_index || count == 0) {
        for (int64_t i = 0; i < V; ++i) dr[i] = T(0);
        continue;
      }
      const T l = lse[r];
      if constexpr (std::is_same_v<T, float>) if (grad_row) { grad_row(dr, xr, V, l, scale, t); continue; }
      for (int64_t i = 0; i < V; ++i) dr[i] = scale * std::exp(xr[i] - l);
      dr[t] -= scale;
    }
  });
}

#define FG_INST(T)                                                                              \
  template void softmax_forward<T>(T*, const T*, int64_t, int64_t);                             \
  template void softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t);                  \
  template void log_softmax_forward<T>(T*, const T*, int64_t, int64_t);                         \
  template void log_softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t);              \
  template double cross_entropy_forward<T, int32_t>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t); \
  template double cross_entropy_forward<T, int64_t>(T*, const T*, const int64_t*, int64_t, int64_t, int64_t); \
  template void cross_entropy_backward<T, int32_t>(T*, const T*, const int32_t*, const T*, double, int64_t, int64_t, int64_t); \
  template void cross_entropy_backward<T, int64_t>(T*, const T*, const int64_t*, const T*, double, int64_t, int64_t, int64_t);
FG_INST(float)
FG_INST(double)
#undef FG_INST

}  // namespace fg
