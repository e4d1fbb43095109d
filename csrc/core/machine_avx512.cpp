// AVX-512 peak loop for machine.h: 12 independent zmm accumulators hide the FMA latency on
// two FMA pipes (4 cycles x 2 = 8 in flight at least).
#include <immintrin.h>

#include "core/machine.h"

namespace fg {
namespace detail {

double fma_loop_avx512(int64_t iters) {
  __m512 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(1.0f + 0.01f * j);
  const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
  }
  __m512 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, acc[j]);
  return _mm512_reduce_add_ps(s);
}

}  // namespace detail
}  // namespace fg
