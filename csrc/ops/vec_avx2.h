// The AVX2 helpers under their old names, for the kernels not yet written against the vector
// type (attention_avx2.cpp): thin wrappers over csrc/simd/vec_avx2.h, same bits. Include only
// from *_avx2.cpp files. New code uses Vf and csrc/simd/vec_math.h directly.
#pragma once
#include "simd/vec_avx2.h"

namespace fg::avx2 {

FG_VEC_INLINE __m256 exp8(__m256 x) { return exp(Vf{x}).v; }
FG_VEC_INLINE __m256 gelu_sig8(__m256 v) { return gelu_sig(Vf{v}).v; }
FG_VEC_INLINE __m256 gelu_tanh8(__m256 v) { return gelu_tanh(Vf{v}).v; }
FG_VEC_INLINE __m256 gelu_tanh_grad8(__m256 v) { return gelu_tanh_grad(Vf{v}).v; }
inline float hsum8(__m256 x) { return reduce_add(Vf{x}); }
inline float hmax8(__m256 x) { return reduce_max(Vf{x}); }
inline double hsum_pd(__m256d a) { return reduce_add(Vd{a}); }

}  // namespace fg::avx2
