// Fused in-place optimizer updates (one pass over the buffers), matching torch.optim.
//   param, grad, m (momentum / exp_avg), v (exp_avg_sq): (N,) flat, contiguous, same dtype.
// param, m, v are updated in place; grad is only read.
#pragma once
#include <cstdint>

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

namespace avx2 {
// float32 sum_squares: floats widened to double, 16 per step in four 4-lane accumulators.
double sum_squares_chunk(const float* x, int64_t n);
// float32 AdamW/Adam with AVX2+FMA (optim_avx2.cpp); same arguments and math as adam_step.
void adam_step(float* param, float* m, float* v, const float* grad, int64_t N, int64_t step, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool decoupled_wd);
}  // namespace avx2

}  // namespace fg
