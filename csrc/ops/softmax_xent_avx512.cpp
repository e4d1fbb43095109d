// The softmax / log_softmax / cross-entropy row kernels of softmax_xent_body.h for the avx512 path
// (compiled with the AVX-512 flags; chosen at run time by softmax_xent.cpp).
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "ops/softmax_xent.h"
#include "simd/vec_avx512.h"

namespace fg::avx512 {
#include "ops/softmax_xent_body.h"
}  // namespace fg::avx512
