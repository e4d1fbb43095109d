// The CUDA kernels' host entry points (defined in the <op>.cu files, called by module.cpp).
// Every pointer is device memory, float32 unless named otherwise, C-contiguous; the binding layer
// (module.cpp + python/fusegrad/cuda.py) has checked shapes, dtypes and devices. All launch on
// `stream` and return without synchronizing. Shapes and the overwrite (=) rule as csrc/ops/*.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fg::cuda {

// activations.cu: (N,) flat
enum class Act { relu, gelu_tanh, gelu_erf, sigmoid, tanh };
void act_forward(Act a, float* y, const float* x, int64_t N, cudaStream_t s);
// relu/gelu: from the INPUT x; sigmoid/tanh: from the OUTPUT y (passed as x)
void act_backward(Act a, float* dx, const float* dy, const float* x, int64_t N, cudaStream_t s);

// layernorm.cu: x, y, dy, dx (N, C); weight, bias, dweight, dbias (C,) (weight/bias may be null);
// mean, rstd (N,). Backward needs `work` of layernorm_workspace_floats(N, C) floats; dweight and
// dbias are summed over fixed row chunks in chunk order (deterministic).
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps, cudaStream_t s);
int64_t layernorm_workspace_floats(int64_t N, int64_t C);
void layernorm_backward(float* dx, float* dweight, float* dbias, float* work, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        cudaStream_t s);

// softmax_xent.cu: (N, V) rows; one block per row.
void softmax_forward(float* y, const float* x, int64_t N, int64_t V, bool log, cudaStream_t s);
void softmax_backward(float* dx, const float* dy, const float* y, int64_t N, int64_t V, bool log, cudaStream_t s);
// loss (1,) = mean over non-ignored rows of lse - x[target] (NaN when all are ignored), summed in
// double in a fixed order; lse (N,). `work` holds N floats. targets int32 (ids32) or int64 (ids64).
void cross_entropy_forward(float* loss, float* lse, float* work, const void* targets, bool t64, int64_t ignore_index,
                           const float* logits, int64_t N, int64_t V, cudaStream_t s);
// dlogits = dloss / count * (softmax - onehot), ignored rows 0; count = non-ignored rows. Probabilities never stored.
void cross_entropy_backward(float* dlogits, const float* logits, const void* targets, bool t64, const float* lse,
                            float dloss, int64_t count, int64_t ignore_index, int64_t N, int64_t V, cudaStream_t s);

// embedding.cu: ids (N,) int32/int64 in [0, V); table, dtable (V, C); out, dout (N, C).
void embedding_forward(float* out, const void* ids, bool i64, const float* table, int64_t N, int64_t C,
                       cudaStream_t s);
// dtable += rows of dout (the caller zeroes dtable for '='); each column's sums run in order of
// n in one thread: the same bits on every run.
void embedding_backward(float* dtable, const float* dout, const void* ids, bool i64, int64_t N, int64_t C,
                        cudaStream_t s);

// optim.cu: (N,) flat; param, m, v in place.
void adam_step(float* param, float* m, float* v, const float* grad, int64_t N, int64_t step, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool decoupled, cudaStream_t s);
void sgd_step(float* param, float* m, const float* grad, int64_t N, double lr, double momentum,
              double weight_decay, bool nesterov, double dampening, bool first_step, cudaStream_t s);
// out (1,) double = sum x^2, over fixed chunks summed in order; `work` holds
// sum_squares_workspace(N) doubles.
int64_t sum_squares_workspace(int64_t N);
void sum_squares(double* out, double* work, const float* x, int64_t N, cudaStream_t s);

// attention.cu: flash-style (online softmax, no T x S buffer), causal masks aligned bottom-right.
// Element (b, h, t, d) of an operand lives at base[b*sb + h*sh + t*st + d]; lse (B, H, T) contiguous.
struct Heads {
  int64_t sb, sh, st;
};
constexpr int kAttnMaxD = 256;
void attention_forward(float* o, Heads Lo, float* lse, const float* q, Heads Lq, const float* k, Heads Lk,
                       const float* v, Heads Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                       int64_t D, bool causal, float scale, cudaStream_t s);
// `work` holds B*H*T floats (the rows' sum(do * o)).
void attention_backward(float* dq, Heads Ldq, float* dk, Heads Ldk, float* dv, Heads Ldv, float* work,
                        const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k, Heads Lk,
                        const float* v, Heads Lv, const float* o, Heads Lo, const float* lse, int64_t B,
                        int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D, bool causal, float scale,
                        cudaStream_t s);
// delta (B*H*T,) = the rows' sum(do * o), the first step of attention_backward
void attention_delta(float* delta, const float* dO, Heads Ldo, const float* o, Heads Lo, int64_t B, int64_t H,
                     int64_t T, int64_t D, cudaStream_t s);

