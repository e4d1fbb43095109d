// The layernorm kernels of layernorm_body.h for the avx512 path (compiled with the AVX-512 flags;
// chosen at run time by layernorm.cpp).
#include <atomic>
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/layernorm.h"
#include "simd/vec_avx512.h"

namespace fg::avx512 {
#include "ops/layernorm_body.h"
}  // namespace fg::avx512
