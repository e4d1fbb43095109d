// The blocked GEMM driver shared by the portable (matmul.cpp) and AVX2 (matmul_avx2.cpp) paths.
// Everything here has internal linkage (anonymous namespace) so the copy compiled with -mavx2
// can never be picked by the linker for the portable translation unit.
//
// Loop nest (BLIS): for jc (NC cols of C) / for pc (KC of K): all threads pack B[pc:, jc:] into
// KC x NR panels (shared), barrier; each thread owns a contiguous range of rows of C (a multiple
// of MR) and, per MC block of it, packs A into MR x KC panels and runs the micro-kernel over
// (NR panel, MR panel) pairs. Tiles that stick out of C are computed into a scratch tile and
// the valid part is copied. The first KC slice writes (or adds, if accumulating), later add.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/parallel.h"

namespace fg {
namespace {

// A(i, p) = a[i * rs + p * cs]; the same for B(p, j).
struct View {
  const void* p;
  int64_t rs, cs;
};

struct AlignedBuf {
  void* p = nullptr;
  explicit AlignedBuf(size_t bytes) { p = ::operator new(bytes, std::align_val_t(64)); }
  ~AlignedBuf() { ::operator delete(p, std::align_val_t(64)); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
};

inline void omp_barrier() {
#ifdef FUSEGRAD_HAVE_OPENMP
#pragma omp barrier
#endif
}

// Packs rows [i0, i0+mc) x cols [p0, p0+kc) of A into panels of MR rows: dst[panel][p][r].
template <typename T, int MR>
void pack_a(T* dst, const T* a, int64_t rs, int64_t cs, int64_t i0, int64_t mc, int64_t p0, int64_t kc) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - ir);
    T* d = dst + ir * kc;
    const T* s = a + (i0 + ir) * rs + p0 * cs;
    if (mr == MR && rs == 1) {  // trans_a: the MR rows are contiguous for each p
      for (int64_t p = 0; p < kc; ++p)
        for (int r = 0; r < MR; ++r) d[p * MR + r] = s[p * cs + r];
    } else {
      for (int r = 0; r < MR; ++r) {
        if (r < mr) {
          const T* sr = s + r * rs;
          for (int64_t p = 0; p < kc; ++p) d[p * MR + r] = sr[p * cs];
        } else {
          for (int64_t p = 0; p < kc; ++p) d[p * MR + r] = T(0);
        }
      }
    }
  }
}

// Packs rows [p0, p0+kc) x cols [j0 + jp*NR ...) of B into panels of NR cols: dst[panel][p][c].
template <typename T, int NR>
void pack_b_panel(T* d, const T* b, int64_t rs, int64_t cs, int64_t p0, int64_t kc, int64_t j0, int64_t nr) {
  const T* s = b + p0 * rs + j0 * cs;
  if (nr == NR && cs == 1) {
    for (int64_t p = 0; p < kc; ++p) std::memcpy(d + p * NR, s + p * rs, sizeof(T) * NR);
  } else if (nr == NR) {  // trans_b: walk each column contiguously
    for (int c = 0; c < NR; ++c) {
      const T* sc = s + c * cs;
      for (int64_t p = 0; p < kc; ++p) d[p * NR + c] = sc[p * rs];
    }
  } else {
    for (int64_t p = 0; p < kc; ++p)
      for (int c = 0; c < NR; ++c) d[p * NR + c] = c < nr ? s[p * rs + c * cs] : T(0);
  }
}

// UK provides MR, NR and run(kc, ap, bp, c, ldc, add): c[0:MR, 0:NR] (= or +=) ap^T bp.
template <typename T, typename UK, int64_t MC, int64_t KC, int64_t NC>
void gemm_blocked(T* c, const T* a, View A, const T* b, View B, int64_t M, int64_t N, int64_t K,
                  bool accumulate, int nthreads) {
  constexpr int MR = UK::MR, NR = UK::NR;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) std::memset(c, 0, sizeof(T) * M * N);
    return;
  }
  const int64_t nc_max = std::min<int64_t>(NC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min<int64_t>(KC, K);
  AlignedBuf bbuf(sizeof(T) * nc_max * kc_max);
  T* bp = static_cast<T*>(bbuf.p);
  // Threads: each gets a contiguous share of the MR-row panels of C; serial when small.
  const int64_t mpanels = (M + MR - 1) / MR;
  const double flops = 2.0 * M * N * K;
  int nt = std::max(1, std::min<int>(nthreads, static_cast<int>(mpanels)));
  if (flops < 2.0 * 48 * 48 * 48) nt = 1;

  parallel_region(nt, [&](int t, int T_) {
    AlignedBuf abuf(sizeof(T) * std::min<int64_t>(MC, mpanels * MR) * kc_max);
    T* ap = static_cast<T*>(abuf.p);
    alignas(64) T tile[MR * NR];
    const int64_t per = (mpanels + T_ - 1) / T_;
    const int64_t m_begin = std::min<int64_t>(M, t * per * MR);
    const int64_t m_end = std::min<int64_t>(M, (t + 1) * per * MR);
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min<int64_t>(NC, N - jc);
      const int64_t npanels = (nc + NR - 1) / NR;
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min<int64_t>(KC, K - pc);
        const bool add = accumulate || pc > 0;
        // All threads pack their share of the B panels.
        const int64_t bper = (npanels + T_ - 1) / T_;
        for (int64_t jp = t * bper; jp < std::min<int64_t>(npanels, (t + 1) * bper); ++jp)
          pack_b_panel<T, NR>(bp + jp * NR * kc, b, B.rs, B.cs, pc, kc, jc + jp * NR,
                              std::min<int64_t>(NR, nc - jp * NR));
        if (T_ > 1) omp_barrier();
        for (int64_t ic = m_begin; ic < m_end; ic += MC) {
          const int64_t mc = std::min<int64_t>(MC, m_end - ic);
          pack_a<T, MR>(ap, a, A.rs, A.cs, ic, mc, pc, kc);
          for (int64_t jp = 0; jp < npanels; ++jp) {
            const int64_t j = jc + jp * NR;
            const int64_t nr = std::min<int64_t>(NR, N - j);
            const T* bpp = bp + jp * NR * kc;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int64_t i = ic + ir;
              const int64_t mr = std::min<int64_t>(MR, M - i);
              T* cij = c + i * N + j;
              if (mr == MR && nr == NR) {
                UK::run(kc, ap + ir * kc, bpp, cij, N, add);
              } else {
                UK::run(kc, ap + ir * kc, bpp, tile, NR, false);
                for (int64_t r = 0; r < mr; ++r)
                  for (int64_t q = 0; q < nr; ++q)
                    cij[r * N + q] = add ? cij[r * N + q] + tile[r * NR + q] : tile[r * NR + q];
              }
            }
          }
        }
        if (T_ > 1) omp_barrier();  // nobody repacks B while another thread still reads it
      }
    }
  });
}

inline View view_a(const void* a, int64_t M, int64_t K, bool trans) {
  return trans ? View{a, 1, M} : View{a, K, 1};
}
inline View view_b(const void* b, int64_t K, int64_t N, bool trans) {
  return trans ? View{b, 1, K} : View{b, N, 1};
}

}  // namespace
}  // namespace fg
