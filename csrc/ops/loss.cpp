// Portable MSE kernels.
#include "ops/loss.h"

#include <vector>

#include "core/parallel.h"

namespace fg {

namespace {
constexpr int64_t kBlock = 1 << 14;  // fixed reduction blocks: thread-count independent sums
constexpr int64_t kGrain = 1 << 15;
}

template <typename T>
double mse_forward(const T* pred, const T* target, int64_t N) {
  if (N == 0) return 0.0;
  const int64_t nb = (N + kBlock - 1) / kBlock;
  std::vector<double> part(nb, 0.0);
  parallel_for(nb, 4, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t i0 = k * kBlock, i1 = i0 + kBlock < N ? i0 + kBlock : N;
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t i = i0;
      for (; i + 4 <= i1; i += 4) {
        double d0 = double(pred[i]) - double(target[i]), d1 = double(pred[i + 1]) - double(target[i + 1]);
        double d2 = double(pred[i + 2]) - double(target[i + 2]), d3 = double(pred[i + 3]) - double(target[i + 3]);
        s0 += d0 * d0; s1 += d1 * d1; s2 += d2 * d2; s3 += d3 * d3;
      }
      for (; i < i1; ++i) { double d = double(pred[i]) - double(target[i]); s0 += d * d; }
      part[k] = (s0 + s1) + (s2 + s3);
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s / double(N);
}

template <typename T>
void mse_backward(T* dpred, const T* pred, const T* target, double dloss, int64_t N) {
  if (N == 0) return;
  const T scale = T(2.0 * dloss / double(N));  // dpred = 2/N * dloss * (pred - target)
  parallel_for(N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dpred[i] = scale * (pred[i] - target[i]);
  });
}

template double mse_forward<float>(const float*, const float*, int64_t);
template double mse_forward<double>(const double*, const double*, int64_t);
template void mse_backward<float>(float*, const float*, const float*, double, int64_t);
template void mse_backward<double>(double*, const double*, const double*, double, int64_t);

}  // namespace fg
