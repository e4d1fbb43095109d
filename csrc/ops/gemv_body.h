// The skinny-product kernels (gemv.h), written once against the vector API of csrc/simd
// (vec_avx2.h, vec_avx512.h; gemv.cpp gives the portable path an 8-lane stand-in) and included
// inside namespace fg::<isa> by gemv.cpp, gemv_avx2.cpp and gemv_avx512.cpp, each compiled with
// its own flags, so no inline function is shared between flag sets.
// Besides the vector API (Vf, zero, set1, loadu, load_tail, storeu, store_tail, fma,
// reduce_add), the including file defines
//   load_w(const uint16_t* p) / load_w_tail(p, n): kLanes bf16 weights widened to float32
//     (exact: the 16 bits become the top half; lanes >= n read as 0 without touching memory);
//   constexpr int kRW, kRX: rows of w kept in flight, most rows of x per tile (registers: kRW
//     loads + kRX * kRW accumulators must fit the ISA's register file).
// Requires core/parallel.h and <algorithm>, <cmath>, <cstdint>.

FG_VEC_INLINE Vf load_w(const float* p) { return loadu(p); }
FG_VEC_INLINE Vf load_w_tail(const float* p, int64_t n) { return load_tail(p, n); }

namespace gemv_detail {

// y[i, r] for RX rows of x and RW rows of w (o0 .. o0+RW-1): one accumulator per (i, r).
template <int RW, int RX, class W>
inline void tile(float* y, int64_t ldy, const float* x, const W* w, int64_t K, const float* bias,
                 const float* res) {
  constexpr int L = Vf::kLanes;
  Vf acc[RX][RW];
  for (int i = 0; i < RX; ++i)
    for (int r = 0; r < RW; ++r) acc[i][r] = zero();
  const int64_t Kv = K - K % L;
  for (int64_t k = 0; k < Kv; k += L) {
    Vf wv[RW];
    for (int r = 0; r < RW; ++r) wv[r] = load_w(w + r * K + k);
    for (int i = 0; i < RX; ++i) {
      const Vf xv = loadu(x + i * K + k);
      for (int r = 0; r < RW; ++r) acc[i][r] = fma(xv, wv[r], acc[i][r]);
    }
  }
  if (Kv < K) {  // the tail, zero-filled lanes: same lanes, same math
    Vf wv[RW];
    for (int r = 0; r < RW; ++r) wv[r] = load_w_tail(w + r * K + Kv, K - Kv);
    for (int i = 0; i < RX; ++i) {
      const Vf xv = load_tail(x + i * K + Kv, K - Kv);
      for (int r = 0; r < RW; ++r) acc[i][r] = fma(xv, wv[r], acc[i][r]);
    }
  }
  for (int i = 0; i < RX; ++i)
    for (int r = 0; r < RW; ++r) {
      float s = reduce_add(acc[i][r]);
      if (bias) s += bias[r];
      if (res) s = res[i * ldy + r] + s;
      y[i * ldy + r] = s;
    }
}

// A tile of rx (1..RX) rows of x: the instance with exactly rx accumulator rows.
template <int RW, int RX, class W>
inline void tile_rows(int rx, float* y, int64_t ldy, const float* x, const W* w, int64_t K,
                      const float* bias, const float* res) {
  if constexpr (RX > 1) {
    if (rx < RX) return tile_rows<RW, RX - 1, W>(rx, y, ldy, x, w, K, bias, res);
  }
  tile<RW, RX, W>(y, ldy, x, w, K, bias, res);
}

// Output blocks [b0, b1) (kRW rows of w each) against every row of x, on the calling thread.
template <class W>
void run_blocks(float* y, const float* x, const W* w, const float* bias, int64_t M, int64_t K, int64_t N,
                const float* res, int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t o0 = blk * kRW;
      const int rw = static_cast<int>(std::min<int64_t>(kRW, N - o0));
      // one block of w rows against every row of x: w comes from memory once, then from cache
      for (int64_t m0 = 0; m0 < M; m0 += kRX) {
        const int rx = static_cast<int>(std::min<int64_t>(kRX, M - m0));
        float* yt = y + m0 * N + o0;
        const float* xt = x + m0 * K;
        const float* rt = res ? res + m0 * N + o0 : nullptr;
        if (rw == kRW) {
          tile_rows<kRW, kRX, W>(rx, yt, N, xt, w + o0 * K, K, bias ? bias + o0 : nullptr, rt);
        } else {
          for (int r = 0; r < rw; ++r)
            tile_rows<1, kRX, W>(rx, yt + r, N, xt, w + (o0 + r) * K, K, bias ? bias + o0 + r : nullptr,
                                 rt ? rt + r : nullptr);
        }
      }
    }
}

template <class W>
void run(float* y, const float* x, const W* w, const float* bias, int64_t M, int64_t K, int64_t N,
         const float* res) {
  const int64_t blocks = (N + kRW - 1) / kRW;
  // at least ~64 KB of weights per thread, or the fork costs more than it saves
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / (kRW * std::max<int64_t>(K, 1)));
  parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) { run_blocks(y, x, w, bias, M, K, N, res, b0, b1); });
}

}  // namespace gemv_detail

void decode_attention(float* o, const float* q, const float* k, const float* v, int64_t G, int64_t S, int64_t D,
                      float scale, float* p) {
  // scores (G, S) = q K^T: the skinny product with the keys as the weight rows
  gemv_detail::run_blocks<float>(p, q, k, nullptr, G, D, S, nullptr, 0, (S + kRW - 1) / kRW);
  for (int64_t g = 0; g < G; ++g) {
    float* pg = p + g * S;
    float m = -__builtin_inff();
    for (int64_t s = 0; s < S; ++s) m = std::max(m, pg[s] * scale);
    float l = 0.f;
    for (int64_t s = 0; s < S; ++s) l += (pg[s] = std::exp(pg[s] * scale - m));
    const float inv = 1.f / l;
    // o = sum_s p_s v_s / l, in key order per lane (the tail lanes through the same math)
    float* og = o + g * D;
    for (int64_t d = 0; d < D; d += Vf::kLanes) {
      const int64_t n = std::min<int64_t>(Vf::kLanes, D - d);
      Vf acc = zero();
      if (n == Vf::kLanes)
        for (int64_t s = 0; s < S; ++s) acc = fma(set1(pg[s]), loadu(v + s * D + d), acc);
      else
        for (int64_t s = 0; s < S; ++s) acc = fma(set1(pg[s]), load_tail(v + s * D + d, n), acc);
      store_tail(og + d, acc * set1(inv), n);
    }
  }
}

void gemv(float* y, const float* x, const float* w, const float* bias, int64_t M, int64_t IN, int64_t OUT,
          const float* residual) {
  gemv_detail::run<float>(y, x, w, bias, M, IN, OUT, residual);
}
void gemv_bf16(float* y, const float* x, const uint16_t* w, const float* bias, int64_t M, int64_t IN,
               int64_t OUT, const float* residual) {
  gemv_detail::run<uint16_t>(y, x, w, bias, M, IN, OUT, residual);
}
