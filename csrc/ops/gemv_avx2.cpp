// Skinny products (gemv.h), AVX2/FMA instance of gemv_body.h: 8 lanes, 4 rows of w in flight
// against up to 3 rows of x (12 accumulators + 4 weight registers of the 16; x is read by the FMA).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/gemv.h"
#include "simd/vec_avx2.h"

namespace fg::avx2 {
namespace {
// bf16 -> float32: the 16 bits become the top half of each lane
FG_VEC_INLINE Vf widen_bf16(__m128i h) { return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))}; }
FG_VEC_INLINE Vf load_w(const uint16_t* p) { return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
FG_VEC_INLINE Vf load_w_tail(const uint16_t* p, int64_t n) {
  alignas(16) uint16_t t[8] = {};
  for (int64_t j = 0; j < n; ++j) t[j] = p[j];
  return widen_bf16(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}
constexpr int kRW = 4, kRX = 3;
}  // namespace

#include "ops/gemv_body.h"

}  // namespace fg::avx2
