// float32 softmax / log_softmax / cross-entropy row kernels (declared in softmax_xent.h), written
// once against the vector type of csrc/simd/vec_<isa>.h and included inside namespace fg::<isa>
// by softmax_xent_avx2.cpp and softmax_xent_avx512.cpp. Memory-bound design:
//  - row statistics (max, sum exp) in ONE read of the row from memory: the row is walked in
//    chunks of kChunk floats; a chunk's max is taken as it streams in, then its exps are summed
//    from L1 against the running max (the sum is rescaled when the max grows: online softmax);
//  - the second pass of a row (writing y / dx) reads it back from L1/L2, never from memory.
// Outputs use ordinary stores: non-temporal stores were measured (2-core Zen 3 VM, shapes of
// bench_softmax_xent) to be no faster for fwd+bwd pairs, and slower for cross-entropy.
// Every row is computed by one thread in a fixed order, so results do not depend on the
// number of threads. NaN/inf rows take an exact slow path with the portable semantics.
// Tails are vectors with masked loads (padding lanes -inf before an exp, 0 in sums) and
// masked stores.

namespace sx_detail {
constexpr int64_t L = Vf::kLanes;
constexpr int64_t kChunk = 512;  // floats (2 KiB, a multiple of 64 bytes): stays in L1 between sweeps
static_assert(kChunk % (4 * L) == 0, "chunks hold whole groups of vectors");
// Software prefetch distance (floats) for rows streamed from memory while exps are computed: the
// hardware prefetcher alone left memory idle during the exp work (no overlap, measured).
constexpr int64_t kAhead = 1024;
FG_VEC_INLINE void prefetch(const float* p) { __builtin_prefetch(p, 0, 3); }

FG_VEC_INLINE Vf load(const float* p, int64_t k) { return load_or(p, k, zero()); }
FG_VEC_INLINE Vd widen_add(Vd acc, Vf v) { return (acc + widen_lo(v)) + widen_hi(v); }  // acc += v's lanes, in double

// y[i] = f(i, k) for i in [0, n), where f returns the L values at [i, i + L) computed from
// inputs read with load(p + i, k) (k valid lanes).
template <typename F>
FG_VEC_INLINE void write_row(float* y, int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + L <= n; i += L) storeu(y + i, f(i, L));
  if (i < n) store_tail(y + i, f(i, n - i), n - i);
}

// sum of g(i, k) over [0, n) in L-float groups: float within a chunk (2 chains), double across
template <typename G>
FG_VEC_INLINE double chunked_sum(int64_t n, G&& g) {
  Vd acc = zero_d();
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t e = imin(n, c + kChunk);
    Vf s0 = zero(), s1 = zero();
    int64_t i = c;
    for (; i + 2 * L <= e; i += 2 * L) {
      s0 = s0 + g(i, L);
      s1 = s1 + g(i + L, L);
    }
    for (; i < e; i += L) s0 = s0 + g(i, imin(L, e - i));
    acc = widen_add(acc, s0 + s1);
  }
  return reduce_add(acc);
}

// Exact NaN-propagating max: max(a, v) keeps a NaN only from its second operand, so NaN
// lanes are tracked apart and a row holding any NaN has max NaN.
inline float row_max_exact(const float* x, int64_t V) {
  Vf a = set1(-INFINITY);
  bool nan = false;
  int64_t i = 0;
  for (; i + L <= V; i += L) {
    const Vf v = loadu(x + i);
    a = max(a, v);
    nan |= any(is_nan(v));
  }
  if (nan) return NAN;
  float m = reduce_max(a);
  for (; i < V; ++i) m = x[i] > m || x[i] != x[i] ? x[i] : m;
  return m;
}

// Row statistics in one read: m = max(x), s = sum exp(x - m) (double). With E non-null, chunk c
// also leaves e = exp(x - mc[c]) in E and its running max in mc[c] (so y = e * exp(mc - m) / s).
// Returns false when the fast path cannot vouch for the result (a NaN or +-inf max): the caller
// then uses row_stats_exact.
template <bool kStore>
FG_VEC_INLINE bool row_stats_fast(const float* x, int64_t V, float* m_out, double* s_out, float* E, float* mc) {
  const Vf ninf = set1(-INFINITY);
  float m = -FLT_MAX, top = -INFINITY;
  Vd acc = zero_d();
  for (int64_t c = 0; c < V; c += kChunk) {
    const int64_t n = imin(kChunk, V - c);
    const float* p = x + c;
    // chunk max, straight from memory (4 chains)
    Vf a0 = ninf, a1 = ninf, a2 = ninf, a3 = ninf;
    int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      a0 = max(a0, loadu(p + i));
      a1 = max(a1, loadu(p + i + L));
      a2 = max(a2, loadu(p + i + 2 * L));
      a3 = max(a3, loadu(p + i + 3 * L));
    }
    for (; i < n; i += L) a0 = max(a0, load_or(p + i, n - i, ninf));
    const float cm = reduce_max(max(max(a0, a1), max(a2, a3)));
    top = cm > top ? cm : top;
    if (cm > m) {  // rescale the sum to the new max (exp(m - cm) <= 1; 0 for the first chunk)
      acc = acc * set1_d(lane0(exp(set1(m - cm))));
      m = cm;
    }
    // chunk sum of exp(x - m), from L1; padding lanes are -inf, so exp gives 0. One chain: its
    // add latency hides under exp's throughput, and more chains spill exp's constants.
    const Vf vm = set1(m);
    Vf s0 = zero();
    float* e = kStore ? E + c : nullptr;
    for (i = 0; i < n; i += L) {
      // while the exps run, ask for the data ahead (the max sweep then finds it arriving)
      if ((i & 15) == 0) prefetch(p + kAhead + i);
      const int64_t k = imin(L, n - i);
      const Vf e0 = exp(load_or(p + i, k, ninf) - vm);
      if constexpr (kStore) {
        if (k == L) storeu(e + i, e0);
        else store_tail(e + i, e0, k);
      }
      s0 = s0 + e0;
    }
    if constexpr (kStore) mc[c / kChunk] = m;
    acc = widen_add(acc, s0);
  }
  const double s = reduce_add(acc);
  *m_out = m;
  *s_out = s;
  // a NaN in x makes s NaN (exp propagates it), and a non-finite max is not handled here
  return std::isfinite(top) && !std::isnan(s);
}

