// Portable activation kernels and the run-time dispatch to the AVX2 versions.
#include "ops/activations.h"

#include <type_traits>

#include "core/cpu.h"
#include "core/parallel.h"

namespace fg {

namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per thread below which we stay serial
}

template <typename T>
void relu_forward(T* y, const T* x, int64_t N) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2()) return avx2::relu_forward(y, x, N);
  }
#endif
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    // x > 0 ? x : 0 keeps NaN as NaN (NaN > 0 is false, so write x only when it is NaN too)
    for (int64_t i = b; i < e; ++i) y[i] = (x[i] > T(0) || x[i] != x[i]) ? x[i] : T(0);
  });
}

template <typename T>
void relu_backward(T* dx, const T* dy, const T* x, int64_t N) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2()) return avx2::relu_backward(dx, dy, x, N);
  }
#endif
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
  });
}

template void relu_forward<float>(float*, const float*, int64_t);
template void relu_forward<double>(double*, const double*, int64_t);
template void relu_backward<float>(float*, const float*, const float*, int64_t);
template void relu_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace fg
