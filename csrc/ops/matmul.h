// Matrix multiplication: C (=|+=) op(A) @ op(B), batched, float32/float64.
//   a: (batch?, M, K) row-major, or (batch?, K, M) when trans_a
//   b: (batch?, K, N) row-major, or (batch?, N, K) when trans_b
//   c: (batch, M, N) row-major; overwritten (=) unless `accumulate`, then c += op(A) @ op(B).
// Batch strides of 0 broadcast one matrix over the batch. All pointers contiguous per matrix.
//
// matmul():       the fast path. A BLIS-style design (csrc/ops/matmul_impl.h): B is packed into
//                 KC x NR panels shared by all threads, each thread packs MC x KC blocks of A into
//                 MR x KC panels and runs a register-blocked MR x NR micro-kernel over them.
//                 Portable micro-kernel here (4x8). The float32 vector paths (matmul_body.h,
//                 instantiated by matmul_avx2.cpp and matmul_avx512.cpp) pack B (and A, unless
//                 each tile packs its own rows of A into L2) once, then threads take tiles of C,
//                 shaped per problem, dynamically (AVX2 6x16 asm / AVX-512 12x32 micro-kernel,
//                 C tile kept in L2 across K; very long K runs in accumulated chunks).
// matmul_naive(): a plain triple loop kept for tests; obviously correct, slow.
#pragma once
#include <cstdint>

namespace fg {

template <typename T>
void matmul(T* c, const T* a, const T* b, int64_t batch, int64_t M, int64_t N, int64_t K,
            bool trans_a, bool trans_b, bool accumulate, int64_t stride_a, int64_t stride_b);

template <typename T>
void matmul_naive(T* c, const T* a, const T* b, int64_t batch, int64_t M, int64_t N, int64_t K,
                  bool trans_a, bool trans_b, bool accumulate, int64_t stride_a, int64_t stride_b);

// Linear layer in PyTorch's layout, built on matmul.
//   y: (N, OUT) = x: (N, IN) @ w^T + bias;  w: (OUT, IN); bias: (OUT,) or nullptr.  y is overwritten.
//   residual: (N, OUT) or nullptr: y = residual + (x @ w^T + bias), the bits of adding it after
//   (a transformer block's skip connection, added where the kernel stores y: no pass of its own).
template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* bias, int64_t N, int64_t IN, int64_t OUT,
                    const T* residual = nullptr);
// dx (N, IN) = dy @ w;  dw (OUT, IN) = dy^T @ x;  db (OUT,) = sum over rows of dy.  All overwritten (=).
template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t IN,
                     int64_t OUT);

// ---- the float32 GEMM of the vector paths (matmul_body.h, compiled once per ISA) ----------
// Work done where the GEMM already holds the data. An aggregate without member initializers
// (GemmExtras{} is all null) so that no constructor is emitted in the ISA translation units.
struct GemmExtras {
  // (N,): c = bias (broadcast over rows) + op(A) @ op(B), bit-identical to filling c with bias
  // and accumulating. Not with accumulate.
  const float* bias;
  // (M,): sum over K of op(A)(i, :), added in K order starting from 0 (the bits of a plain loop).
  // Summed while the tiles pack their own rows of A (then a linear layer's bias gradient costs
  // no pass over dy), else by a plain pass after the product.
  float* a_row_sums;
  // (M, N), row stride N: added to each C element after its product (and bias or accumulated c)
  // is complete, where C is stored for the last time: the bits of adding it in a pass afterwards.
  const float* residual;
};
// Cache blocking of one ISA's GEMM on this CPU, chosen once at start-up (as BLIS keeps a context
// per architecture): K block, tile rows (a multiple of the micro-tile's MR, at most 512) and
// tile columns (a multiple of NR).
struct GemmBlocking {
  int64_t kc, mc, tw;
};
// float32 fast path (same contract as fg::matmul for one matrix, no batch), per ISA.
namespace avx2 {
void sgemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
           bool trans_b, bool accumulate, int nthreads, const GemmExtras& extras = GemmExtras{});
}  // namespace avx2
namespace avx512 {
void sgemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
           bool trans_b, bool accumulate, int nthreads, const GemmExtras& extras = GemmExtras{});
}  // namespace avx512

}  // namespace fg
