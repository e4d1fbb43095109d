// The optimizer kernels of optim_body.h for the avx2 path (compiled with the AVX2 flags; chosen
// at run time by optim.cpp).
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/optim.h"
#include "simd/vec_avx2.h"

namespace fg::avx2 {
#include "ops/optim_body.h"
}  // namespace fg::avx2
