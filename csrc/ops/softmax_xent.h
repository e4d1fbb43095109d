// Softmax, log-softmax and cross-entropy over the last axis, forward and backward side by side.
//   x, y, dy, dx, logits, dlogits: (N, V) row-major; targets, lse, loss_rows: (N,).
// Backward kernels overwrite (=) their outputs. Every row subtracts its max before exp, so
// logits of +-1e4 are exact-range safe.
#pragma once
#include <cstdint>

#include "simd/dispatch.h"

namespace fg {

// y = exp(x - lse(x))
template <typename T> void softmax_forward(T* y, const T* x, int64_t N, int64_t V);
// dx = y * (dy - sum(dy * y))
template <typename T> void softmax_backward(T* dx, const T* dy, const T* y, int64_t N, int64_t V);
// y = x - lse(x)
template <typename T> void log_softmax_forward(T* y, const T* x, int64_t N, int64_t V);
// dx = dy - exp(y) * sum(dy)
template <typename T> void log_softmax_backward(T* dx, const T* dy, const T* y, int64_t N, int64_t V);

// Per row: lse[r] = logsumexp(logits[r]); loss_rows[r] = lse[r] - logits[r, targets[r]], or 0
// where targets[r] == ignore_index. Returns the mean over non-ignored rows, summed in row
// order in double (NaN when every row is ignored, as PyTorch). Targets were range-checked.
template <typename T, typename I>
double cross_entropy_forward(T* lse, const T* logits, const I* targets, int64_t ignore_index,
                             int64_t N, int64_t V);
// dlogits[r] = scale * (softmax(logits[r]) - onehot(targets[r])), scale = dloss / count;
// ignored rows (and every row when count == 0) get 0. Probabilities are never stored.
template <typename T, typename I>
void cross_entropy_backward(T* dlogits, const T* logits, const I* targets, const T* lse,
                            double dloss, int64_t ignore_index, int64_t N, int64_t V);

// float32 SIMD kernels (softmax_xent_body.h, compiled per ISA in softmax_xent_<isa>.cpp) over rows
// [r0, r1) of (N, V) arrays, same math and NaN/inf semantics as above.
FG_SIMD_DECLARE(
void softmax_forward_rows(float* y, const float* x, int64_t r0, int64_t r1, int64_t V);
void softmax_backward_rows(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1, int64_t V);
void log_softmax_forward_rows(float* y, const float* x, int64_t r0, int64_t r1, int64_t V);
void log_softmax_backward_rows(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1, int64_t V);
// one row, one read of x: lse = m + log_s; m is NaN when the row holds a NaN, log_s = 0 when m is not finite
void row_lse(const float* x, int64_t V, float* m, float* log_s);
// one row of the cross-entropy gradient: d = scale * (exp(x - lse) - onehot(t))
void xent_grad_row(float* d, const float* x, int64_t V, float lse, float scale, int64_t t);
)

}  // namespace fg
