// The CUDA kernels' host entry points (defined in the <op>.cu files, called by module.cpp).
// Every pointer is device memory, float32 unless named otherwise, C-contiguous; the binding layer
// (module.cpp + python/fusegrad/cuda.py) has checked shapes, dtypes and devices. All launch on
// `stream` and return without synchronizing. Shapes and the overwrite (=) rule as csrc/ops/*.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

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

// attention_tc.cu: the same operations with bf16 tensor-core products (WMMA, sm_80 and later), the
// CPU kernels' bf16=True arithmetic: q, k, v and dO rounded to bf16, P and scale * dS rounded to
// bf16 before their products, softmax statistics, sums and outputs float32. Head sizes for which
// attention_tc_supported(D); the arguments as attention_forward / attention_backward.
bool attention_tc_supported(int64_t D);
void attention_forward_tc(float* o, Heads Lo, float* lse, const float* q, Heads Lq, const float* k, Heads Lk,
                          const float* v, Heads Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                          int64_t D, bool causal, float scale, cudaStream_t s);
void attention_backward_tc(float* dq, Heads Ldq, float* dk, Heads Ldk, float* dv, Heads Ldv, float* work,
                           const float* dO, Heads Ldo, const float* q, Heads Lq, const float* k, Heads Lk,
                           const float* v, Heads Lv, const float* o, Heads Lo, const float* lse, int64_t B,
                           int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D, bool causal, float scale,
                           cudaStream_t s);

// bias / residual epilogue of linear (the product itself is cuBLAS's): y (N, O) += bias[o] (+ residual);
// db (O,) = column sums of dy (N, O), over fixed row chunks in order; `work` holds
// colsum_workspace_floats(N, O) floats.
void add_bias_residual(float* y, const float* bias, const float* residual, int64_t N, int64_t O, cudaStream_t s);
int64_t colsum_workspace_floats(int64_t N, int64_t O);
void column_sums(float* out, float* work, const float* x, int64_t N, int64_t O, cudaStream_t s);

}  // namespace fg::cuda
