// The layernorm kernels of layernorm_body.h for the avx2 path (compiled with the AVX2 flags;
// chosen at run time by layernorm.cpp).
#include <atomic>
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/layernorm.h"
#include "simd/vec_avx2.h"

namespace fg::avx2 {
#include "ops/layernorm_body.h"
}  // namespace fg::avx2
