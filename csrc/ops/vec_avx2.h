// The AVX2 helpers under their old names, for the kernels not yet written against the vector
// type (attention_avx2.cpp): thin wrappers over csrc/simd/vec_avx2.h, same bits. Include only
// from *_avx2.cpp files. New code uses Vf and csrc/simd/vec_math.h directly.
#pragma once
#include "simd/vec_avx2.h"

namespace fg::avx2 {

FG_VEC_INLINE __m256 exp8(__m256 x) { return exp(Vf{x}).v; }
inline float hsum8(__m256 x) { return reduce_add(Vf{x}); }

}  // namespace fg::avx2
