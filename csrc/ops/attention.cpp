// Portable attention kernels (float/double): the naive reference and the tiled online-softmax
// kernels from attention_impl.h, plus the run-time dispatch to the AVX2 / AVX-512 versions.
// bf16 (mixed precision): q, k, v, dO are rounded to bf16 here, once, into scratch of their
// size (one pass over memory; the kernels then round P and dS themselves).
#include "ops/attention.h"

#include <cmath>
#include <limits>
#include <algorithm>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/cpu.h"
#include "core/host_cache.h"
#include "core/parallel.h"
#include "ops/matmul_bf16.h"
#define FG_ISA portable  // attention_impl.h's kernels go to fg::portable::attn_detail
#include "ops/attention_impl.h"

namespace fg {

// The float32 kernels of the active vector ISA (use_avx2() holds on the avx512 path too).
#define FG_VEC(call) (use_avx512() ? avx512::call : avx2::call)

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
      const int64_t nv = portable::attn_detail::visible(i, Tq, S, causal);
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

namespace {

// The n values of x rounded to bf16 (the operands of the bf16 products) in a block of the host
// memory cache (fresh pages would cost more than the rounding), or x itself without bf16.
template <typename T>
class Rounded {
 public:
  Rounded(const T* x, int64_t n, bool bf16) : x_(x), bytes_(static_cast<size_t>(n) * sizeof(T)) {
    if (!bf16 || n <= 0) return;
    T* d = p_ = static_cast<T*>(host_cache().allocate(bytes_));  // every element written below
    parallel_for(n, int64_t{1} << 15, [&](int64_t b, int64_t e) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
      if constexpr (std::is_same_v<T, float>) {
        if (use_avx2()) return FG_VEC(round_bf16(d + b, x + b, e - b));
      }
#endif
      for (int64_t i = b; i < e; ++i) d[i] = portable::attn_detail::to_bf16(x[i]);
    });
  }
  ~Rounded() {
    if (p_) host_cache().release(p_, bytes_);
  }
  Rounded(const Rounded&) = delete;
  Rounded& operator=(const Rounded&) = delete;
  const T* get() const { return p_ ? p_ : x_; }

 private:
  const T* x_;
  T* p_ = nullptr;
  size_t bytes_;
};

}  // namespace

void* attention_scratch(size_t bytes) { return host_cache().allocate(bytes); }
void attention_scratch_free(void* p, size_t bytes) { host_cache().release(p, bytes); }

namespace {

#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
// The bf16 forward and backward run on VDPBF16PS (attention_avx512bf16.cpp) here and now.
bool dpbf16() { return cpu_has_avx512_bf16() && use_avx512() && std::string_view(bf16_path()) != "emulated"; }
#endif

// The kernels on operands already rounded when bf16 (they round P and dS).
template <typename T>
void forward_kernel(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                    int64_t S, int64_t D, bool causal, T scale, bool bf16) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2()) return FG_VEC(attention_forward(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, bf16));
  }
#endif
  portable::attn_detail::forward<0>(o, lse, q, k, v, B, H, Hkv, Tq, S, D, causal, scale, StdExp{}, bf16);
}

template <typename T>
void backward_kernel(T* dq, T* dk, T* dv, const T* do_, const T* q, const T* k, const T* v, const T* o, const T* lse,
                     int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, T scale,
                     bool bf16) {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2())
      return FG_VEC(attention_backward(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, bf16));
  }
#endif
  portable::attn_detail::backward<0>(dq, dk, dv, do_, q, k, v, o, lse, B, H, Hkv, Tq, S, D, causal, scale, StdExp{},
                                     bf16);
}

}  // namespace

