// The activation kernels of activations_body.h for the avx2 path (compiled with the AVX2 flags;
// chosen at run time by activations.cpp).
#include "core/parallel.h"
#include "ops/activations.h"
#include "simd/vec_avx2.h"

namespace fg::avx2 {
#include "ops/activations_body.h"
}  // namespace fg::avx2
