// Fused in-place optimizer updates (one pass over the buffers), matching torch.optim.
//   param, grad, m (momentum / exp_avg), v (exp_avg_sq): (N,) flat, contiguous, same dtype.
// param, m, v are updated in place; grad is only read.
#pragma once
#include <cstdint>

#include "simd/dispatch.h"

namespace fg {

// torch.optim.SGD. m may be null when momentum == 0. first_step: m = g (torch's buffer init).
template <typename T>
void sgd_step(T* param, T* m, const T* grad, int64_t N, double lr, double momentum, double weight_decay,
              bool nesterov, double dampening, bool first_step);

// torch.optim.AdamW (decoupled_wd=true) or torch.optim.Adam (L2 decay added to grad). step >= 1.
template <typename T>
void adam_step(T* param, T* m, T* v, const T* grad, int64_t N, int64_t step, double lr, double beta1,
               double beta2, double eps, double weight_decay, bool decoupled_wd);

// sum_i x[i]^2 in double (clip_grad_norm_'s total norm). [0, n) is cut into fixed chunks of
// kSumSquaresChunk elements, each summed on its own, and the chunk sums are added in order: the
// result does not depend on the thread count.
constexpr int64_t kSumSquaresChunk = int64_t(1) << 16;
template <typename T>
double sum_squares(const T* x, int64_t n);

// float32 versions (optim_body.h, compiled per ISA): sum_squares of one chunk (floats widened to
// double), and the updates with the same arguments and math as above.
FG_SIMD_DECLARE(
double sum_squares_chunk(const float* x, int64_t n);
void adam_step(float* param, float* m, float* v, const float* grad, int64_t N, int64_t step, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool decoupled_wd);
void sgd_step(float* param, float* m, const float* grad, int64_t N, double lr, double momentum, double weight_decay,
              bool nesterov, double dampening, bool first_step);
)

}  // namespace fg
