// One decode step of a GPT (models/gpt.py) in one call: every row of the batch feeds one token
// and gets the logits of the next, reading the key/value cache its earlier tokens left.
// The Python layer would cost ~10 autograd ops x ~10 us per layer per token; here a step is
// one call, so a decode step is its weight bytes (the skinny products of gemv.h) and little else.
//   ids, pos: (B,) int64: row b's token and its position (= the number of tokens already in its
//             cache: rows of different lengths decode side by side, no padding, no mask)
//   k_cache[l], v_cache[l]: (Bmax, Hkv, S, D) float32, appended in place at slot pos[b]
//   logits: (B, V) float32, overwritten
// The block is the training forward's (pre-LayerNorm, fused residuals, tanh GELU, rotary or
// learned positions, grouped-query heads) on the same kernels: layernorm_forward, gelu_forward,
// decode_attention (gemv.h: one query row per head against the first pos[b] + 1 cache slots;
// the fused training kernel transposes all of K into scratch and forks threads per call),
// and linear_forward (float32 weights: the skinny path for B <= 16) or gemv_bf16 (bf16 weights).
#pragma once
#include <cstdint>
#include <vector>

namespace fg {

struct DecodeMatrix {
  const void* w = nullptr;     // (out, in): float32, or bf16 bits (uint16) when bf16
  const float* b = nullptr;    // (out,) or nullptr
  bool bf16 = false;
  int64_t out = 0, in = 0;
};

struct DecodeLayer {
  const float *ln1_w = nullptr, *ln1_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr;
  DecodeMatrix attn, proj, fc, fc2;   // c_attn (W, C), attn.c_proj (C, C), c_fc (F, C), mlp.c_proj (C, F)
  float *k_cache = nullptr, *v_cache = nullptr;
};

struct DecodeModel {
  int64_t C = 0, H = 0, Hkv = 0, D = 0, V = 0, S = 0, Bmax = 0;
  double eps = 1e-5;
  const float* wte = nullptr;                            // (V, C) token embedding
  const float* wpe = nullptr;                            // (S, C) learned positions, or nullptr
  const float *rope_cos = nullptr, *rope_sin = nullptr;  // (S, D/2) rotary tables, or nullptr
  std::vector<DecodeLayer> layers;
  const float *lnf_w = nullptr, *lnf_b = nullptr;
  DecodeMatrix head;                                     // (V, C), no bias
};

// ids/pos checked by the caller (0 <= ids < V, 0 <= pos < S, B <= Bmax).
void gpt_decode_step(float* logits, const DecodeModel& m, const int64_t* ids, const int64_t* pos, int64_t B);

}  // namespace fg
