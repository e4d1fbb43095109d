// Skinny products (gemv.h), AVX-512 instance of gemv_body.h: 16 lanes, 4 rows of w in flight
// against up to 4 rows of x (16 accumulators + 4 weight registers of the 32).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/gemv.h"
#include "simd/vec_avx512.h"

namespace fg::avx512 {
namespace {
// bf16 -> float32: the 16 bits become the top half of each lane; the tail is a masked load
FG_VEC_INLINE Vf widen_bf16(__m256i h) { return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))}; }
FG_VEC_INLINE Vf load_w(const uint16_t* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
FG_VEC_INLINE Vf load_w_tail(const uint16_t* p, int64_t n) {
  return widen_bf16(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p));
}
constexpr int kRW = 4, kRX = 4;
}  // namespace

#include "ops/gemv_body.h"

}  // namespace fg::avx512