template <typename T>
void attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t H,
                       int64_t Hkv, int64_t Tq, int64_t S, int64_t D, bool causal, T scale, bool bf16) {
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
  if constexpr (std::is_same_v<T, float>) {
    const HeadLayout Lq = heads_contiguous(H, Tq, D), Lkv = heads_contiguous(Hkv, S, D);
    if (bf16 && dpbf16() &&
        avx512_bf16::attention_forward_dpbf16(o, Lq, lse, q, Lq, k, Lkv, v, Lkv, B, H, Hkv, Tq, S, D, causal, scale))
      return;
  }
#endif
  const Rounded<T> qr(q, B * H * Tq * D, bf16), kr(k, B * Hkv * S * D, bf16), vr(v, B * Hkv * S * D, bf16);
  forward_kernel(o, lse, qr.get(), kr.get(), vr.get(), B, H, Hkv, Tq, S, D, causal, scale, bf16);
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* do_, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                        int64_t S, int64_t D, bool causal, T scale, bool bf16) {
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
  if constexpr (std::is_same_v<T, float>) {
    const HeadLayout Lq = heads_contiguous(H, Tq, D), Lkv = heads_contiguous(Hkv, S, D);
    if (bf16 && dpbf16() &&
        avx512_bf16::attention_backward_dpbf16(dq, Lq, dk, Lkv, dv, Lkv, do_, Lq, q, Lq, k, Lkv, v, Lkv, o, Lq, lse, B,
                                               H, Hkv, Tq, S, D, causal, scale))
      return;
  }
#endif
  const Rounded<T> qr(q, B * H * Tq * D, bf16), kr(k, B * Hkv * S * D, bf16), vr(v, B * Hkv * S * D, bf16),
      dor(do_, B * H * Tq * D, bf16);
  backward_kernel(dq, dk, dv, dor.get(), qr.get(), kr.get(), vr.get(), o, lse, B, H, Hkv, Tq, S, D, causal, scale,
                  bf16);
}

namespace {
// dst head rows <- src head rows, for every (b, h, t) of a (B, nh, T, D) operand.
template <typename T>
void copy_heads(T* dst, HeadLayout Ld, const T* src, HeadLayout Ls, int64_t B, int64_t nh, int64_t Tq, int64_t D) {
  parallel_for(B * nh * Tq, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t bh = i / Tq, t = i % Tq;
      const T* s = src + Ls.head(bh, nh) + t * Ls.st;
      std::copy(s, s + D, dst + Ld.head(bh, nh) + t * Ld.st);
    }
  });
}
}  // namespace

template <typename T>
void attention_qkv_forward(T* o, T* lse, const T* qkv, int64_t B, int64_t H, int64_t Hkv, int64_t Tq,
                           int64_t D, bool causal, T scale, bool bf16) {
  const int64_t W = (H + 2 * Hkv) * D;
  const HeadLayout Lin = heads_in_rows(Tq, W, D), Lo = heads_in_rows(Tq, H * D, D);
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (bf16 && dpbf16() &&
        avx512_bf16::attention_forward_dpbf16(o, Lo, lse, qkv, Lin, qkv + H * D, Lin, qkv + (H + Hkv) * D, Lin, B, H,
                                              Hkv, Tq, Tq, D, causal, scale))
      return;
  }
#endif
  const Rounded<T> qkvr(qkv, B * Tq * W, bf16);
  qkv = qkvr.get();
  const T *q = qkv, *k = qkv + H * D, *v = qkv + (H + Hkv) * D;
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2() && FG_VEC(attention_forward_strided(o, Lo, lse, q, Lin, k, Lin, v, Lin, B, H, Hkv, Tq, Tq, D, causal,
                                                        scale, bf16)))
      return;
  }
#endif
  // The other kernels read contiguous heads: split, attend, merge.
  const HeadLayout Cq = heads_contiguous(H, Tq, D), Ckv = heads_contiguous(Hkv, Tq, D);
  std::vector<T> qc(B * H * Tq * D), kc(B * Hkv * Tq * D), vc(B * Hkv * Tq * D), oc(B * H * Tq * D);
  copy_heads(qc.data(), Cq, q, Lin, B, H, Tq, D);
  copy_heads(kc.data(), Ckv, k, Lin, B, Hkv, Tq, D);
  copy_heads(vc.data(), Ckv, v, Lin, B, Hkv, Tq, D);
  forward_kernel<T>(oc.data(), lse, qc.data(), kc.data(), vc.data(), B, H, Hkv, Tq, Tq, D, causal, scale, bf16);
  copy_heads(o, Lo, oc.data(), Cq, B, H, Tq, D);
}

