// float32 layernorm kernels (declared in layernorm.h) written once against the vector type of
// csrc/simd/vec_<isa>.h, included inside namespace fg::<isa> by layernorm_avx2.cpp and
// layernorm_avx512.cpp. Each row is read from memory once per direction: the row statistics come
// from one pass (shifted sums in double lanes), and the second look at the row (writing y or dx)
// hits L1/L2. Outputs too big to stay in cache are written with streaming (non-temporal) stores,
// which skip the read-for-ownership of the destination: without them every output byte costs a
// read and a write of memory. A row's head (before the stream alignment) and tail are masked
// vectors through the same math as the rest.

namespace ln_detail {
constexpr int64_t L = Vf::kLanes;
// Rows are prefetched ahead only while 4 rows of this many floats fit in half the L2.
constexpr int64_t kPrefetchMaxC = 16384;
FG_VEC_INLINE void prefetch_l2(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }

// Floats before the first (L*4)-byte boundary of dst: streaming stores start there.
template <bool NT>
FG_VEC_INLINE int64_t aligned_head(const float* dst, int64_t C) {
  if constexpr (!NT) return 0;
  constexpr int64_t kB = L * 4;
  const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) & (kB - 1));
  return imin(C, mis == 0 ? 0 : (kB - mis) / 4 & (L - 1));
}

// out[i..] = f(i, n) over [0, C): a masked head (up to the stream alignment), full vectors
// (streamed when NT), a masked tail. `on_vec(i)` runs before each full vector (prefetches).
template <bool NT, typename F, typename P>
FG_VEC_INLINE void write_row(float* out, int64_t C, F&& f, P&& on_vec) {
  const int64_t head = aligned_head<NT>(out, C);
  if (head) store_tail(out, f(int64_t{0}, head), head);
  int64_t i = head;
  for (; i + L <= C; i += L) {
    on_vec(i - head);
    if constexpr (NT) stream(out + i, f(i, L));
    else storeu(out + i, f(i, L));
  }
  if (i < C) store_tail(out + i, f(i, C - i), C - i);
}

// Row statistics in one read. Sums of d = x - K (K = x[0]) in double: var = E[d^2] - E[d]^2.
// The cancellation is bounded for every input: K is an element of the row, so
// (K - mean)^2 <= sum_i (x_i - mean)^2 = C * var, i.e. E[d]^2 <= C * var, and the relative
// error of var is at most about C * 2^-52 (1e-11 for C = 50304), far below float precision.
// A constant row gives d = 0 exactly, so mean = K and var = 0 exactly.
FG_VEC_INLINE void row_stats(const float* xr, int64_t C, double eps, float* m_out, float* rs_out) {
  const Vd vk = set1_d(xr[0]);
  Vd s1[4] = {zero_d(), zero_d(), zero_d(), zero_d()}, s2[4] = {zero_d(), zero_d(), zero_d(), zero_d()};
  int64_t i = 0;
  for (; i + 2 * L <= C; i += 2 * L) {
    const Vf a = loadu(xr + i), b = loadu(xr + i + L);
    const Vd d0 = widen_lo(a) - vk, d1 = widen_hi(a) - vk, d2 = widen_lo(b) - vk, d3 = widen_hi(b) - vk;
    s1[0] = s1[0] + d0; s2[0] = fma(d0, d0, s2[0]);
    s1[1] = s1[1] + d1; s2[1] = fma(d1, d1, s2[1]);
    s1[2] = s1[2] + d2; s2[2] = fma(d2, d2, s2[2]);
    s1[3] = s1[3] + d3; s2[3] = fma(d3, d3, s2[3]);
  }
  for (; i < C; i += L) {  // up to 2L - 1 left: masked vectors, the padding lanes' d set to 0
    const int64_t n = imin(L, C - i);
    const Vf a = load_tail(xr + i, n);
    const Vd d0 = keep_lanes_d(widen_lo(a) - vk, n), d1 = keep_lanes_d(widen_hi(a) - vk, n - L / 2);
    s1[0] = s1[0] + d0; s2[0] = fma(d0, d0, s2[0]);
    s1[1] = s1[1] + d1; s2[1] = fma(d1, d1, s2[1]);
  }
  const double a1 = reduce_add((s1[0] + s1[1]) + (s1[2] + s1[3]));
  const double a2 = reduce_add((s2[0] + s2[1]) + (s2[2] + s2[3]));
  const double K = xr[0];
  const double invC = 1.0 / static_cast<double>(C);
  const double md = a1 * invC;
  double var = a2 * invC - md * md;
  if (var < 0.0) var = 0.0;  // (not std::max(0.0, var), which turns a NaN variance into 0)
  *m_out = static_cast<float>(K + md);
  *rs_out = static_cast<float>(1.0 / std::sqrt(var + eps));
}

