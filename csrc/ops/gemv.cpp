// Skinny products (gemv.h): the portable instance of gemv_body.h (an 8-lane vector of plain
// floats the compiler maps to the baseline SIMD), the run-time dispatch to the AVX2 and
// AVX-512 instances (and to the AVX512_BF16 kernel for bf16 weights), the bf16 conversions
// and the plain reference loop.
#include "ops/gemv.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "core/parallel.h"
#include "ops/matmul_bf16.h"

namespace fg {
namespace portable {

// An 8-lane stand-in for the csrc/simd vector API: plain loops the compiler maps to the
// baseline SIMD (a*b + c rounded twice: no FMA is assumed here).
#define FG_VEC_INLINE inline
struct Vf {
  static constexpr int kLanes = 8;
  float v[kLanes];
};
inline Vf zero() { return Vf{}; }
inline Vf set1(float a) {
  Vf r;
  for (float& x : r.v) x = a;
  return r;
}
inline Vf loadu(const float* p) {
  Vf r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
}
inline Vf load_tail(const float* p, int64_t n) {
  Vf r{};
  for (int64_t j = 0; j < n; ++j) r.v[j] = p[j];
  return r;
}
inline void store_tail(float* p, Vf a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = a.v[j];
}
inline Vf operator*(Vf a, Vf b) {
  for (int j = 0; j < Vf::kLanes; ++j) a.v[j] *= b.v[j];
  return a;
}
inline Vf fma(Vf a, Vf b, Vf c) {
  for (int j = 0; j < Vf::kLanes; ++j) c.v[j] += a.v[j] * b.v[j];
  return c;
}
inline float reduce_add(Vf a) {  // pairwise: (0+4, 1+5, 2+6, 3+7), then (0+2, 1+3), then 0+1
  for (int j = 0; j < 4; ++j) a.v[j] += a.v[j + 4];
  a.v[0] += a.v[2];
  a.v[1] += a.v[3];
  return a.v[0] + a.v[1];
}
inline Vf load_w_tail(const uint16_t* p, int64_t n) {
  Vf r{};
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = uint32_t(p[j]) << 16;
    std::memcpy(&r.v[j], &u, 4);
  }
  return r;
}
inline Vf load_w(const uint16_t* p) { return load_w_tail(p, Vf::kLanes); }
constexpr int kRW = 4, kRX = 4;

#include "ops/gemv_body.h"
#undef FG_VEC_INLINE

}  // namespace portable

void gemv(float* y, const float* x, const float* w, const float* bias, int64_t M, int64_t IN, int64_t OUT,
          const float* residual) {
  FG_SIMD_DISPATCH(gemv, y, x, w, bias, M, IN, OUT, residual);
  portable::gemv(y, x, w, bias, M, IN, OUT, residual);
}

void gemv_bf16(float* y, const float* x, const uint16_t* w, const float* bias, int64_t M, int64_t IN,
               int64_t OUT, const float* residual) {
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
  if (cpu_has_avx512_bf16() && use_avx512()) {
    const int64_t Kp = (IN + 31) / 32 * 32;
    thread_local std::vector<uint16_t> xs;  // x split in bf16 halves, kept between calls
    xs.resize(static_cast<size_t>(2 * M * Kp));
    avx512_bf16::split_rows(xs.data(), x, M, IN, Kp);
    avx512_bf16::gemv_rows(y, xs.data(), w, bias, M, IN, Kp, OUT, residual);
    return;
  }
#endif
  FG_SIMD_DISPATCH(gemv_bf16, y, x, w, bias, M, IN, OUT, residual);
  portable::gemv_bf16(y, x, w, bias, M, IN, OUT, residual);
}

void decode_attention(float* o, const float* q, const float* k, const float* v, int64_t G, int64_t S, int64_t D,
                      float scale, float* p) {
  FG_SIMD_DISPATCH(decode_attention, o, q, k, v, G, S, D, scale, p);
  portable::decode_attention(o, q, k, v, G, S, D, scale, p);
}

void bf16_from_float(uint16_t* out, const float* in, int64_t n) {
  parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint32_t u;
      std::memcpy(&u, &in[i], 4);
      if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, make it quiet
        out[i] = static_cast<uint16_t>((u >> 16) | 0x40u);
      } else {  // round to nearest, ties to even (overflow rounds to inf, as it should)
        out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      }
    }
  });
}

void bf16_to_float(float* out, const uint16_t* in, int64_t n) {
  parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint32_t u = uint32_t(in[i]) << 16;
      std::memcpy(&out[i], &u, 4);
    }
  });
}

}  // namespace fg
