// Per-element math of the CUDA kernels, as __host__ __device__ functions: the same source runs
// in the kernels and on the host, where fusegrad._cuda._host_math exposes it so the tests check
// it against NumPy's float64 on machines without a GPU. Formulas follow the CPU kernels
// (csrc/ops/activations.cpp, optim.cpp): sigmoid forms without cancellation, exp overflow giving
// exact 0/1 rather than NaN.
#pragma once
#include <math.h>

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define FG_HD __host__ __device__ __forceinline__
#else
#define FG_HD inline
#endif

namespace fg::cuda_math {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;   // 1/sqrt(2 pi)

// gelu_tanh(x) = 0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2/pi) (x + c x^3)
FG_HD float gelu_tanh(float x) {
  const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  return x / (1.f + expf(-2.f * u));
}
// gelu_tanh'(x) = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 c x^2), s = sigmoid(2u); s where s(1-s) == 0
FG_HD float gelu_tanh_grad(float x) {
  const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  const float s = 1.f / (1.f + expf(-2.f * u));
  const float sp = s * (1.f - s);
  if (sp == 0.f) return s;
  return s + 2.f * kSqrt2OverPi * x * sp * (1.f + 3.f * kGeluC * x * x);
}
// gelu(x) = x Phi(x), Phi(x) = 0.5 erfc(-x / sqrt 2) (accurate in the left tail, where 1 + erf cancels)
FG_HD float gelu_erf(float x) { return x * (0.5f * erfcf(-x * kInvSqrt2)); }
// gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
FG_HD float gelu_erf_grad(float x) {
  const float phi = kInvSqrt2Pi * expf(-0.5f * x * x);
  return 0.5f * erfcf(-x * kInvSqrt2) + x * phi;  // +-inf: inf * 0 = NaN, as the CPU kernels
}
FG_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
FG_HD float relu(float x) { return (x > 0.f || x != x) ? x : 0.f; }  // NaN stays NaN

// One element of torch.optim.Adam / AdamW (decoupled weight decay), as adam_step on the CPU.
struct AdamConsts {
  float step_size, inv_bc2_sqrt, b1, b1c, b2, b2c, eps, decay, wd;
  bool lerp_from_m, decoupled;
};
FG_HD AdamConsts adam_consts(int64_t step, double lr, double beta1, double beta2, double eps,
                             double weight_decay, bool decoupled) {
  const double bc1 = 1.0 - pow(beta1, double(step)), bc2 = 1.0 - pow(beta2, double(step));
  AdamConsts c;
  c.step_size = float(lr / bc1);
  c.inv_bc2_sqrt = float(1.0 / sqrt(bc2));
  c.b1 = float(beta1);
  c.b1c = float(1.0 - beta1);
  c.b2 = float(beta2);
  c.b2c = float(1.0 - beta2);
  c.eps = float(eps);
  c.decay = float(1.0 - lr * weight_decay);
  c.wd = float(weight_decay);
  c.lerp_from_m = c.b1c < 0.5f;
  c.decoupled = decoupled;
  return c;
}
// Updates p, m, v in place from gradient g.
FG_HD void adam_update(float& p, float& m, float& v, float g, const AdamConsts& c) {
  if (c.decoupled) p = p * c.decay;  // AdamW: p *= 1 - lr wd
  else g = g + c.wd * p;             // Adam: g += wd p
  const float d = g - m;
  const float mi = c.lerp_from_m ? m + c.b1c * d : g - c.b1 * d;  // m = lerp(m, g, 1 - beta1), nearer end
  const float vi = c.b2 * v + c.b2c * g * g;
  const float denom = sqrtf(vi) * c.inv_bc2_sqrt + c.eps;
  p = p - c.step_size * (mi / denom);
  m = mi;
  v = vi;
}

// float32 -> bfloat16 bits, rounded to nearest, ties to even; NaN stays a (quiet) NaN. The CPU's
// _bf16_from_float32 rule, so bf16 products on the GPU round their operands as the CPU does.
FG_HD uint16_t bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // NaN: keep sign, set quiet bit
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
FG_HD float bf16_value(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float x;
  memcpy(&x, &u, 4);
  return x;
}

// The power of two 2^e that brings a largest magnitude amax into [1, 2); 1 where amax is 0, inf or
// NaN (nothing to scale, or nothing a scale can save); e within [-126, 126], so 2^e and 2^-e are
// normal floats and multiplying by either is exact. fp16 attention multiplies dO by it before
// rounding to fp16 and its gradients by 2^-e (attention_tc.cu: loss scaling inside the kernel).
FG_HD float pow2_scale(float amax) {
  if (!(amax > 0.f && amax <= 3.4028234663852886e38f)) return 1.f;
  int e = 0;
  frexpf(amax, &e);  // amax = m 2^e, m in [0.5, 1): amax 2^(1 - e) is in [1, 2)
  const int s = 1 - e < -126 ? -126 : (1 - e > 126 ? 126 : 1 - e);
  return ldexpf(1.f, s);
}

}  // namespace fg::cuda_math
