// Skinny products for generation: y (M, OUT) = x (M, IN) @ w^T + bias (+ residual), M small.
//   x: (M, IN) row-major float32; w: (OUT, IN) row-major (PyTorch's Linear layout), float32 or
//   bfloat16 (uint16 bit patterns, the top half of a float32); bias: (OUT,) or nullptr;
//   residual: (M, OUT) or nullptr: y = residual + (x @ w^T + bias). y is overwritten (=).
// A decode step multiplies one (or a few) rows of activations by every weight matrix, so the
// product is bound by the bytes of w, not by FLOPs: w is streamed once in its stored layout
// (no packing, which costs more than the product at M = 1), threads split the output columns,
// and each thread keeps RW rows of w in flight against up to RX rows of x (gemv_body.h).
// Every y[m, o] is one vector accumulator over k (lanes k mod L, the tail zero-padded through
// the same math) summed by a fixed tree, then + bias, then residual +: its bits depend on the
// ISA path only, not on M, the row's place in a tile or the thread count. bf16 weights are
// widened in registers (exact), so a bf16 product equals the float32 product of the same
// (bf16-representable) weights, bit for bit; except on AVX512_BF16 CPUs (below), where the
// avx512 path multiplies bf16 pairs directly.
#pragma once
#include <cstdint>

#include "simd/dispatch.h"

namespace fg {

// linear_forward takes the skinny path for float32 products with at most this many rows.
constexpr int64_t kGemvMaxRows = 16;

void gemv(float* y, const float* x, const float* w, const float* bias, int64_t M, int64_t IN, int64_t OUT,
          const float* residual = nullptr);
void gemv_bf16(float* y, const float* x, const uint16_t* w, const float* bias, int64_t M, int64_t IN,
               int64_t OUT, const float* residual = nullptr);

// Attention of G query rows against the S cached keys/values of one kv head (a decode step):
//   o (G, D) = softmax(scale q K^T) V;  q: (G, D), k, v: (S, D) row-major (S >= 1); p: (G, S) scratch.
// The scores are the skinny product with the keys as weight rows (the same lanes and sums),
// the softmax runs in key order, and o sums p_s v_s in key order per lane. Single-threaded:
// the caller spreads (row, kv head) tasks over threads.
void decode_attention(float* o, const float* q, const float* k, const float* v, int64_t G, int64_t S, int64_t D,
                      float scale, float* p);

// bf16 <-> float32: round to nearest even (NaN stays a quiet NaN); widening is exact.
void bf16_from_float(uint16_t* out, const float* in, int64_t n);
void bf16_to_float(float* out, const uint16_t* in, int64_t n);

// The AVX512_BF16 path of gemv_bf16 (gemv_avx512bf16.cpp), taken on the avx512 path of CPUs with
// AVX512_BF16 (bf16_path() == "avx512_bf16"): VDPBF16PS on x split into two bf16 halves, so y is
// within 2^-16 sum|x||w| (plus float32 sums) of the float32 product, not bit-equal to it.
namespace avx512_bf16 {
// xs (M, 2, Kp): row m's hi = bf16(x[m]) then lo = bf16(x[m] - hi), zero past K (Kp: K rounded up to 32)
void split_rows(uint16_t* xs, const float* x, int64_t M, int64_t K, int64_t Kp);
// y (M, N) = (hi + lo) @ w^T + bias (+ residual); w (N, K) bf16 bits
void gemv_rows(float* y, const uint16_t* xs, const uint16_t* w, const float* bias, int64_t M, int64_t K, int64_t Kp,
               int64_t N, const float* residual);
}  // namespace avx512_bf16

FG_SIMD_DECLARE(
void decode_attention(float* o, const float* q, const float* k, const float* v, int64_t G, int64_t S, int64_t D,
                      float scale, float* p);
void gemv(float* y, const float* x, const float* w, const float* bias, int64_t M, int64_t IN, int64_t OUT,
          const float* residual);
void gemv_bf16(float* y, const float* x, const uint16_t* w, const float* bias, int64_t M, int64_t IN,
               int64_t OUT, const float* residual);
)

}  // namespace fg
