// Fused softmax attention (flash-style), forward and backward side by side.
//   q, o, do_, dq: (B, H, T, D) row-major      k, v, dk, dv: (B, Hkv, S, D) row-major
//   lse: (B, H, T)                               H % Hkv == 0 (head h reads kv head h / (H/Hkv))
// O = softmax(scale * Q K^T + mask) V. Causal masks are aligned bottom-right: query i sees
// key j iff j <= i + (S - T). A row that sees no key gets o = 0 and lse = -inf.
// Never materializes a T x S matrix: queries and keys are tiled, the softmax is online
// (running max and sum), and backward recomputes the probabilities tile by tile from lse.
// Backward kernels overwrite (=) dq, dk, dv. Every output row is summed by one task in a fixed
// order (tasks: (b, kv head) or (b, kv head, key tile); the schedule depends on the shape only),
// so results are bitwise identical for any thread count.
// attention_naive_* are the plain reference kernels (O(T*S) scratch), kept for tests.
//
// bf16 = true (float only; mixed precision, as torch.autocast and flash-attention do it): every
// operand of the matrix products is rounded to bfloat16 (round to nearest even) and the products
// are summed in float32: q, k, v and dO on entry, the probabilities P before O = P V and
// dV = P^T dO, scale * dS before dQ = dS K and dK = dS^T Q. Softmax statistics (max, sum, lse), Di
// = rowsum(dO * O) and the outputs stay float32. A product of two bf16 values is exact in float32,
// so every path computes the same function up to the order of the float32 sums. Where the CPU
// has AVX512_BF16 (avx512 path) forward and backward multiply on VDPBF16PS (attention_avx512bf16.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fg {

// Where the rows of head bh (= b * nh + h) of a (B, nh, T, D) operand live: element
// (b, h, t, d) at base[b * sb + h * sh + t * st + d].
struct HeadLayout {
  int64_t sb, sh, st;
  int64_t head(int64_t bh, int64_t nh) const { return (bh / nh) * sb + (bh % nh) * sh; }
};
// (B, nh, T, D) contiguous.
inline HeadLayout heads_contiguous(int64_t nh, int64_t T, int64_t D) { return {nh * T * D, T * D, D}; }
// Heads interleaved in the rows of a (B, T, W) activation, head h at columns [c0 + h D, c0 + h D + D).
inline HeadLayout heads_in_rows(int64_t T, int64_t W, int64_t D) { return {T * W, D, W}; }

// Attention on the packed projection of a transformer block, without head split/merge copies:
//   qkv: (B, T, (H + 2 Hkv) D) = [q heads | k heads | v heads] per row, o: (B, T, H D),
//   lse: (B, H, T); backward writes dqkv (B, T, (H + 2 Hkv) D). Same math, masks and
//   determinism as attention_forward/backward with S = T.
template <typename T>
void attention_qkv_forward(T* o, T* lse, const T* qkv, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                           int64_t D, bool causal, T scale, bool bf16 = false);
template <typename T>
void attention_qkv_backward(T* dqkv, const T* do_, const T* qkv, const T* o, const T* lse, int64_t B,
                            int64_t H, int64_t Hkv, int64_t Tq, int64_t D, bool causal, T scale,
                            bool bf16 = false);

template <typename T>
void attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t H,
                       int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, T scale, bool bf16 = false);
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* do_, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                        int64_t S, int64_t D, bool causal, T scale, bool bf16 = false);

template <typename T>
void attention_naive_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B,
                             int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal,
                             T scale);

// The float32 kernels of each vector ISA (attention_body.h, compiled once per ISA in its own
// namespace); attention.cpp takes the active one. With bf16 they round P and scale * dS to bf16
// before their products; attention.cpp has rounded q, k, v and dO already. The same declarations
// in each namespace:
#define FG_ATTENTION_ISA_DECLS                                                                      \
void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,                  \
                       int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,                   \
                       bool causal, float scale, bool bf16);                                                  \
void attention_backward(float* dq, float* dk, float* dv, const float* do_, const float* q,                    \
                        const float* k, const float* v, const float* o, const float* lse,                     \
                        int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,                  \
                        bool causal, float scale, bool bf16);                                                 \
/* dst[i] = x[i] rounded to bfloat16 (nearest even; NaN stays NaN), kept as float32, for i < n. */           \
void round_bf16(float* dst, const float* x, int64_t n);                                                       \
/* Any layouts; only for D % 16 == 0 (returns false, doing nothing, otherwise). */                            \
bool attention_forward_strided(float* o, HeadLayout Lo, float* lse, const float* q, HeadLayout Lq,            \
                               const float* k, HeadLayout Lk, const float* v, HeadLayout Lv, int64_t B,       \
                               int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal,         \
                               float scale, bool bf16);                                                       \
bool attention_backward_strided(float* dq, HeadLayout Ldq, float* dk, HeadLayout Ldk, float* dv,              \
                                HeadLayout Ldv, const float* do_, HeadLayout Ldo, const float* q,             \
                                HeadLayout Lq, const float* k, HeadLayout Lk, const float* v, HeadLayout Lv,  \
                                const float* o, HeadLayout Lo, const float* lse, int64_t B, int64_t H,        \
                                int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, float scale,      \
                                bool bf16);                                                                   \
  /* end of FG_ATTENTION_ISA_DECLS */
namespace avx2 { FG_ATTENTION_ISA_DECLS }
// Scratch from the host memory cache (core/host_cache.h) for the ISA objects, which do not
// include its header (its std::map instances would be shared with objects built with other flags).
void* attention_scratch(size_t bytes);
void attention_scratch_free(void* p, size_t bytes);
// The bf16 forward and backward on VDPBF16PS (attention_avx512bf16.cpp), any layouts, from the
// float32 inputs (they round them themselves): only for D % 16 == 0 (return false, doing nothing,
// otherwise) and only where the CPU has AVX512_BF16. attention.cpp takes them with bf16 = true on the
// avx512 path unless matmul_bf16's kernel is set to "emulated".
namespace avx512_bf16 {
bool attention_forward_dpbf16(float* o, HeadLayout Lo, float* lse, const float* q, HeadLayout Lq, const float* k,
                              HeadLayout Lk, const float* v, HeadLayout Lv, int64_t B, int64_t H, int64_t Hkv,
                              int64_t Tq, int64_t S, int64_t D, bool causal, float scale);
bool attention_backward_dpbf16(float* dq, HeadLayout Ldq, float* dk, HeadLayout Ldk, float* dv, HeadLayout Ldv,
                               const float* do_, HeadLayout Ldo, const float* q, HeadLayout Lq, const float* k,
                               HeadLayout Lk, const float* v, HeadLayout Lv, const float* o, HeadLayout Lo,
                               const float* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                               bool causal, float scale);
}
namespace avx512 { FG_ATTENTION_ISA_DECLS }
#undef FG_ATTENTION_ISA_DECLS

}  // namespace fg
