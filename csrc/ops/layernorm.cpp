// Portable layernorm kernels (float32 and float64). One pass over the data each way: a row
// is loaded once from memory and the second look at it (variance, output) hits cache.
#include "ops/layernorm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/cpu.h"
#include "core/parallel.h"

namespace fg {

namespace {
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(C, 1)); }

// Row reductions use kL independent double lanes (combined in fixed order), so the compiler
// can vectorize them without -ffast-math and float32 rows of 50304 keep double accuracy.
constexpr int kL = 8;
inline double lanes_sum(const double* a) {
  double s = 0;
  for (int l = 0; l < kL; ++l) s += a[l];
  return s;
}
}  // namespace

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                       int64_t N, int64_t C, double eps) {
  if constexpr (std::is_same_v<T, float>) FG_SIMD_DISPATCH(layernorm_forward, y, mean, rstd, x, weight, bias, N, C, eps, row_grain(C));
  parallel_for(N, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      double acc[kL] = {0};
      int64_t i0 = 0;
      for (; i0 + kL <= C; i0 += kL)
        for (int l = 0; l < kL; ++l) acc[l] += static_cast<double>(xr[i0 + l]);
      double s = lanes_sum(acc);
      for (int64_t i = i0; i < C; ++i) s += xr[i];
      const T m = static_cast<T>(s / static_cast<double>(C));
      // two-pass variance on the cached row: exact 0 for constant rows, never negative
      double vacc[kL] = {0};
      for (i0 = 0; i0 + kL <= C; i0 += kL)
        for (int l = 0; l < kL; ++l) { const double d = static_cast<double>(xr[i0 + l] - m); vacc[l] += d * d; }
      double v = lanes_sum(vacc);
      for (int64_t i = i0; i < C; ++i) { const double d = static_cast<double>(xr[i] - m); v += d * d; }
      const T rs = static_cast<T>(1.0 / std::sqrt(v / static_cast<double>(C) + eps));
      mean[r] = m;
      rstd[r] = rs;
      if (weight && bias) {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs * weight[i] + bias[i];
      } else if (weight) {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs * weight[i];
      } else if (bias) {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs + bias[i];
      } else {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs;
      }
    }
  });
}

template <typename T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight,
                        const T* mean, const T* rstd, int64_t N, int64_t C) {
  if constexpr (std::is_same_v<T, float>)
    FG_SIMD_DISPATCH(layernorm_backward, dx, dweight, dbias, dy, x, weight, mean, rstd, N, C, row_grain(C));
  const int64_t grain = row_grain(C);
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), N / grain)));
  // per-thread partials: [dweight | dbias] for each thread, combined in thread order below
  std::vector<T> part(static_cast<size_t>(nt) * 2 * C, T(0));
  parallel_region(nt, [&](int t, int T_) {
    const int64_t chunk = (N + T_ - 1) / T_;
    const int64_t b = std::min<int64_t>(N, t * chunk), e = std::min<int64_t>(N, b + chunk);
    T* pdw = part.data() + static_cast<size_t>(t) * 2 * C;
    T* pdb = pdw + C;
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * C;
      const T* dyr = dy + r * C;
      T* dxr = dx + r * C;
      const T m = mean[r], rs = rstd[r];
      // pass 1 (from memory): mean(g), mean(g*xhat), and the dweight/dbias partials
      double ag[kL] = {0}, agx[kL] = {0};
      int64_t i0 = 0;
      for (; i0 + kL <= C; i0 += kL) {
        for (int l = 0; l < kL; ++l) {
          const int64_t i = i0 + l;
          const T xh = (xr[i] - m) * rs;
          const T g = weight ? dyr[i] * weight[i] : dyr[i];
          ag[l] += static_cast<double>(g);
          agx[l] += static_cast<double>(g * xh);
          pdw[i] += dyr[i] * xh;
          pdb[i] += dyr[i];
        }
      }
      double sg = lanes_sum(ag), sgx = lanes_sum(agx);
      for (int64_t i = i0; i < C; ++i) {
        const T xh = (xr[i] - m) * rs;
        const T g = weight ? dyr[i] * weight[i] : dyr[i];
        sg += g;
        sgx += g * xh;
        pdw[i] += dyr[i] * xh;
        pdb[i] += dyr[i];
      }
      const T mg = static_cast<T>(sg / static_cast<double>(C)), mgx = static_cast<T>(sgx / static_cast<double>(C));
      // pass 2 (cached row): dx = rstd * (g - mean(g) - xhat * mean(g*xhat))
      for (int64_t i = 0; i < C; ++i) {
        const T xh = (xr[i] - m) * rs;
        const T g = weight ? dyr[i] * weight[i] : dyr[i];
        dxr[i] = rs * (g - mg - xh * mgx);
      }
    }
  });
  for (int64_t i = 0; i < C; ++i) { dweight[i] = 0; dbias[i] = 0; }
  for (int t = 0; t < nt; ++t) {
    const T* pdw = part.data() + static_cast<size_t>(t) * 2 * C;
    for (int64_t i = 0; i < C; ++i) { dweight[i] += pdw[i]; dbias[i] += pdw[C + i]; }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, double);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int64_t, int64_t);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int64_t, int64_t);

}  // namespace fg
