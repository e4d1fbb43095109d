// Portable fused optimizer kernels. Memory-bound: one read of each buffer, one write of
// each updated buffer; the compiler vectorizes the inner loops.
#include "ops/optim.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/cpu.h"

#include "core/parallel.h"
#include "simd/dispatch.h"

namespace fg {

namespace {
constexpr int64_t kGrain = 1 << 15;
}

template <typename T>
void sgd_step(T* param, T* m, const T* grad, int64_t N, double lr, double momentum, double weight_decay,
              bool nesterov, double dampening, bool first_step) {
  if constexpr (std::is_same_v<T, float>)
    FG_SIMD_DISPATCH(sgd_step, param, m, grad, N, lr, momentum, weight_decay, nesterov, dampening, first_step);
  const T lr_ = T(lr), mu = T(momentum), wd = T(weight_decay), damp1 = T(1.0 - dampening);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T g = grad[i];
      if (weight_decay != 0.0) g = g + wd * param[i];       // L2: g += wd * p
      if (momentum != 0.0) {
        T buf = first_step ? g : mu * m[i] + damp1 * g;     // buf = mu*buf + (1-dampening)*g
        m[i] = buf;
        g = nesterov ? g + mu * buf : buf;
      }
      param[i] = param[i] - lr_ * g;
    }
  });
}

template <typename T>
void adam_step(T* param, T* m, T* v, const T* grad, int64_t N, int64_t step, double lr, double beta1,
               double beta2, double eps, double weight_decay, bool decoupled_wd) {
  if constexpr (std::is_same_v<T, float>)
    FG_SIMD_DISPATCH(adam_step, param, m, v, grad, N, step, lr, beta1, beta2, eps, weight_decay, decoupled_wd);
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  const T step_size = T(lr / bc1), inv_bc2_sqrt = T(1.0 / std::sqrt(bc2));
  const T b1c = T(1.0 - beta1), b2 = T(beta2), b2c = T(1.0 - beta2), eps_ = T(eps);
  // m = lerp(m, g, w) with w = 1-beta1, from whichever end is nearer (as torch.lerp does):
  // m + w(g-m) for w < 1/2, else g - (1-w)(g-m), so beta1 = 0 gives m = g exactly
  const bool lerp_from_m = b1c < T(0.5);
  const T b1 = T(beta1);                                   // not 1 - b1c: beta1 = 1e-3 keeps its digits
  const T decay = T(1.0 - lr * weight_decay), wd = T(weight_decay);
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T p = param[i], g = grad[i];
      if (decoupled_wd) p = p * decay;                       // AdamW: p *= 1 - lr*wd
      else g = g + wd * p;                                   // Adam: g += wd*p
      const T d = g - m[i];
      T mi = lerp_from_m ? m[i] + b1c * d : g - b1 * d;      // m = lerp(m, g, 1-beta1)
      T vi = b2 * v[i] + b2c * g * g;                        // v = beta2*v + (1-beta2)*g^2
      T denom = std::sqrt(vi) * inv_bc2_sqrt + eps_;         // sqrt(v / bc2) + eps
      param[i] = p - step_size * (mi / denom);                 // p -= lr/bc1 * m / denom
      m[i] = mi;
      v[i] = vi;
    }
  });
}

namespace {
// One chunk, in order, with four interleaved accumulators (added pairwise at the end).
template <typename T>
double sum_squares_chunk(const T* x, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double v0 = x[i], v1 = x[i + 1], v2 = x[i + 2], v3 = x[i + 3];
    a0 += v0 * v0;
    a1 += v1 * v1;
    a2 += v2 * v2;
    a3 += v3 * v3;
  }
  for (; i < n; ++i) a0 += double(x[i]) * double(x[i]);
  return (a0 + a1) + (a2 + a3);
}
}  // namespace

template <typename T>
double sum_squares(const T* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t nchunks = (n + kSumSquaresChunk - 1) / kSumSquaresChunk;
  double (*chunk)(const T*, int64_t) = sum_squares_chunk<T>;
  if constexpr (std::is_same_v<T, float>) {
    if (auto* k = FG_SIMD_PICK(sum_squares_chunk)) chunk = k;
  }
  std::vector<double> part(nchunks);
  parallel_for(nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const int64_t i0 = c * kSumSquaresChunk;
      part[c] = chunk(x + i0, std::min(kSumSquaresChunk, n - i0));
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template void sgd_step<float>(float*, float*, const float*, int64_t, double, double, double, bool, double, bool);
template void sgd_step<double>(double*, double*, const double*, int64_t, double, double, double, bool, double, bool);
template void adam_step<float>(float*, float*, float*, const float*, int64_t, int64_t, double, double, double, double, double, bool);
template void adam_step<double>(double*, double*, double*, const double*, int64_t, int64_t, double, double, double, double, double, bool);

}  // namespace fg
