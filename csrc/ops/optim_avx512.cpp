// The optimizer kernels of optim_body.h for the avx512 path (compiled with the AVX-512 flags; chosen
// at run time by optim.cpp).
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/optim.h"
#include "simd/vec_avx512.h"

namespace fg::avx512 {
#include "ops/optim_body.h"
}  // namespace fg::avx512