// y = (x - m) * rs * w + b on the rows [r0, r1). While one row's output is written from cache,
// the next row is prefetched into L2 (only while 2 rows fit in half the L2), so memory reads
// overlap the output writes (the hardware prefetcher alone goes quiet when the demand misses stop).
template <bool HW, bool HB, bool NT>
void forward_rows(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                  int64_t r0, int64_t r1, int64_t C, double eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float m, rs;
    row_stats(xr, C, eps, &m, &rs);
    mean[r] = m;
    rstd[r] = rs;
    const float* next = r + 1 < r1 && C <= 2 * kPrefetchMaxC ? xr + C : nullptr;
    const Vf vm = set1(m), vr = set1(rs);
    write_row<NT>(y + r * C, C, [&](int64_t i, int64_t n) {
      Vf t = (load_n(xr + i, n) - vm) * vr;
      if constexpr (HW && HB) t = fma(t, load_n(w + i, n), load_n(b + i, n));
      else if constexpr (HW) t = t * load_n(w + i, n);
      else if constexpr (HB) t = t + load_n(b + i, n);
      return t;
    }, [&](int64_t i) { if (next && (i & 15) == 0) prefetch_l2(next + i); });
  }
  if constexpr (NT) _mm_sfence();  // streaming stores visible before the caller reads y
}

template <bool NT>
void forward_dispatch(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                      int64_t r0, int64_t r1, int64_t C, double eps) {
  if (w && b) forward_rows<true, true, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
  else if (w) forward_rows<true, false, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
  else if (b) forward_rows<false, true, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
  else forward_rows<false, false, NT>(y, mean, rstd, x, w, b, r0, r1, C, eps);
}

// One row of the backward: pass 1 reads dy, x (from memory) for the two row sums and adds
// into the dweight/dbias partials pdw/pdb; pass 2 writes dx from the cached row.
template <bool HW, bool NT>
FG_VEC_INLINE void backward_row(float* dxr, float* pdw, float* pdb, const float* dyr, const float* xr, const float* w,
                                int64_t C, float m, float rs, const float* next_dy, const float* next_x) {
  const Vf vm = set1(m), vr = set1(rs);
  Vd g0 = zero_d(), g1 = zero_d(), h0 = zero_d(), h1 = zero_d();
  for_each_vec(0, C, [&](int64_t i, int64_t n) {
    const Vf dyv = load_n(dyr + i, n);
    const Vf xh = (load_n(xr + i, n) - vm) * vr;
    const Vf g = HW ? dyv * load_n(w + i, n) : dyv;
    const Vf gx = g * xh;
    // padding lanes: g = 0 but xh may be inf (rs = inf on a constant row with eps = 0), so
    // they are cleared in double rather than trusted to be 0
    g0 = g0 + keep_lanes_d(widen_lo(g), n);
    g1 = g1 + keep_lanes_d(widen_hi(g), n - L / 2);
    h0 = h0 + keep_lanes_d(widen_lo(gx), n);
    h1 = h1 + keep_lanes_d(widen_hi(gx), n - L / 2);
    store_n(pdw + i, fma(dyv, xh, load_n(pdw + i, n)), n);
    store_n(pdb + i, dyv + load_n(pdb + i, n), n);
  });
  const float mg = static_cast<float>(reduce_add(g0 + g1) / static_cast<double>(C));
  const float mgx = static_cast<float>(reduce_add(h0 + h1) / static_cast<double>(C));
  // dx = rstd * ((g - mean(g)) - xhat * mean(g * xhat))
  const Vf vmg = set1(mg), vmgx = set1(mgx);
  write_row<NT>(dxr, C, [&](int64_t i, int64_t n) {
    const Vf dyv = load_n(dyr + i, n);
    const Vf xh = (load_n(xr + i, n) - vm) * vr;
    const Vf g = HW ? dyv * load_n(w + i, n) : dyv;
    return vr * fnma(xh, vmgx, g - vmg);
  }, [&](int64_t i) {
    if (next_dy && (i & 15) == 0) {
      prefetch_l2(next_dy + i);
      prefetch_l2(next_x + i);
    }
  });
}
// Outputs larger than this are written with streaming stores (they would not survive in the
// 32 MiB L3 shared with the inputs anyway).
constexpr int64_t kStreamBytes = int64_t{8} << 20;
// (A float array that is not even 4-byte aligned can never reach the vector alignment.)
inline bool stream_ok(const float* out, int64_t n) {
  return n * static_cast<int64_t>(sizeof(float)) >= kStreamBytes && (reinterpret_cast<uintptr_t>(out) & 3) == 0;
}

