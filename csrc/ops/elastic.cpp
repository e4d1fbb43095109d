// Elastic parallel regions (see elastic.h): one process-wide pool of helper threads, started
// lazily, that sleep on a condition variable between jobs (no spinning, so an idle pool costs
// nothing on a shared machine). One job at a time; a second concurrent caller runs serially.
#include "ops/elastic.h"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "core/parallel.h"

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

struct Pool {
  std::mutex m;
  std::condition_variable wake, idle;
  void (*fn)(void*) = nullptr;  // the open job, or nullptr
  void* ctx = nullptr;
  uint64_t gen = 0;             // bumped for every job
  int open_slots = 0;           // helpers that may still enter the open job
  int active = 0;               // helpers inside a job
  int started = 0;
  const long pid = FG_GETPID();  // threads do not survive fork: a child never uses the pool

  void ensure_helpers(int n) {  // with m held
    for (; started < n; ++started) std::thread([this] { loop(); }).detach();
  }

  void loop() {
    tls_in_region = true;
    std::unique_lock<std::mutex> lk(m);
    uint64_t seen = gen;
    for (;;) {
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
