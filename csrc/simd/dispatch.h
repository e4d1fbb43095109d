// Run-time choice between the per-ISA instantiations of a kernel body (csrc/ops/<op>_body.h,
// compiled in <op>_avx2.cpp and <op>_avx512.cpp). Inside a dispatching function:
//   FG_SIMD_DISPATCH(relu_forward, y, x, N);   // returns avx512::relu_forward(...) on the
//                                              // avx512 path, avx2::... on avx2, else falls through
// to the portable code that follows. Paths not built into this module (non-x86) drop out here.
#pragma once
#include "core/cpu.h"

#if defined(FUSEGRAD_HAVE_AVX512_BUILD)
#define FG_SIMD_DISPATCH_AVX512(fn, ...) \
  if (::fg::use_avx512()) return ::fg::avx512::fn(__VA_ARGS__);
#else
#define FG_SIMD_DISPATCH_AVX512(fn, ...)
#endif
#if defined(FUSEGRAD_HAVE_AVX2_BUILD)
#define FG_SIMD_DISPATCH_AVX2(fn, ...) \
  if (::fg::use_avx2()) return ::fg::avx2::fn(__VA_ARGS__);
#else
#define FG_SIMD_DISPATCH_AVX2(fn, ...)
#endif
#define FG_SIMD_DISPATCH(fn, ...)             \
  do {                                        \
    FG_SIMD_DISPATCH_AVX512(fn, __VA_ARGS__)  \
    FG_SIMD_DISPATCH_AVX2(fn, __VA_ARGS__)    \
  } while (0)

// Declares the float32 kernels of one op in both ISA namespaces: FG_SIMD_DECLARE(void f(float*, int64_t);)
#define FG_SIMD_DECLARE(...)        \
  namespace avx2 { __VA_ARGS__ }    \
  namespace avx512 { __VA_ARGS__ }

// The best kernel as a function pointer (nullptr: use the portable code), for loops that would
// otherwise test the ISA once per row: auto* k = FG_SIMD_PICK(xent_grad_row);
#if defined(FUSEGRAD_HAVE_AVX512_BUILD)
#define FG_SIMD_PICK_AVX512(fn) ::fg::use_avx512() ? &::fg::avx512::fn :
#else
#define FG_SIMD_PICK_AVX512(fn)
#endif
#if defined(FUSEGRAD_HAVE_AVX2_BUILD)
#define FG_SIMD_PICK_AVX2(fn) ::fg::use_avx2() ? &::fg::avx2::fn :
#else
#define FG_SIMD_PICK_AVX2(fn)
#endif
#define FG_SIMD_PICK(fn) (FG_SIMD_PICK_AVX512(fn) FG_SIMD_PICK_AVX2(fn) nullptr)
