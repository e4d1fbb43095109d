// Measurements of this machine's limits, taken in the same run as a benchmark:
// peak fp32 FMA throughput (a tight register-resident FMA loop on every thread) and
// memory copy bandwidth (large buffer copies on every thread). Used by bench/ only.
#pragma once
#include <cstdint>

#include "core/cpu.h"

namespace fg {

// fp32 GFLOP/s (an FMA counts 2) over roughly `seconds` of work on `threads` threads, using the
// widest FMA of `isa` (portable: scalar code as the compiler makes it).
double peak_fma_gflops(int threads, double seconds, Isa isa);
// GB/s counting bytes read + bytes written, copying `bytes` per thread-sized slice.
double copy_bandwidth_gbs(int64_t bytes, int threads, int reps);

namespace detail {
double fma_loop_avx2(int64_t iters);      // returns a value that depends on every FMA
double fma_loop_avx512(int64_t iters);
double fma_loop_portable(int64_t iters);
constexpr int64_t kFlopsPerIterAvx2 = 12 * 8 * 2;  // 12 ymm accumulators x 8 lanes x 2
constexpr int64_t kFlopsPerIterAvx512 = 12 * 16 * 2;  // 12 zmm accumulators x 16 lanes x 2
constexpr int64_t kFlopsPerIterPortable = 8 * 2;
}  // namespace detail

}  // namespace fg
