// Kernel threading: one global thread count and a static-partition parallel_for.
// Static partitions make results independent of scheduling; kernels that reduce across
// threads must still combine partial results in a fixed order to be bit-reproducible.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>

#ifdef FUSEGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace fg {

int get_num_threads();
void set_num_threads(int n);   // n >= 1, checked by the caller
bool have_openmp();
// True in a process forked after OpenMP started its threads: the child cannot use the
// parent's thread pool (libgomp would hang), so kernels run serially there.
bool forked_child();
void note_pool_started();  // called before every OpenMP region

// Calls fn(begin, end) on contiguous chunks of [0, n), at most one chunk per thread.
// Work below `grain` items per thread runs on fewer threads (down to a serial call).
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  int nt = forked_child() ? 1 : get_num_threads();
  if (grain < 1) grain = 1;
  int64_t max_chunks = std::max<int64_t>(1, n / grain);
  nt = static_cast<int>(std::min<int64_t>(nt, max_chunks));
#ifdef FUSEGRAD_HAVE_OPENMP
  if (nt > 1 && !omp_in_parallel()) {
    note_pool_started();
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num();
      const int T = omp_get_num_threads();
      const int64_t chunk = (n + T - 1) / T;
      const int64_t b = std::min<int64_t>(n, t * chunk);
      const int64_t e = std::min<int64_t>(n, b + chunk);
      if (b < e) fn(b, e);
    }
    return;
  }
#endif
  fn(int64_t{0}, n);
}

// Runs fn(thread_index, num_threads) once on each of `nt` threads (nt <= get_num_threads()).
template <typename F>
void parallel_region(int nt, F&& fn) {
#ifdef FUSEGRAD_HAVE_OPENMP
  if (nt > 1 && !omp_in_parallel() && !forked_child()) {
    note_pool_started();
#pragma omp parallel num_threads(nt)
    fn(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  fn(0, 1);
}

// Runs body(next) on up to get_num_threads() threads; next() hands out the task indices
// 0..n-1 in order, each to whichever thread asks first, then returns -1. When each task writes
// its own outputs and computes them the same way on any thread, results do not depend on the
// thread count or on which thread ran what; a thread slowed down (another process on its core)
// just takes fewer tasks.
template <typename F>
void dynamic_tasks(int64_t n, F&& body) {
  if (n <= 0) return;
  std::atomic<int64_t> ctr{0};
  auto next = [&]() -> int64_t {
    const int64_t t = ctr.fetch_add(1, std::memory_order_relaxed);
    return t < n ? t : -1;
  };
  parallel_region(static_cast<int>(std::min<int64_t>(get_num_threads(), n)), [&](int, int) { body(next); });
}

}  // namespace fg
