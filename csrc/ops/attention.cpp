// Portable attention kernels (float/double): the naive reference and the tiled online-softmax
// kernels from attention_impl.h, plus the run-time dispatch to the AVX2 versions.
#include "ops/attention.h"

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/cpu.h"
#include "core/parallel.h"
#include "ops/attention_impl.h"

namespace fg {

namespace {
struct StdExp {
  template <typename T>
  void operator()(T* x, int64_t n) const {
    for (int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j]);
  }
};
}  // namespace

template <typename T>
void attention_naive_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B,
                             int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal,
                             T scale) {
  const T ninf = -std::numeric_limits<T>::infinity();
  std::vector<T> s(S);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t hk = (bh / H) * Hkv + (bh % H) / (H / Hkv);
    for (int64_t i = 0; i < Tq; ++i) {
      const int64_t nv = attn_detail::visible(i, Tq, S, causal);
      T mx = ninf;
      for (int64_t j = 0; j < nv; ++j) {
        T acc = 0;
        for (int64_t d = 0; d < D; ++d) acc += q[(bh * Tq + i) * D + d] * k[(hk * S + j) * D + d];
        s[j] = acc * scale;
        mx = (s[j] > mx || s[j] != s[j]) ? s[j] : mx;  // NaN-propagating
      }
      T sum = 0;
      for (int64_t j = 0; j < nv; ++j) sum += (s[j] = std::exp(s[j] - mx));
      T* orow = o + (bh * Tq + i) * D;
      for (int64_t d = 0; d < D; ++d) {
        T acc = 0;
        for (int64_t j = 0; j < nv; ++j) acc += s[j] * v[(hk * S + j) * D + d];
        orow[d] = nv ? acc / sum : T(0);
      }
      lse[bh * Tq + i] = !nv ? ninf : mx == -ninf ? mx : mx + std::log(sum);
    }
  }
}

template <typename T>
void attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t H,
                       int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, T scale) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2()) return avx2::attention_forward(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale);
  }
#endif
  attn_detail::forward<0>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, StdExp{});
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* do_, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                        int64_t S, int64_t D, bool causal, T scale) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2())
      return avx2::attention_backward(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale);
  }
#endif
  attn_detail::backward<0>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, StdExp{});
}

#define FG_INST(T)                                                                               \
  template void attention_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t,      \
                                     int64_t, int64_t, int64_t, int64_t, bool, T);                \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,         \
                                      const T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                      int64_t, int64_t, bool, T);                                 \
  template void attention_naive_forward<T>(T*, T*, const T*, const T*, const T*, int64_t,         \
                                           int64_t, int64_t, int64_t, int64_t, int64_t, bool, T);
FG_INST(float)
FG_INST(double)
#undef FG_INST

}  // namespace fg
