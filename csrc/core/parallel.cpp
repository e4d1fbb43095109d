// Global kernel thread count (see parallel.h). Defaults to OMP_NUM_THREADS when set,
// else the number of processors OpenMP sees.
#include "core/parallel.h"

#include <atomic>
#include <cstdlib>
#include <thread>

#if defined(FUSEGRAD_HAVE_OPENMP) && !defined(_WIN32)
#include <pthread.h>
#define FG_HAVE_ATFORK 1
#endif

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

static std::atomic<bool> g_forked{false};
static std::atomic<bool> g_pool_started{false};
bool forked_child() { return g_forked.load(std::memory_order_relaxed); }
void note_pool_started() {
  if (!g_pool_started.load(std::memory_order_relaxed)) g_pool_started.store(true, std::memory_order_relaxed);
}

#ifdef FG_HAVE_ATFORK
namespace {
struct AtForkRegistration {
  AtForkRegistration() {
    pthread_atfork(nullptr, nullptr, [] {
      if (g_pool_started.load(std::memory_order_relaxed)) g_forked.store(true, std::memory_order_relaxed);
    });
  }
} at_fork_registration;
}  // namespace
#endif

int get_num_threads() { return forked_child() ? 1 : thread_state().load(std::memory_order_relaxed); }
void set_num_threads(int n) { thread_state().store(n < 1 ? 1 : n, std::memory_order_relaxed); }
bool have_openmp() {
#ifdef FUSEGRAD_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fg
