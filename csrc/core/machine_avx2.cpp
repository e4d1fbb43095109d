// The avx2 peak loop for machine.h (the body is core/fma_loop_body.h, shared by every ISA).
#include <cstdint>

#include "core/machine.h"
#include "simd/vec_avx2.h"

namespace fg::avx2 {
#include "core/fma_loop_body.h"
}  // namespace fg::avx2

namespace fg::detail {
double fma_loop_avx2(int64_t iters) { return avx2::fma_loop(iters); }
}  // namespace fg::detail
