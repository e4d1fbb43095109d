// Elastic parallel regions (see elastic.h): one process-wide pool of helper threads, started
// lazily. After a job a helper spins for up to kSpin watching for the next one (back-to-back
// kernel calls then find it awake on its own core, as OpenMP's workers are), then sleeps on a
// condition variable, so an idle pool costs nothing. One job at a time; a second concurrent
// caller runs serially.
#include "ops/elastic.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "core/parallel.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define FG_CPU_RELAX() _mm_pause()
#else
#define FG_CPU_RELAX() std::this_thread::yield()
#endif

#if !defined(_WIN32)
#include <unistd.h>
#define FG_GETPID() static_cast<long>(::getpid())
#else
#include <process.h>
#define FG_GETPID() static_cast<long>(::_getpid())
#endif

namespace fg {

namespace {

thread_local bool tls_in_region = false;
constexpr std::chrono::microseconds kSpin{1000};

struct Pool {
  std::mutex m;
  std::condition_variable wake, idle;
  void (*fn)(void*) = nullptr;  // the open job, or nullptr
  void* ctx = nullptr;
  uint64_t gen = 0;             // bumped for every job
  std::atomic<uint64_t> gen_pub{0};  // a copy of gen that spinning helpers read without the lock
  int open_slots = 0;           // helpers that may still enter the open job
  int active = 0;               // helpers inside a job
  int started = 0;
  const long pid = FG_GETPID();  // threads do not survive fork: a child never uses the pool

  void ensure_helpers(int n) {  // with m held
    for (; started < n; ++started) std::thread([this] { loop(); }).detach();
  }

  void loop() {
    tls_in_region = true;
    uint64_t seen = gen_pub.load(std::memory_order_acquire);
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; gen_pub.load(std::memory_order_acquire) == seen; ++i) {
        FG_CPU_RELAX();
        if ((i & 63) == 63 && std::chrono::steady_clock::now() - t0 > kSpin) break;
      }
      std::unique_lock<std::mutex> lk(m);
      wake.wait(lk, [&] { return gen != seen; });
      seen = gen;
      if (!fn || open_slots == 0) continue;  // woke too late, or the job has enough helpers
      --open_slots;
      ++active;
      void (*f)(void*) = fn;
      void* c = ctx;
      lk.unlock();
      f(c);
      lk.lock();
      if (--active == 0) idle.notify_all();
      seen = gen;
    }
  }
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: detached helpers may outlive static destructors
  return *p;
}

}  // namespace

void elastic_run(int nthreads, void (*fn)(void*), void* ctx) {
  bool serial = nthreads <= 1 || tls_in_region || forked_child();
#ifdef FUSEGRAD_HAVE_OPENMP
  serial = serial || omp_in_parallel();
#endif
  Pool* P = serial ? nullptr : &pool();
  if (P && P->pid != FG_GETPID()) P = nullptr;
  if (P) {
    std::lock_guard<std::mutex> lk(P->m);
    if (P->fn) {
      P = nullptr;  // another caller's job is open: run this one serially
    } else {
      P->ensure_helpers(nthreads - 1);
      P->fn = fn;
      P->ctx = ctx;
      P->open_slots = nthreads - 1;
      ++P->gen;
      P->gen_pub.store(P->gen, std::memory_order_release);
    }
  }
  if (!P) {
    fn(ctx);
    return;
  }
  P->wake.notify_all();
  tls_in_region = true;
  fn(ctx);
  tls_in_region = false;
  // Close the job: late helpers now skip it; wait only for helpers already inside.
  std::unique_lock<std::mutex> lk(P->m);
  P->fn = nullptr;
  P->ctx = nullptr;
  P->open_slots = 0;
  P->idle.wait(lk, [&] { return P->active == 0; });
}

}  // namespace fg