template <typename T>
void attention_qkv_backward(T* dqkv, const T* do_, const T* qkv, const T* o, const T* lse, int64_t B,
                            int64_t H, int64_t Hkv, int64_t Tq, int64_t D, bool causal, T scale, bool bf16) {
  const int64_t W = (H + 2 * Hkv) * D;
  const HeadLayout Lin = heads_in_rows(Tq, W, D), Lo = heads_in_rows(Tq, H * D, D);
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (bf16 && dpbf16() &&
        avx512_bf16::attention_backward_dpbf16(dqkv, Lin, dqkv + H * D, Lin, dqkv + (H + Hkv) * D, Lin, do_, Lo, qkv,
                                               Lin, qkv + H * D, Lin, qkv + (H + Hkv) * D, Lin, o, Lo, lse, B, H, Hkv,
                                               Tq, Tq, D, causal, scale))
      return;
  }
#endif
  const Rounded<T> qkvr(qkv, B * Tq * W, bf16), dor(do_, B * Tq * H * D, bf16);
  qkv = qkvr.get();
  do_ = dor.get();
  const T *q = qkv, *k = qkv + H * D, *v = qkv + (H + Hkv) * D;
  T *dq = dqkv, *dk = dqkv + H * D, *dv = dqkv + (H + Hkv) * D;
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2() && FG_VEC(attention_backward_strided(dq, Lin, dk, Lin, dv, Lin, do_, Lo, q, Lin, k, Lin, v, Lin, o,
                                                         Lo, lse, B, H, Hkv, Tq, Tq, D, causal, scale, bf16)))
      return;
  }
#endif
  const HeadLayout Cq = heads_contiguous(H, Tq, D), Ckv = heads_contiguous(Hkv, Tq, D);
  const int64_t nq = B * H * Tq * D, nkv = B * Hkv * Tq * D;
  std::vector<T> buf(4 * nq + 4 * nkv);
  T *qc = buf.data(), *doc = qc + nq, *oc = doc + nq, *dqc = oc + nq;
  T *kc = dqc + nq, *vc = kc + nkv, *dkc = vc + nkv, *dvc = dkc + nkv;
  copy_heads(qc, Cq, q, Lin, B, H, Tq, D);
  copy_heads(kc, Ckv, k, Lin, B, Hkv, Tq, D);
  copy_heads(vc, Ckv, v, Lin, B, Hkv, Tq, D);
  copy_heads(doc, Cq, do_, Lo, B, H, Tq, D);
  copy_heads(oc, Cq, o, Lo, B, H, Tq, D);
  backward_kernel<T>(dqc, dkc, dvc, doc, qc, kc, vc, oc, lse, B, H, Hkv, Tq, Tq, D, causal, scale, bf16);
  copy_heads(dq, Lin, dqc, Cq, B, H, Tq, D);
  copy_heads(dk, Lin, dkc, Ckv, B, Hkv, Tq, D);
  copy_heads(dv, Lin, dvc, Ckv, B, Hkv, Tq, D);
}

#define FG_INST(T)                                                                               \
  template void attention_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t,      \
                                     int64_t, int64_t, int64_t, int64_t, bool, T, bool);          \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,         \
                                      const T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                      int64_t, int64_t, bool, T, bool);                           \
  template void attention_naive_forward<T>(T*, T*, const T*, const T*, const T*, int64_t,         \
                                           int64_t, int64_t, int64_t, int64_t, int64_t, bool, T);  \
  template void attention_qkv_forward<T>(T*, T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                         int64_t, bool, T, bool);                                  \
  template void attention_qkv_backward<T>(T*, const T*, const T*, const T*, const T*, int64_t,     \
                                          int64_t, int64_t, int64_t, int64_t, bool, T, bool);
FG_INST(float)
FG_INST(double)
#undef FG_INST
#undef FG_VEC

}  // namespace fg
