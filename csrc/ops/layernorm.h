// Layer normalization over the last axis, forward and backward side by side.
//   x, y, dy, dx: (N, C) row-major; weight, bias, dweight, dbias: (C,); mean, rstd: (N,).
// weight/bias may be nullptr (treated as ones/zeros). Backward overwrites (=) dx, dweight, dbias.
// Rows are independent and split over threads; dweight/dbias are reduced from per-thread
// partials combined in thread order, so results are reproducible for a given thread count
// (the float32 SIMD paths sum fixed row slices in slice order: the same for any thread count).
#pragma once
#include <cstdint>

#include "simd/dispatch.h"

namespace fg {

// y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps) (biased variance)
template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                       int64_t N, int64_t C, double eps);

// xhat = (x - mean) * rstd, g = dy * weight
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat));  dweight = sum_rows dy*xhat;  dbias = sum_rows dy
template <typename T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight,
                        const T* mean, const T* rstd, int64_t N, int64_t C);

// float32 versions (layernorm_body.h, compiled per ISA); grain: rows per thread below which fewer threads run
FG_SIMD_DECLARE(
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t N, int64_t C, double eps, int64_t grain);
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        int64_t grain);
)

}  // namespace fg
