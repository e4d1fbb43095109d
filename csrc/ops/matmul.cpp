// Portable matmul: the naive reference kernel, the portable 4x8 micro-kernel for the blocked
// driver (matmul_impl.h), the batch loop and the run-time dispatch to the float32 vector paths
// (vec_sgemm below), and the linear layer built on top.
#include "ops/matmul.h"

#include <type_traits>

#include "core/cpu.h"
#include "core/parallel.h"
#include "ops/gemv.h"
#include "ops/matmul_impl.h"

namespace fg {

namespace {

#ifdef FUSEGRAD_HAVE_AVX2_BUILD
// The float32 GEMM of the active vector path, or nullptr on the portable path (one place to
// add another kernel, e.g. a skinny-M one, in front of the GEMMs).
using SgemmFn = void (*)(float*, const float*, const float*, int64_t, int64_t, int64_t, bool, bool, bool, int,
                         const GemmExtras&);
SgemmFn vec_sgemm() {
  if (use_avx512()) return avx512::sgemm;
  if (use_avx2()) return avx2::sgemm;
  return nullptr;
}
#endif

template <typename T>
struct PortableKernel {
  static constexpr int MR = 4, NR = 8;
  // c[0:MR, 0:NR] (= or +=) sum_p ap[p][0:MR]^T bp[p][0:NR]
  static void run(int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc, bool add) {
    T acc[MR][NR] = {};
    for (int64_t p = 0; p < kc; ++p) {
      const T* a = ap + p * MR;
      const T* b = bp + p * NR;
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NR; ++q) acc[r][q] += a[r] * b[q];
    }
    for (int r = 0; r < MR; ++r)
      for (int q = 0; q < NR; ++q) c[r * ldc + q] = add ? c[r * ldc + q] + acc[r][q] : acc[r][q];
  }
};

template <typename T>
void gemm_one(T* c, const T* a, const T* b, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
              bool accumulate, int nthreads) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (SgemmFn f = vec_sgemm()) return f(c, a, b, M, N, K, ta, tb, accumulate, nthreads, GemmExtras{});
  }
#endif
  gemm_blocked<T, PortableKernel<T>, 128, 256, 2048>(c, a, view_a(a, M, K, ta), b, view_b(b, K, N, tb), M,
                                                     N, K, accumulate, nthreads);
}

}  // namespace

template <typename T>
void matmul(T* c, const T* a, const T* b, int64_t batch, int64_t M, int64_t N, int64_t K, bool trans_a,
            bool trans_b, bool accumulate, int64_t stride_a, int64_t stride_b) {
  if (batch <= 0) return;
  const int nt = get_num_threads();
  // Many small matrices: one thread per matrix beats splitting each one.
  if (batch >= nt && nt > 1 && 2.0 * M * N * K < 2.0 * 128 * 128 * 128) {
    parallel_for(batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i)
        gemm_one(c + i * M * N, a + i * stride_a, b + i * stride_b, M, N, K, trans_a, trans_b, accumulate, 1);
    });
    return;
  }
  for (int64_t i = 0; i < batch; ++i)
    gemm_one(c + i * M * N, a + i * stride_a, b + i * stride_b, M, N, K, trans_a, trans_b, accumulate, nt);
}

template <typename T>
void matmul_naive(T* c, const T* a, const T* b, int64_t batch, int64_t M, int64_t N, int64_t K, bool trans_a,
                  bool trans_b, bool accumulate, int64_t stride_a, int64_t stride_b) {
  for (int64_t s = 0; s < batch; ++s) {
    const T* A = a + s * stride_a;
    const T* B = b + s * stride_b;
    T* C = c + s * M * N;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        T acc = 0;
        for (int64_t p = 0; p < K; ++p)
          acc += (trans_a ? A[p * M + i] : A[i * K + p]) * (trans_b ? B[j * K + p] : B[p * N + j]);
        C[i * N + j] = accumulate ? C[i * N + j] + acc : acc;
      }
  }
}

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* bias, int64_t N, int64_t IN, int64_t OUT,
                    const T* residual) {
  // float32 with few rows (decode steps): stream w once, unpacked (gemv.h)
  if constexpr (std::is_same_v<T, float>) {
    if (N <= kGemvMaxRows) return gemv(y, x, w, bias, N, IN, OUT, residual);
  }
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  // float32 vector paths: the bias is added where the kernel first stores each C tile and the
  // residual where it stores it last (no extra passes over y)
  if constexpr (std::is_same_v<T, float>) {
    if (SgemmFn f = vec_sgemm())
      return f(y, x, w, N, OUT, IN, false, true, false, get_num_threads(),
               GemmExtras{/*bias=*/bias, /*a_row_sums=*/nullptr, /*residual=*/residual});
  }
#endif
  // y = bias (broadcast over rows), then y += x @ w^T
  if (bias) {
    parallel_for(N, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t o = 0; o < OUT; ++o) y[i * OUT + o] = bias[o];
    });
  }
  matmul<T>(y, x, w, 1, N, OUT, IN, false, true, bias != nullptr, 0, 0);
  if (residual) {
    parallel_for(N, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b * OUT; i < e * OUT; ++i) y[i] = residual[i] + y[i];
    });
  }
}

template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t IN,
                     int64_t OUT) {
  matmul<T>(dx, dy, w, 1, N, IN, OUT, false, false, false, 0, 0);  // dx (N,IN) = dy (N,OUT) @ w (OUT,IN)
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  // float32 vector paths: db is summed while dW's GEMM packs dy^T (no extra pass over dy), same bits.
  if constexpr (std::is_same_v<T, float>) {
    if (SgemmFn f = vec_sgemm())
      return f(dw, dy, x, OUT, IN, N, true, false, false, get_num_threads(),
               GemmExtras{/*bias=*/nullptr, /*a_row_sums=*/db, /*residual=*/nullptr});
  }
#endif
  matmul<T>(dw, dy, x, 1, OUT, IN, N, true, false, false, 0, 0);   // dw (OUT,IN) = dy^T @ x
  // db[o] = sum_i dy[i, o]; each thread owns a range of columns, rows summed in order.
  parallel_for(OUT, 64, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) db[o] = T(0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t o = b; o < e; ++o) db[o] += dy[i * OUT + o];
  });
}

#define FG_INST(T)                                                                                      \
  template void matmul<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, bool, bool, bool,  \
                          int64_t, int64_t);                                                             \
  template void matmul_naive<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, bool, bool,  \
                                bool, int64_t, int64_t);                                                 \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, const T*); \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);
FG_INST(float)
FG_INST(double)
#undef FG_INST

}  // namespace fg
