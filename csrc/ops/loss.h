// Mean squared error, forward and backward.
//   pred, target, dpred: (N,) flat, contiguous.
// mse_forward returns mean((pred - target)^2) accumulated in double (fixed blocks summed in
// order, so the result does not depend on the thread count). mse_backward overwrites (=) dpred.
#pragma once
#include <cstdint>

namespace fg {

template <typename T> double mse_forward(const T* pred, const T* target, int64_t N);
template <typename T> void mse_backward(T* dpred, const T* pred, const T* target, double dloss, int64_t N);

}  // namespace fg
