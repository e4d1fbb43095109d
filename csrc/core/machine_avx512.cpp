// The avx512 peak loop for machine.h (the body is core/fma_loop_body.h, shared by every ISA).
#include <cstdint>

#include "core/machine.h"
#include "simd/vec_avx512.h"

namespace fg::avx512 {
#include "core/fma_loop_body.h"
}  // namespace fg::avx512

namespace fg::detail {
double fma_loop_avx512(int64_t iters) { return avx512::fma_loop(iters); }
}  // namespace fg::detail
