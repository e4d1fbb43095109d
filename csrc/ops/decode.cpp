// A GPT decode step on the existing kernels (decode.h).
#include "ops/decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/parallel.h"
#include "ops/activations.h"
#include "ops/gemv.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"

namespace fg {

namespace {

// y (B, out) = x (B, in) @ w^T + b (+ residual)
void linear(float* y, const float* x, const DecodeMatrix& w, int64_t B, const float* residual = nullptr) {
  if (w.bf16)
    gemv_bf16(y, x, static_cast<const uint16_t*>(w.w), w.b, B, w.in, w.out, residual);
  else
    linear_forward<float>(y, x, static_cast<const float*>(w.w), w.b, B, w.in, w.out, residual);
}

// Rotates heads [0, nh) of one row (head h at row + h D) by position p: the arithmetic of
// gpt.py's _rope (products rounded, then the difference / sum), so prefill and decode agree.
void rope_row(float* row, int64_t nh, int64_t D, const float* cs, const float* sn) {
  for (int64_t h = 0; h < nh; ++h) {
    float* r = row + h * D;
    for (int64_t i = 0; i < D / 2; ++i) {
      const float x1 = r[2 * i], x2 = r[2 * i + 1], c = cs[i], s = sn[i];
      const float a = x1 * c, b = x2 * s, e = x1 * s, f = x2 * c;
      r[2 * i] = a - b;
      r[2 * i + 1] = e + f;
    }
  }
}

}  // namespace

void gpt_decode_step(float* logits, const DecodeModel& m, const int64_t* ids, const int64_t* pos, int64_t B) {
  const int64_t C = m.C, H = m.H, Hkv = m.Hkv, D = m.D, S = m.S, G = H / Hkv;
  const int64_t W = (H + 2 * Hkv) * D;
  int64_t F = 0;
  for (const auto& l : m.layers) F = std::max(F, l.fc.out);
  std::vector<float> x(B * C), x2(B * C), h(B * C), qkv(B * W), o(B * C), f(B * F), g(B * F), mean(B),
      rstd(B);
  // x = wte[id] + wpe[pos]
  for (int64_t b = 0; b < B; ++b) {
    const float* e = m.wte + ids[b] * C;
    const float* p = m.wpe ? m.wpe + pos[b] * C : nullptr;
    for (int64_t c = 0; c < C; ++c) x[b * C + c] = p ? e[c] + p[c] : e[c];
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  for (const DecodeLayer& l : m.layers) {
    layernorm_forward<float>(h.data(), mean.data(), rstd.data(), x.data(), l.ln1_w, l.ln1_b, B, C, m.eps);
    linear(qkv.data(), h.data(), l.attn, B);                               // (B, W) = [q | k | v]
    for (int64_t b = 0; b < B; ++b) {
      float* row = qkv.data() + b * W;
      if (m.rope_cos)
        rope_row(row, H + Hkv, D, m.rope_cos + pos[b] * (D / 2), m.rope_sin + pos[b] * (D / 2));
      for (int64_t j = 0; j < Hkv; ++j) {                                   // append k, v at slot pos[b]
        const int64_t at = ((b * Hkv + j) * S + pos[b]) * D;
        std::memcpy(l.k_cache + at, row + (H + j) * D, D * sizeof(float));
        std::memcpy(l.v_cache + at, row + (H + Hkv + j) * D, D * sizeof(float));
      }
    }
    // one query row per head against the row's pos + 1 cached keys: (row, kv head) tasks, each
    // on its G query heads (contiguous in the qkv row and in o), one thread per task
    int64_t keys = 0;
    for (int64_t b = 0; b < B; ++b) keys += pos[b] + 1;
    const int64_t per_task = std::max<int64_t>(1, keys / B * G * D);  // multiply-adds, roughly
    parallel_for(B * Hkv, std::max<int64_t>(1, (int64_t{1} << 15) / per_task), [&](int64_t t0, int64_t t1) {
      std::vector<float> p(G * S);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / Hkv, j = t % Hkv;
        const int64_t kv = (b * Hkv + j) * S * D;
        decode_attention(o.data() + b * C + j * G * D, qkv.data() + b * W + j * G * D, l.k_cache + kv,
                         l.v_cache + kv, G, pos[b] + 1, D, scale, p.data());
      }
    });
    linear(x2.data(), o.data(), l.proj, B, x.data());                      // x2 = x + proj(o)
    layernorm_forward<float>(h.data(), mean.data(), rstd.data(), x2.data(), l.ln2_w, l.ln2_b, B, C, m.eps);
    linear(f.data(), h.data(), l.fc, B);
    gelu_forward<float>(g.data(), f.data(), B * l.fc.out, true);
    linear(x.data(), g.data(), l.fc2, B, x2.data());                       // x = x2 + mlp
  }
  layernorm_forward<float>(h.data(), mean.data(), rstd.data(), x.data(), m.lnf_w, m.lnf_b, B, C, m.eps);
  linear(logits, h.data(), m.head, B);
}

}  // namespace fg