// Below this many elements a call runs on the calling thread alone; backward uses at most
// kMaxSlices slices of at least kMinParallel elements.
constexpr int64_t kMinParallel = int64_t{1} << 16;
constexpr int64_t kMaxSlices = 8;
}  // namespace ln_detail

// Rows are handed out in chunks through an atomic counter, so any number of participating
// threads (and any scheduling) computes the same result.
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t N, int64_t C, double eps, int64_t grain) {
  using namespace ln_detail;
  const bool nt = stream_ok(y, N * C);
  const int64_t chunk = imax(1, grain), nchunks = (N + chunk - 1) / chunk;
  const int threads = N * C >= kMinParallel ? static_cast<int>(imin(get_num_threads(), nchunks)) : 1;
  std::atomic<int64_t> next{0};
  parallel_region(threads, [&](int, int) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < nchunks;) {
      const int64_t b = c * chunk, e = imin(N, b + chunk);
      if (nt) forward_dispatch<true>(y, mean, rstd, x, weight, bias, b, e, C, eps);
      else forward_dispatch<false>(y, mean, rstd, x, weight, bias, b, e, C, eps);
    }
  });
}

// dweight/dbias: the rows are cut into S fixed slices (S depends only on N and C); each slice
// sums its rows in order into its own partial (slice 0 straight into dweight/dbias), and the
// partials are added in slice order. Slices are handed out dynamically, so the result is the
// same for any number of threads and any scheduling.
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        int64_t grain) {
  using namespace ln_detail;
  const int64_t S = imax(1, imin(imin(kMaxSlices, N), N * C / kMinParallel));
  const int64_t per = (N + S - 1) / S;
  const int threads = static_cast<int>(imin(get_num_threads(), S));
  for_each_vec(0, C, [&](int64_t i, int64_t n) {
    store_n(dweight + i, zero(), n);
    store_n(dbias + i, zero(), n);
  });
  thread_local FloatBuf part_cache;  // kept between calls: no page faults per call
  float* part = part_cache.get(static_cast<size_t>(S - 1) * 2 * C + 1);
  const bool stream = stream_ok(dx, N * C);
  std::atomic<int64_t> next{0};
  parallel_region(threads, [&](int, int) {
    for (int64_t s; (s = next.fetch_add(1, std::memory_order_relaxed)) < S;) {
      float* pdw = s == 0 ? dweight : part + static_cast<size_t>(s - 1) * 2 * C;
      float* pdb = s == 0 ? dbias : pdw + C;
      if (s > 0) for_each_vec(0, 2 * C, [&](int64_t i, int64_t n) { store_n(pdw + i, zero(), n); });
      const int64_t b = imin(N, s * per), e = imin(N, b + per);
      for (int64_t r = b; r < e; ++r) {
        float* dxr = dx + r * C;
        const float *dyr = dy + r * C, *xr = x + r * C;
        // prefetch the next rows during pass 2 only while 4 rows fit in half the L2 (past that
        // the prefetches would evict the lines pass 2 is about to read)
        const bool pf = r + 1 < e && C <= kPrefetchMaxC;
        const float* ndy = pf ? dyr + C : nullptr;
        const float* nx = pf ? xr + C : nullptr;
        if (stream) {
          if (weight) backward_row<true, true>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
          else backward_row<false, true>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
        } else {
          if (weight) backward_row<true, false>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
          else backward_row<false, false>(dxr, pdw, pdb, dyr, xr, weight, C, mean[r], rstd[r], ndy, nx);
        }
      }
    }
    if (stream) _mm_sfence();
  });
  for (int64_t s = 1; s < S; ++s) {
    const float* pdw = part + static_cast<size_t>(s - 1) * 2 * C;
    const float* pdb = pdw + C;
    for_each_vec(0, C, [&](int64_t i, int64_t n) {
      store_n(dweight + i, load_n(dweight + i, n) + load_n(pdw + i, n), n);
      store_n(dbias + i, load_n(dbias + i, n) + load_n(pdb + i, n), n);
    });
  }
}
