// Elastic parallel regions: the calling thread plus helper threads that join only if they get
// a CPU in time. On a shared machine a woken OpenMP worker can wait a whole scheduler tick
// (4-8 ms measured here) for a core, and `#pragma omp parallel` makes the caller wait for it
// even when the caller could have done all the work in a fraction of that time. Here the
// caller never waits for a helper that has not started: helpers that wake after the caller's
// share is done simply skip the job. On an idle machine helpers join within microseconds and
// the work is shared as usual.
//
// Kernels using this hand out their work dynamically (atomic counters), so any number of
// participants, including the caller alone, computes the same result. (Candidate for
// csrc/core/parallel.h; kept beside the ops that use it: matmul_avx2.cpp, layernorm_avx2.cpp.)
#pragma once
#include <type_traits>

namespace fg {

// Runs fn(ctx) on the calling thread and on up to nthreads - 1 helper threads. Returns when the
// caller's fn has returned and every helper that entered has returned. Runs fn once, serially,
// when nthreads <= 1, inside another parallel region, or in a forked child.
void elastic_run(int nthreads, void (*fn)(void*), void* ctx);

template <typename F>
void elastic_region(int nthreads, F&& f) {
  using Fn = std::remove_reference_t<F>;
  elastic_run(nthreads, [](void* c) { (*static_cast<Fn*>(c))(); }, static_cast<void*>(&f));
}

}  // namespace fg