// The exact path for rows the fast one declines: m = NaN-propagating max; s over a second read.
inline void row_stats_exact(const float* x, int64_t V, float* m_out, double* s_out) {
  const float m = row_max_exact(x, V);
  *m_out = m;
  if (!std::isfinite(m)) { *s_out = 1; return; }
  const Vf vm = set1(m), ninf = set1(-INFINITY);
  *s_out = chunked_sum(V, [&](int64_t i, int64_t k) { return exp(load_or(x + i, k, ninf) - vm); });
}

struct Scratch {  // per-thread buffers for softmax_forward_rows
  FloatBuf e, mc;
};
}  // namespace sx_detail

void row_lse(const float* x, int64_t V, float* m, float* log_s) {
  double s;
  if (!sx_detail::row_stats_fast<false>(x, V, m, &s, nullptr, nullptr)) sx_detail::row_stats_exact(x, V, m, &s);
  *log_s = std::isfinite(*m) ? static_cast<float>(std::log(s)) : 0.f;
}

void softmax_forward_rows(float* y, const float* x, int64_t r0, int64_t r1, int64_t V) {
  using namespace sx_detail;
  thread_local Scratch S;
  float* E = S.e.get(static_cast<size_t>(V));
  float* MC = S.mc.get(static_cast<size_t>((V + kChunk - 1) / kChunk));
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * V;
    float* yr = y + r * V;
    float m;
    double s;
    // y = exp(x - mc) * (exp(mc - m) / s), the exps kept from the statistics sweep
    if (row_stats_fast<true>(xr, V, &m, &s, E, MC)) {
      const Vf inv = set1(static_cast<float>(1.0 / s));
      for (int64_t c = 0; c < V; c += kChunk) {
        const Vf f = exp(set1(MC[c / kChunk] - m)) * inv;
        const float* e = E + c;
        write_row(yr + c, imin(kChunk, V - c), [&](int64_t i, int64_t k) { return f * load(e + i, k); });
      }
      continue;
    }
    row_stats_exact(xr, V, &m, &s);
    // a NaN or +-inf max makes every exp(x - m) / s NaN (inf - inf, or NaN), as in the portable path
    const Vf vm = set1(m);
    const Vf inv = set1(std::isfinite(m) ? static_cast<float>(1.0 / s) : NAN);
    write_row(yr, V, [&](int64_t i, int64_t k) { return inv * exp(load(xr + i, k) - vm); });
  }
}

void softmax_backward_rows(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1, int64_t V) {
  using namespace sx_detail;
  for (int64_t r = r0; r < r1; ++r) {
    const float *dyr = dy + r * V, *yr = y + r * V;
    // dx = y * (dy - sum(dy * y))
    const Vf s = set1(static_cast<float>(chunked_sum(V, [&](int64_t i, int64_t k) { return load(dyr + i, k) * load(yr + i, k); })));
    write_row(dx + r * V, V, [&](int64_t i, int64_t k) { return load(yr + i, k) * (load(dyr + i, k) - s); });
  }
}

void log_softmax_forward_rows(float* y, const float* x, int64_t r0, int64_t r1, int64_t V) {
  using namespace sx_detail;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * V;
    float m, ls;
    row_lse(xr, V, &m, &ls);
    // y = (x - m) - log_s: exact-ish even for |m| ~ 1e4
    const Vf vm = set1(m), vl = set1(ls);
    write_row(y + r * V, V, [&](int64_t i, int64_t k) { return (load(xr + i, k) - vm) - vl; });
  }
}

void log_softmax_backward_rows(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1, int64_t V) {
  using namespace sx_detail;
  for (int64_t r = r0; r < r1; ++r) {
    const float *dyr = dy + r * V, *yr = y + r * V;
    // dx = dy - exp(y) * sum(dy)
    const Vf s = set1(static_cast<float>(chunked_sum(V, [&](int64_t i, int64_t k) { return load(dyr + i, k); })));
    write_row(dx + r * V, V, [&](int64_t i, int64_t k) {  // y comes from memory: prefetch it
      if ((i & 15) == 0) prefetch(yr + i + kAhead);
      return fnma(exp(load(yr + i, k)), s, load(dyr + i, k));
    });
  }
}

void xent_grad_row(float* d, const float* x, int64_t V, float lse, float scale, int64_t t) {
  using namespace sx_detail;
  // d = scale * (exp(x - lse) - [i == t]); the target lane is fixed in the group that holds it
  const Vf vl = set1(lse), vs = set1(scale);
  write_row(d, V, [&](int64_t i, int64_t k) {
    if ((i & 15) == 0) prefetch(x + i + kAhead);
    const Vf g = vs * exp(load(x + i, k) - vl);
    if (static_cast<uint64_t>(t - i) >= static_cast<uint64_t>(L)) return g;
    return g - and_(lane_is(t - i), vs);
  });
}
