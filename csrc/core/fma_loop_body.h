// The peak-FMA loop of machine.h, written once over the vector type Vf of the ISA namespace that
// includes it (machine_avx2.cpp, machine_avx512.cpp): 12 independent accumulators hide the FMA
// latency on two pipes. Returns a value that depends on every FMA. No include guard: included
// once per ISA namespace.
FG_VEC_INLINE double fma_loop(int64_t iters) {
  Vf acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = set1(1.0f + 0.01f * j);
  const Vf m = set1(0.9999999f), c = set1(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = fma(acc[j], m, c);
  }
  Vf s = acc[0];
  for (int j = 1; j < 12; ++j) s = s + acc[j];
  return reduce_add(s);
}
