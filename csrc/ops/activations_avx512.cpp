// The activation kernels of activations_body.h for the avx512 path (compiled with the AVX-512 flags;
// chosen at run time by activations.cpp).
#include "core/parallel.h"
#include "ops/activations.h"
#include "simd/vec_avx512.h"

namespace fg::avx512 {
#include "ops/activations_body.h"
}  // namespace fg::avx512
