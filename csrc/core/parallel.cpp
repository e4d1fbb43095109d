// Global kernel thread count (see parallel.h). Defaults to OMP_NUM_THREADS when set,
// else the number of processors OpenMP sees.
#include "core/parallel.h"

#include <atomic>
#include <cstdlib>
#include <thread>

namespace fg {

static int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
#ifdef FUSEGRAD_HAVE_OPENMP
  return std::max(1, omp_get_num_procs());
#else
  return 1;
#endif
}

static std::atomic<int>& thread_state() {
  static std::atomic<int> n{default_threads()};
  return n;
}

int get_num_threads() { return thread_state().load(std::memory_order_relaxed); }
void set_num_threads(int n) { thread_state().store(n < 1 ? 1 : n, std::memory_order_relaxed); }
bool have_openmp() {
#ifdef FUSEGRAD_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fg
