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
#pragma once
#include <cstdint>

namespace fg {

template <typename T>
void attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t H,
                       int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, T scale);
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* do_, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                        int64_t S, int64_t D, bool causal, T scale);

template <typename T>
void attention_naive_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B,
                             int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal,
                             T scale);

namespace avx2 {
void attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                       bool causal, float scale);
void attention_backward(float* dq, float* dk, float* dv, const float* do_, const float* q,
                        const float* k, const float* v, const float* o, const float* lse,
                        int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D,
                        bool causal, float scale);
}  // namespace avx2

}  // namespace fg
