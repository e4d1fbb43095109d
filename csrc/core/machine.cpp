// Machine-limit measurements (see machine.h).
#include "core/machine.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "core/parallel.h"

namespace fg {
namespace detail {

double fma_loop_portable(int64_t iters) {
  float a[8] = {1.f, 1.1f, 1.2f, 1.3f, 1.4f, 1.5f, 1.6f, 1.7f};
  const float m = 0.9999999f, c = 1e-7f;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 8; ++j) a[j] = a[j] * m + c;
  double s = 0;
  for (float x : a) s += x;
  return s;
}

}  // namespace detail

double peak_fma_gflops(int threads, double seconds, Isa isa) {
  auto loop = [&](int64_t iters) {
#ifdef FUSEGRAD_HAVE_AVX512_BUILD
    if (isa == Isa::avx512) return detail::fma_loop_avx512(iters);
#endif
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
    if (isa == Isa::avx2) return detail::fma_loop_avx2(iters);
#endif
    return detail::fma_loop_portable(iters);
  };
  const int64_t per_iter = isa == Isa::avx512 ? detail::kFlopsPerIterAvx512
                           : isa == Isa::avx2 ? detail::kFlopsPerIterAvx2
                                              : detail::kFlopsPerIterPortable;
  // Calibrate the iteration count on one thread, then run on all threads at once.
  int64_t iters = 1 << 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    volatile double sink = loop(iters);
    (void)sink;
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > seconds / 4 || iters > (int64_t{1} << 40)) {
      iters = static_cast<int64_t>(iters * (seconds / std::max(dt, 1e-9)));
      break;
    }
    iters *= 4;
  }
  if (iters < 1) iters = 1;
  std::vector<double> sinks(threads > 0 ? threads : 1);
  auto t0 = std::chrono::steady_clock::now();
  parallel_region(threads, [&](int t, int) { sinks[t] = loop(iters); });
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  volatile double sink = sinks[0];
  (void)sink;
  return static_cast<double>(iters) * per_iter * threads / dt * 1e-9;
}

double copy_bandwidth_gbs(int64_t bytes, int threads, int reps) {
  if (threads < 1) threads = 1;
  const int64_t per = bytes / threads;
  std::vector<std::vector<char>> src(threads), dst(threads);
  parallel_region(threads, [&](int t, int) {  // first touch on the thread that uses it
    src[t].assign(per, 1);
    dst[t].assign(per, 0);
  });
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    parallel_region(threads, [&](int t, int) { std::memcpy(dst[t].data(), src[t].data(), per); });
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double gbs = 2.0 * per * threads / dt * 1e-9;
    if (gbs > best) best = gbs;
  }
  return best;
}

}  // namespace fg
