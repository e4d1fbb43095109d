// The softmax / log_softmax / cross-entropy row kernels of softmax_xent_body.h for the avx2 path
// (compiled with the AVX2 flags; chosen at run time by softmax_xent.cpp).
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "ops/softmax_xent.h"
#include "simd/vec_avx2.h"

namespace fg::avx2 {
#include "ops/softmax_xent_body.h"
}  // namespace fg::avx2
