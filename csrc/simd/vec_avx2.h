// The vector type of the avx2 path (AVX2 + FMA): Vf = 8 float lanes, Vd = 4 double lanes, Mf = a
// lane mask (all-ones / all-zeros lanes of a __m256). Include only from files compiled with the
// AVX2 flags (*_avx2.cpp). vec_avx512.h defines the same API with 16 / 8 lanes, so a kernel body
// written against it (csrc/ops/<op>_body.h, included inside namespace fg::<isa>) compiles for both.
//
// API (all in namespace fg::avx2; "n" is a lane count 0..kLanes):
//   Vf::kLanes; loadu(p), load(p) (aligned to kLanes*4), load_tail(p, n) (lanes >= n read as 0 and
//   never touch memory), storeu, store_tail(p, v, n) (writes lanes < n only), stream (aligned,
//   non-temporal), load_or(p, n, fill) (fill in lanes >= n); set1, zero; lane0; lane_is(k) (a
//   mask of lane k alone); + - * / (never contracted into FMAs: CMakeLists.txt
//   compiles the files that use this with -ffp-contract=off); fma(a, b, c) = a*b + c, fnma(a, b, c) = c - a*b, fms(a, b, c) = a*b - c, each rounded once;
//   min/max(a, b): the x86 rule: when either lane is NaN (or both are zeros) the result is b;
//   sqrt, abs; cmp_gt/ge/lt/le/eq/neq (ordered, false on NaN) and is_nan give an Mf, used by
//   select(m, a, b) = m ? a : b, any(m), and_(m, v) = m ? v : 0; exp (below); reduce_add /
//   reduce_max (a fixed pairwise order: deterministic, but not the same bits as 16 lanes);
//   Vd: widen_lo/widen_hi(Vf) to doubles, + - *, fma, reduce_add, keep_lanes_d(d, n).
#pragma once
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#define FG_VEC_INLINE __attribute__((always_inline)) inline

namespace fg::avx2 {
#include "simd/vec_256.h"
#include "simd/vec_math.h"
}  // namespace fg::avx2