// attention_tc.cu: the same operations with 16-bit tensor-core products (WMMA, sm_80 and later),
// one kernel source for both types: q, k, v and dO rounded to bf16 (the CPU kernels' bf16=True
// arithmetic) or fp16, P and scale * dS rounded to that type before their products, softmax
// statistics, sums and outputs float32. fp16 scales dO by a power of two into its range and the
// gradients back (attention_tc.cu's header). Head sizes for which attention_tc_supported(D); the
// arguments as attention_forward / attention_backward, except that with fp16 the backward's `work`
// holds B*H*T + 1 floats (the last: the max |dO|).
enum class TcType : int { bf16 = 0, fp16 = 1 };
bool attention_tc_supported(int64_t D);
void attention_forward_tc(float* o, Heads Lo, float* lse, const float* q, Heads Lq, const float* k, Heads Lk,
                          const float* v, Heads Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                          int64_t D, bool causal, float scale, cudaStream_t s, TcType t);
void attention_backward_tc(float* dq, Heads Ldq, float* dk, Heads Ldk, float* dv, Heads Ldv, float* work,
                           const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k, Heads Lk,
                           const float* v, Heads Lv, const float* o, Heads Lo, const float* lse, int64_t B,
                           int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D, bool causal, float scale,
                           cudaStream_t s, TcType t);

// bias / residual epilogue of linear (the product itself is cuBLAS's): y (N, O) += bias[o] (+ residual);
// db (O,) = column sums of dy (N, O), over fixed row chunks in order; `work` holds
// colsum_workspace_floats(N, O) floats.
void add_bias_residual(float* y, const float* bias, const float* residual, int64_t N, int64_t O, cudaStream_t s);
int64_t colsum_workspace_floats(int64_t N, int64_t O);
void column_sums(float* out, float* work, const float* x, int64_t N, int64_t O, cudaStream_t s);

// matmul.cu: products through cuBLASLt (dlopen'ed by lt_load from the first of `candidates` that
// loads and has the entry points; a RuntimeError lists every path tried and why it failed).
// D (batch, M, N) row-major = op(A) op(B) (+ D when accumulate) with op(A) (M, K), op(B) (K, N);
// A is stored (M, K), or (K, M) when ta; B (K, N), or (N, K) when tb; batch strides in elements
// (0: one matrix shared by the batch). ab: the operands' type; cd: the output's (f32 for bf16/f16
// operands with float32 output). Float32 sums throughout; TF32 only when tf32 is set.
// Epilogues (batch 1 only; only bias with accumulate):  bias: D[m, n] += bias[n] (bias of type cd);
//   gelu_bias: aux = AB + bias, D = gelu_tanh(aux) (aux (M, N) of type cd);
//   dgelu_bgrad: D = AB * gelu_tanh'(aux), dbias[n] = sum over m of D[m, n];
//   bgradb: dbias[m] = sum over k of op(A)[m, k] (the bias gradient of a weight-gradient product).
// Returns "" when run, else why cuBLASLt has no algorithm for it (the caller falls back).
enum class Dt : int { f32 = 0, f16 = 1, bf16 = 2 };
enum class Epi : int { none = 0, bias = 1, gelu_bias = 2, dgelu_bgrad = 3, bgradb = 4 };
struct Gemm {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0, batch = 1, sa = 0, sb = 0, sd = 0;
  Dt ab = Dt::f32, cd = Dt::f32;
  Epi epi = Epi::none;
  bool accumulate = false, tf32 = false;
};
// What one product asks of cuBLASLt (column-major): its ops, m n k, the layouts of its A (our b),
// B (our a) and C = D, the epilogue and compute type (matmul.cu's header explains the mapping).
struct LtLayout {
  Dt dt;
  int64_t rows, cols, ld, batch, stride;
};
struct LtProblem {
  int32_t opa, opb, compute;
  int64_t m, n, k;
  LtLayout a, b, d;
  uint32_t epilogue;
  int64_t aux_ld;  // 0: no aux matrix
};
LtProblem lt_problem(const Gemm& g);
std::string lt_load(const std::vector<std::string>& candidates);
bool lt_loaded();
std::string lt_path();
size_t lt_version();
std::string lt_key(const Gemm& g, const uint32_t align[3], int device);  // the plan cache's key
size_t lt_plan_count();
void lt_clear_plans();
std::string lt_matmul(const Gemm& g, void* d, const void* a, const void* b, const void* bias, void* aux, void* dbias,
                      cudaStream_t s);
// float32 <-> bfloat16 bits (math.h's rounding: nearest, ties to even)
void to_bf16(uint16_t* y, const float* x, int64_t n, cudaStream_t s);
void bf16_to_f32(float* y, const uint16_t* x, int64_t n, cudaStream_t s);

}  // namespace fg::cuda
