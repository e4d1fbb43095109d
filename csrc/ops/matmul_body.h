// The float32 GEMM driver of the vector paths, written once and compiled per ISA: packing,
// blocking, tile shapes, threading and the epilogues (bias, residual, row sums of A while
// packing, the C^T path). matmul_avx2.cpp and matmul_avx512.cpp define FG_ISA, the register
// micro-kernel `Ukr` and the blocking `gemm_blocking()` inside namespace fg::FG_ISA, then include
// this file: everything lands in that namespace, so no inline function or template instance is
// shared between translation units compiled with different flags.
//
// What the ISA file provides (the only places where the paths really differ):
//   Ukr::MR, Ukr::NR      the register tile: AVX2 6x16 (12 ymm accumulators of 16), AVX-512
//                         12x32 (24 zmm accumulators of 32);
//   Ukr::full(...)        c[0:MR, 0:NR] (= or +=) ap^T bp with the bias / residual epilogue;
//   Ukr::edge(...)        the same for a tile that sticks out of C (mr < MR or nr < NR): AVX2
//                         computes the full tile into scratch and copies the valid part, AVX-512
//                         stores it straight from registers with masked loads/stores;
//   gemm_blocking()       K block, tile rows and columns for this CPU's caches.
// Packing, transposes and the C^T store are written with 8-lane AVX2 operations: they move data
// and are memory bound, so wider vectors would not make them faster (on the avx512 path they are
// compiled with the AVX-512 flags too, as EVEX code).
//
// Design (a BLIS-style kernel with a different outer loop):
//  1. Pack all of op(A) into MR x kc panels and all of op(B) into kc x NR panels, once, with
//     AVX loads/transposes; K is cut into nearly equal blocks of at most KC. Both threads share
//     the packed copies. Packing work is handed out dynamically through atomic counters, in
//     at least two items per thread where the panels allow.
//     When every tile spans all columns (one K block, or at most TW columns), no two tiles read
//     the same rows of A: then each tile packs its own A block by block into a thread-local
//     buffer that stays in L2, and only B is packed up front; a thread that finds B's packing
//     still under way claims its first tile and packs that tile's A meanwhile.
//     Tile shapes are chosen per problem so the threads get equal shares of tiles. A very long
//     K is cut into chunks accumulated one after another (same K blocks, same order).
//  2. C is cut into tiles of about MC x TW; threads take tiles from an atomic counter (dynamic
//     scheduling keeps both cores busy even when the machine is shared and one is preempted).
//     In a tile: for each K block, for each NR panel of B (kept in L1), for each MR panel of A
//     (the MC x kc block stays in L2): the MR x NR micro-kernel. The C tile (MC x TW floats) stays
//     in L2 across the K blocks, so C goes to memory once.
//  3. A short, wide C with several K blocks (a weight gradient dW = dy^T x of a layer with at
//     most 256 outputs) is computed as C^T, whose tiles pack their own rows, and each tile is
//     stored transposed (same bits).
//  Very large operands are processed in chunks (rows of A, columns of B) to bound the packed
//  buffers; B chunks are double-buffered. There are no barriers: a thread waits only for work
//  another thread has claimed and not finished, so a late or preempted thread costs little.
//  Threads come from the shared OpenMP team (core/parallel.h), like every other kernel's: a
//  second pool of our own was measured to fight the OpenMP workers for the 2 cores (small GPT
//  training step 0.71x -> 1.06x PyTorch when removed).
//  Results do not depend on the thread count: every C element is summed in the same order.
#ifndef FG_ISA
#error "define FG_ISA, Ukr and gemm_blocking() before including matmul_body.h"
#endif
#include <immintrin.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include "core/parallel.h"
#include "ops/matmul.h"

namespace fg::FG_ISA {

namespace {

// Integer min / max for the code of this path: std::min<int64_t> & co. instantiated in an ISA's
// object are weak symbols that the linker merges with other objects' copies, so one copy (maybe
// compiled for AVX-512) would serve every path (issue 22). These have internal linkage.
int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t lmax(int64_t a, int64_t b) { return a < b ? b : a; }

constexpr int MR = Ukr::MR, NR = Ukr::NR;
static_assert(NR % 8 == 0, "packing moves B in 8-float vectors");
constexpr int64_t kMaxPackA = int64_t{32} << 20;  // bytes of packed A per row chunk
constexpr int64_t kMaxPackB = int64_t{8} << 20;   // bytes of packed B per column chunk (x2 buffers)

// Packing buffers are kept per calling thread between calls (up to kKeepBytes in all): fresh
// pages would cost a page fault and a zeroing per 4 KiB on every call, and returning them
// costs TLB shootdowns. Big buffers are 2 MiB aligned and asked for transparent huge pages.
constexpr size_t kKeepBytes = size_t{64} << 20;

struct Workspace {
  float* p = nullptr;
  size_t bytes = 0;
  float* get(size_t floats) {
    const size_t need = floats * sizeof(float);
    if (need <= bytes) return p;
    release();
    const size_t huge = size_t{2} << 20;
    const size_t align = need >= huge ? huge : 64;
    const size_t sz = (need + align - 1) / align * align;
    p = static_cast<float*>(std::aligned_alloc(align, sz));
    if (!p) throw std::bad_alloc();
    bytes = sz;
#ifdef MADV_HUGEPAGE
    if (align == huge) madvise(p, sz, MADV_HUGEPAGE);
#endif
    return p;
  }
  void release() {
    std::free(p);
    p = nullptr;
    bytes = 0;
  }
  ~Workspace() { release(); }
};

struct Workspaces {
  Workspace a, b[2];
  Workspace tile_a;  // one tile's block of A, packed by the thread running the tile
  Workspace tile_c;  // one tile of C, when C is stored transposed (Plan::c_trans)
  void trim() {
    if (a.bytes + b[0].bytes + b[1].bytes > kKeepBytes) {
      a.release();
      b[0].release();
      b[1].release();
    }
  }
};
thread_local Workspaces tls_ws;

// ---------------------------------------------------------------------------------------------
// Packing. K is cut into blocks; block `pb` covers [p0, p0 + kc). Packed layouts:
//   A: block at ap + p0 * Mpad, panel ip at + ip * MR * kc, element (p, r) at + p * MR + r.
//   B: block at bp + p0 * Npad, panel jp at + jp * NR * kc, element (p, q) at + p * NR + q.
// Rows of A past M and columns of B past N are packed as zeros.

// In-register transpose of 8 rows of 8 floats: on return r[j] holds column j.
inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// o[0:n] = v[0:n] for 0 < n < 8, writing nothing past o + n.
template <int n>
__attribute__((always_inline)) inline void store_first(float* o, __m256 v) {
  __m128 x = _mm256_castps256_ps128(v);
  if constexpr (n >= 4) {
    _mm_storeu_ps(o, x);
    x = _mm256_extractf128_ps(v, 1);
    o += 4;
  }
  if constexpr (n % 4 >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(o), x);
    x = _mm_movehl_ps(x, x);
    o += 2;
  }
  if constexpr (n % 2 == 1) _mm_store_ss(o, x);
}

// A(i, p) = a[i * lda + p] (A not transposed): one MR-row panel, K block [p0, p0 + kc).
// Each row is read contiguously; blocks of 8 rows x 8 p are transposed in registers.
void pack_a_rows(float* d, const float* a, int64_t lda, int64_t i0, int64_t mr, int64_t p0, int64_t kc) {
  constexpr int kG = (MR + 7) / 8;  // groups of 8 rows; the last holds MR - 8 (kG - 1) of them
  const float* s[kG * 8];
  for (int r = 0; r < kG * 8; ++r) s[r] = a + (i0 + lmin(r, mr - 1)) * lda + p0;
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    __m256 v[kG][8];
    for (int g = 0; g < kG; ++g) {
      for (int r = 0; r < 8; ++r)
        v[g][r] = g * 8 + r < mr ? _mm256_loadu_ps(s[g * 8 + r] + p) : _mm256_setzero_ps();
      transpose8(v[g]);
    }
    float* o = d + p * MR;
    // v[g][j] = A(8g .. 8g+7, p+j): rows past MR are 0, and a full 8-float store of them
    // overlaps the start of column p+j+1, which is stored next and rewrites it; the last
    // column's store is masked so nothing is written past this block.
    for (int j = 0; j < 8; ++j)
      for (int g = 0; g < kG; ++g) {
        if (j == 7 && g == kG - 1 && MR % 8 != 0) {
          store_first<MR % 8>(o + j * MR + g * 8, v[g][j]);
        } else {
          _mm256_storeu_ps(o + j * MR + g * 8, v[g][j]);
        }
      }
  }
  for (; p < kc; ++p)
    for (int r = 0; r < MR; ++r) d[p * MR + r] = r < mr ? s[r][p] : 0.f;
}

// A(i, p) = a[p * lda + i] (A transposed): panels [ip0, ip1) of MR rows, K block [p0, p0 + kc).
// Walks the stored rows p, copying 6 contiguous floats into each panel. Each row contributes only
// (ip1 - ip0) * 24 bytes before the walk jumps to the next one, too little for the hardware
// prefetcher: the row kPfRows ahead is prefetched by hand (dW packs 2x faster).
// sums (with ip0 == 0 and at most kSumPanels panels, else null): sums[i] += A(i, p) for each p in
// order (from 0 when init), rows i < M.
constexpr int64_t kPfRows = 8;
constexpr int64_t kMaxMC = 512;                      // gemm_blocking().mc is at most this
constexpr int64_t kSumPanels = kMaxMC / MR + 1;
constexpr int kMRP = (MR + 3) / 4 * 4;               // a panel's row sums, padded to whole __m128s
// d[0:MR] = s[0:MR] (and acc[0:MR] += it) in chunks of 8, 4, 2 floats, no byte past MR.
__attribute__((always_inline)) inline void copy_panel_row(float* d, const float* s, float* acc) {
  int r = 0;
  for (; r + 8 <= MR; r += 8) {
    const __m256 x = _mm256_loadu_ps(s + r);
    _mm256_storeu_ps(d + r, x);
    if (acc) _mm256_storeu_ps(acc + r, _mm256_add_ps(_mm256_loadu_ps(acc + r), x));
  }
  if (MR - r >= 4) {
    const __m128 x = _mm_loadu_ps(s + r);
    _mm_storeu_ps(d + r, x);
    if (acc) _mm_storeu_ps(acc + r, _mm_add_ps(_mm_loadu_ps(acc + r), x));
    r += 4;
  }
  if (MR - r >= 2) {  // acc is padded to 4: the upper two lanes add 0
    const __m128 x = _mm_loadl_pi(_mm_setzero_ps(), reinterpret_cast<const __m64*>(s + r));
    _mm_storel_pi(reinterpret_cast<__m64*>(d + r), x);
    if (acc) _mm_storeu_ps(acc + r, _mm_add_ps(_mm_loadu_ps(acc + r), x));
    r += 2;
  }
  if (MR - r == 1) {
    d[r] = s[r];
    if (acc) acc[r] += s[r];
  }
}
void pack_a_cols(float* dblk, const float* a, int64_t lda, int64_t M, int64_t ip0, int64_t ip1, int64_t p0,
                 int64_t kc, float* sums = nullptr, bool init = false) {
  const int64_t span = (lmin(M, ip1 * MR) - ip0 * MR) * int64_t(sizeof(float));  // bytes per row
  alignas(16) float acc[kSumPanels * kMRP];  // panel ip's rows at acc[ip * kMRP + r]; lanes past MR unused
  if (sums) {
    for (int64_t i = 0; i < ip1 * kMRP; ++i) acc[i] = 0.f;
    if (!init)
      for (int64_t i = 0; i < M; ++i) acc[i / MR * kMRP + i % MR] = sums[i];
  }
  for (int64_t p = 0; p < kc; ++p) {
    const float* s = a + (p0 + p) * lda;
    if (p + kPfRows < kc) {
      const char* pf = reinterpret_cast<const char*>(s + kPfRows * lda + ip0 * MR);
      for (int64_t off = 0; off < span; off += 64) _mm_prefetch(pf + off, _MM_HINT_T0);
      _mm_prefetch(pf + span - 1, _MM_HINT_T0);
    }
    for (int64_t ip = ip0; ip < ip1; ++ip) {
      float* d = dblk + ip * MR * kc + p * MR;
      const int64_t i = ip * MR;
      if (i + MR <= M) {
        copy_panel_row(d, s + i, sums ? acc + ip * kMRP : nullptr);
      } else {
        for (int r = 0; r < MR; ++r) d[r] = i + r < M ? s[i + r] : 0.f;
        if (sums)
          for (int r = 0; r < MR && i + r < M; ++r) acc[ip * kMRP + r] += s[i + r];
      }
    }
  }
  if (sums)
    for (int64_t i = 0; i < M; ++i) sums[i] = acc[i / MR * kMRP + i % MR];
}

// B(p, j) = b[p * ldb + j] (B not transposed): panels [jp0, jp1) of NR columns, K block.
void pack_b_rows(float* dblk, const float* b, int64_t ldb, int64_t N, int64_t jp0, int64_t jp1, int64_t p0,
                 int64_t kc) {
  for (int64_t p = 0; p < kc; ++p) {
    const float* s = b + (p0 + p) * ldb;
    for (int64_t jp = jp0; jp < jp1; ++jp) {
      float* d = dblk + jp * NR * kc + p * NR;
      const int64_t j = jp * NR;
      if (j + NR <= N) {
        for (int q = 0; q < NR; q += 8) _mm256_store_ps(d + q, _mm256_loadu_ps(s + j + q));
      } else {
        for (int q = 0; q < NR; ++q) d[q] = j + q < N ? s[j + q] : 0.f;
      }
    }
  }
}

// B(p, j) = b[j * ldb + p] (B transposed): one NR-column panel, K block; 8x8 transposes.
void pack_b_cols(float* d, const float* b, int64_t ldb, int64_t j0, int64_t nr, int64_t p0, int64_t kc) {
  const float* s[NR];
  for (int q = 0; q < NR; ++q) s[q] = b + (j0 + lmin(q, nr - 1)) * ldb + p0;
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    for (int h = 0; h < NR / 8; ++h) {
      __m256 v[8];
      for (int q = 0; q < 8; ++q) v[q] = h * 8 + q < nr ? _mm256_loadu_ps(s[h * 8 + q] + p) : _mm256_setzero_ps();
      transpose8(v);
      for (int j = 0; j < 8; ++j) _mm256_store_ps(d + (p + j) * NR + h * 8, v[j]);
    }
  }
  for (; p < kc; ++p)
    for (int q = 0; q < NR; ++q) d[p * NR + q] = q < nr ? s[q][p] : 0.f;
}

// ---------------------------------------------------------------------------------------------
struct Plan {
  int64_t M, N, K;
  bool ta, tb, accumulate;
  const float* a;
  const float* b;
  float* c;
  const float* bias;        // (N,) added to every row of C by the first K block, or nullptr
  const float* residual;    // (M, N) added to C by the last K block, or nullptr (not the last pass)
  float* a_row_sums;        // GemmExtras::a_row_sums, or nullptr
  bool first_pass;          // this pass holds the first K chunk of the product
  bool sums_in_pack;        // a_row_sums summed by the tiles while they pack A (else a plain pass)
  int64_t lda, ldb;         // row strides of a and b as stored
  int64_t kcb, nkb;         // K block size and count: block pb covers [pb*kcb, min(K, +kcb))
  int64_t mch, nch;         // rows / columns per chunk (multiples of MR / NR)
  int64_t tm, tw;           // tile rows / columns (multiples of MR / NR)
  bool tile_packs_a;        // each tile packs its own rows of A, one K block at a time
  bool c_trans;             // the product is C^T: element (i, j) goes to c[j * M + i] (see sgemm)
};

// Packs panels [ip0, ip1) of rows [m0, m0 + mrows) of op(A), K blocks [pb0, pb1), into ap.
__attribute__((noinline)) void pack_a_range(const Plan& P, float* ap, int64_t m0, int64_t mrows, int64_t ip0,
                                            int64_t ip1, int64_t pb0, int64_t pb1) {
  const int64_t mpad = (mrows + MR - 1) / MR * MR;
  for (int64_t pb = pb0; pb < pb1; ++pb) {
    const int64_t p0 = pb * P.kcb, kc = lmin(P.kcb, P.K - p0);
    float* blk = ap + p0 * mpad;
    if (!P.ta) {
      for (int64_t ip = ip0; ip < ip1; ++ip)
        pack_a_rows(blk + ip * MR * kc, P.a, P.lda, m0 + ip * MR, lmin(MR, mrows - ip * MR), p0, kc);
    } else {
      // A stored (K, M): shift the origin to row m0 so panel indices are chunk-relative.
      pack_a_cols(blk, P.a + m0, P.lda, mrows, ip0, ip1, p0, kc);
    }
  }
}

// The same for panels [jp0, jp1) of columns [n0, n0 + ncols) of op(B).
__attribute__((noinline)) void pack_b_range(const Plan& P, float* bp, int64_t n0, int64_t ncols, int64_t jp0,
                                            int64_t jp1, int64_t pb0, int64_t pb1) {
  const int64_t npad = (ncols + NR - 1) / NR * NR;
  for (int64_t pb = pb0; pb < pb1; ++pb) {
    const int64_t p0 = pb * P.kcb, kc = lmin(P.kcb, P.K - p0);
    float* blk = bp + p0 * npad;
    if (!P.tb) {
      pack_b_rows(blk, P.b + n0, P.ldb, ncols, jp0, jp1, p0, kc);
    } else {
      for (int64_t jp = jp0; jp < jp1; ++jp)
        pack_b_cols(blk + jp * NR * kc, P.b, P.ldb, n0 + jp * NR, lmin(NR, ncols - jp * NR), p0, kc);
    }
  }
}

// Packs rows [r0, r0 + rows) of op(A), K block [p0, p0 + kc), into d as consecutive MR x kc panels.
// sums (rows,) or null: sums[r] += A(r0 + r, p) for the block's p in order (from 0 when init).
void pack_a_block(const Plan& P, float* d, int64_t r0, int64_t rows, int64_t p0, int64_t kc, float* sums,
                  bool init) {
  const int64_t npan = (rows + MR - 1) / MR;
  if (!P.ta) {
    for (int64_t ip = 0; ip < npan; ++ip)
      pack_a_rows(d + ip * MR * kc, P.a, P.lda, r0 + ip * MR, lmin(MR, rows - ip * MR), p0, kc);
    if (sums)
      for (int64_t r = 0; r < rows; ++r) {
        const float* s = P.a + (r0 + r) * P.lda + p0;
        float acc = init ? 0.f : sums[r];
        for (int64_t p = 0; p < kc; ++p) acc += s[p];
        sums[r] = acc;
      }
  } else {
    pack_a_cols(d, P.a + r0, P.lda, rows, 0, npan, p0, kc, sums, init);
  }
}

// sums[i] (+)= sum over p < K of op(A)(i, p) in p order (from 0 when init), rows split between
// threads. a_row_sums where tiles do not pack their own A, or C is empty.
void row_sums_plain(float* sums, const float* a, int64_t M, int64_t K, int64_t lda, bool ta, bool init) {
  parallel_for(M, 64, [&](int64_t b, int64_t e) {
    if (init)
      for (int64_t i = b; i < e; ++i) sums[i] = 0.f;
    if (ta) {
      for (int64_t p = 0; p < K; ++p)
        for (int64_t i = b; i < e; ++i) sums[i] += a[p * lda + i];
    } else {
      for (int64_t i = b; i < e; ++i) {
        float acc = sums[i];
        for (int64_t p = 0; p < K; ++p) acc += a[i * lda + p];
        sums[i] = acc;
      }
    }
  });
}

// With P.tile_packs_a: packs K block pb of the rows [i0, i0 + mt) of the tile at (i0, j0) of the chunk
// at (m0, n0) into this thread's tile buffer (run_tile reads it from there). A's row sums are summed here
// by the tiles of the first column of the first column chunk (packing is the only read of these
// rows there).
void pack_tile_a(const Plan& P, int64_t m0, int64_t n0, int64_t i0, int64_t j0, int64_t mt, int64_t pb) {
  float* own_a = tls_ws.tile_a.get(P.tm * P.kcb + 64);
  const int64_t p0 = pb * P.kcb, kc = lmin(P.kcb, P.K - p0);
  float* sums = P.sums_in_pack && n0 == 0 && j0 == 0 ? P.a_row_sums + m0 + i0 : nullptr;
  pack_a_block(P, own_a, m0 + i0, mt, p0, kc, sums, P.first_pass && pb == 0);
}

// One C tile: rows [i0, i0 + mt) x cols [j0, j0 + nt) relative to the chunk origin (m0, n0).
// With P.tile_packs_a, A comes from the caller's thread-local block buffer instead of ap: no other
// tile reads these rows, so packing them here (into L2) replaces a shared pass through memory.
// a0_packed: the first K block is in that buffer already (packed while waiting for B's packing).
__attribute__((noinline)) void run_tile(const Plan& P, const float* ap, int64_t mpad, const float* bp, int64_t npad, int64_t m0,
              int64_t mrows, int64_t n0, int64_t ncols, int64_t i0, int64_t mt, int64_t j0, int64_t nt,
              bool a0_packed) {
  float* own_a = P.tile_packs_a ? tls_ws.tile_a.get(P.tm * P.kcb + 64) : nullptr;
  // With c_trans the tile is summed in a thread-local buffer (it stays in L2 across K, as C's
  // tile would), padded to whole micro-tiles, and stored transposed after the last K block.
  const int64_t ldt = (nt + NR - 1) / NR * NR;
  float* tbuf = P.c_trans ? tls_ws.tile_c.get((mt + MR - 1) / MR * MR * ldt + 64) : nullptr;
  for (int64_t pb = 0; pb < P.nkb; ++pb) {
    const int64_t p0 = pb * P.kcb, kc = lmin(P.kcb, P.K - p0);
    const bool add = P.accumulate || pb > 0;
    const float* bias = !add && P.bias ? P.bias + n0 : nullptr;
    const float* res = pb == P.nkb - 1 ? P.residual : nullptr;
    const float* ablk = own_a ? own_a : ap + p0 * mpad;
    const int64_t ifirst = own_a ? i0 : 0;  // panel (i - ifirst) / MR of ablk holds rows i..i+5
    if (own_a && (pb > 0 || !a0_packed)) pack_tile_a(P, m0, n0, i0, j0, mt, pb);
    const float* bblk = bp + p0 * npad;
    for (int64_t j = j0; j < j0 + nt; j += NR) {
      const float* bpp = bblk + (j / NR) * NR * kc;
      const int64_t nr = lmin(NR, ncols - j);
      for (int64_t i = i0; i < i0 + mt; i += MR) {
        const float* app = ablk + ((i - ifirst) / MR) * MR * kc;
        if (tbuf) {  // the packed panels are zero-padded: whole micro-tiles, also at the edges
          Ukr::full(kc, app, bpp, tbuf + (i - i0) * ldt + (j - j0), ldt, add, nullptr, nullptr);
          continue;
        }
        const int64_t mr = lmin(MR, mrows - i);
        float* cij = P.c + (m0 + i) * P.N + n0 + j;
        const float* bj = bias ? bias + j : nullptr;
        const float* rij = res ? res + (m0 + i) * P.N + n0 + j : nullptr;
        if (mr == MR && nr == NR)
          Ukr::full(kc, app, bpp, cij, P.N, add, bj, rij);
        else
          Ukr::edge(kc, app, bpp, cij, P.N, mr, nr, add, bj, rij);
      }
    }
  }
  if (tbuf) {
    // tile (i, j) -> c[(n0 + j0 + j) * M + m0 + i0 + i], 8x8 blocks transposed in registers
    float* cbase = P.c + (n0 + j0) * P.M + m0 + i0;
    int64_t i = 0;
    for (; i + 8 <= mt; i += 8) {
      int64_t j = 0;
      for (; j + 8 <= nt; j += 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = _mm256_loadu_ps(tbuf + (i + r) * ldt + j);
        transpose8(v);
        for (int r = 0; r < 8; ++r) _mm256_storeu_ps(cbase + (j + r) * P.M + i, v[r]);
      }
      for (; j < nt; ++j)
        for (int r = 0; r < 8; ++r) cbase[j * P.M + i + r] = tbuf[(i + r) * ldt + j];
    }
    for (; i < mt; ++i)
      for (int64_t j = 0; j < nt; ++j) cbase[j * P.M + i] = tbuf[i * ldt + j];
  }
}


// One pass over K (all of it, or one K chunk of a longer product: see sgemm) with K blocks of
// kcb. a and b point at the chunk's first K index; lda and ldb are the stored row strides.
// first / last: this pass holds the product's first / last K chunk.
// c_trans: store the product transposed (c is (N, M)); not with accumulate, bias or residual.
void sgemm_pass(float* c, const float* a, const float* b, const GemmExtras& ex, int64_t M, int64_t N, int64_t K,
                int64_t lda, int64_t ldb, bool trans_a, bool trans_b, bool accumulate, int nthreads, int64_t kcb,
                bool first, bool last, bool c_trans = false) {
  Plan P;
  P.M = M; P.N = N; P.K = K; P.ta = trans_a; P.tb = trans_b; P.accumulate = accumulate;
  P.a = a; P.b = b; P.c = c; P.bias = accumulate ? nullptr : ex.bias; P.lda = lda; P.ldb = ldb;
  P.a_row_sums = ex.a_row_sums;
  P.residual = last ? ex.residual : nullptr;
  P.c_trans = c_trans;
  P.first_pass = first;
  P.kcb = kcb;
  P.nkb = (K + kcb - 1) / kcb;
  const GemmBlocking& G = gemm_blocking();
  const int64_t MC = G.mc, TW = G.tw;
  // Chunks bound the packed buffers (usually one chunk each way).
  P.nch = lmax(TW, kMaxPackB / (4 * K) / TW * TW);
  const int64_t nch = lmin(P.nch, (N + NR - 1) / NR * NR);
  const int64_t n_nchunks = (N + nch - 1) / nch;

  // Threads: serial below ~30 us of work (square ~115): waking a second thread costs more
  // than it gains there (measured: 2 threads at square 128-192 are 1.3-1.5x faster than 1).
  const double flops = 2.0 * M * N * K;
  int nt = nthreads < 1 ? 1 : nthreads;
  if (flops < 3e6) nt = 1;

  // Tiles that span all columns of a chunk read rows of A no other tile reads: then each tile
  // packs its own A, one K block at a time, into a thread-local buffer that stays in L2, and
  // there is no shared pass over A (half of A's memory traffic, and no wait for it). Possible
  // with one K block (C is written once, so a tile may be as wide as the chunk) or when the
  // chunk is at most TW wide (the C tile stays in L2 across K blocks), provided there are
  // enough row tiles for the threads.
  P.tile_packs_a = false;
  {
    const int64_t nc0 = lmin(nch, N);
    if (P.nkb == 1 || nc0 <= TW) {
      const int64_t ntm0 = (M + MC - 1) / MC;
      double best = 1e300;
      for (int64_t ntm = ntm0; ntm <= (nt > 1 ? 2 * ntm0 + 1 : ntm0); ++ntm) {
        const int64_t tm = ((M + ntm - 1) / ntm + MR - 1) / MR * MR, t = (M + tm - 1) / tm;
        const double cost = double((t + nt - 1) / nt) * (double(tm) * double(nc0) + 4.0 * double(tm + nc0));
        if (t >= nt && cost < best * (1 - 1e-9)) {
          best = cost;
          P.tm = tm;
          P.tw = (nc0 + NR - 1) / NR * NR;
          P.tile_packs_a = true;
        }
      }
    }
  }
  P.sums_in_pack = P.a_row_sums && P.tile_packs_a && P.tm <= kSumPanels * MR;
  P.mch = P.tile_packs_a ? (M + MR - 1) / MR * MR : lmax(MC, kMaxPackA / (4 * K) / MC * MC);
  const int64_t mch = lmin(P.mch, (M + MR - 1) / MR * MR);
  const int64_t n_mchunks = (M + mch - 1) / mch;

  // Tiles: about MC x TW, evened out over the chunk. With several threads, more and smaller
  // tiles where that shortens the estimated finish: the busiest thread runs ceil(tiles / nt)
  // tiles, each costing its area tm * tw plus ~4 (tm + tw) for streaming its A and B panels
  // in (e.g. 15 row tiles become 16, so 2 threads get 8 each instead of 8 and 7). The tile
  // shape never changes the order in which a C element is summed.
  {
    const int64_t mr0 = lmin(mch, M), nc0 = lmin(nch, N);
    auto shape = [&](int64_t ntm, int64_t ntn, int64_t& tm, int64_t& tw) {
      tm = ((mr0 + ntm - 1) / ntm + MR - 1) / MR * MR;
      tw = ((nc0 + ntn - 1) / ntn + NR - 1) / NR * NR;
      return ((mr0 + tm - 1) / tm) * ((nc0 + tw - 1) / tw);
    };
    const int64_t ntm0 = (mr0 + MC - 1) / MC, ntn0 = (nc0 + TW - 1) / TW;
    int64_t tiles = P.tile_packs_a ? (mr0 + P.tm - 1) / P.tm * ((nc0 + P.tw - 1) / P.tw) : shape(ntm0, ntn0, P.tm, P.tw);
    if (nt > 1 && !P.tile_packs_a) {
      double best = 1e300;
      for (int64_t ntm = ntm0; ntm <= 2 * ntm0 + 1; ++ntm)
        for (int64_t ntn = ntn0; ntn <= 2 * ntn0 + 1; ++ntn) {
          int64_t tm, tw;
          const int64_t t = shape(ntm, ntn, tm, tw);
          const double cost = double((t + nt - 1) / nt) * (double(tm) * double(tw) + 4.0 * double(tm + tw));
          if (cost < best * (1 - 1e-9)) {
            best = cost;
            P.tm = tm;
            P.tw = tw;
            tiles = t;
          }
        }
    }
    if (n_mchunks * n_nchunks == 1) nt = static_cast<int>(lmin(nt, tiles));
  }

  const bool two_b = n_nchunks > 1;
  Workspaces& ws = tls_ws;
  float* abufp = P.tile_packs_a ? nullptr : ws.a.get(mch * K + 64);
  float* bbufs[2] = {ws.b[0].get(nch * K + 64), two_b ? ws.b[1].get(nch * K + 64) : nullptr};

  // Phases: one per (row chunk, column chunk), usually just one. Each has a packing step and a
  // tile step, each handed out through an atomic counter. No barriers: a thread only waits for
  // work that another thread has claimed and not yet finished (the packing its tiles read, or
  // the tiles still reading a buffer it is about to overwrite). A thread that starts late
  // (e.g. preempted on a shared machine) simply finds less work left.
  struct Phase {
    int64_t m0, mrows, n0, ncols, na, nb, ntm, ntn;
    float* bp;
    std::atomic<int64_t> pack_next{0}, pack_done{0}, tile_next{0}, tile_done{0};
  };
  // Packing items: a group of panels times either all K blocks (when each panel's source rows
  // are contiguous along K: A as stored, B transposed) or one K block (when the source is read
  // across panels, row by row: A transposed, B as stored; short rows keep the TLB happy).
  const int64_t a_pg = trans_a ? 32 : 8, a_kb = trans_a ? P.nkb : 1;   // panels, K splits
  // B's items are made small enough for two per thread: one item left to a single thread kept the
  // others waiting (a 768 x 256 B as stored packed 100 us in one item while the other thread
  // waited; with the early A packing below, the small model's dW and dx products ran up to 1.11x
  // faster: README's Performance section).
  const int64_t b_kb = trans_b ? 1 : P.nkb;
  int64_t b_pg = trans_b ? 4 : 16;
  if (nt > 1) {
    const int64_t npan0 = (lmin(nch, N) + NR - 1) / NR;
    b_pg = lmax(1, lmin(b_pg, npan0 * b_kb / (2 * nt)));
  }
  const int64_t nphase = n_mchunks * n_nchunks;
  std::vector<Phase> ph(nphase);
  for (int64_t q = 0; q < nphase; ++q) {
    Phase& f = ph[q];
    const int64_t mc = q / n_nchunks, nc = q % n_nchunks;
    f.m0 = mc * mch; f.mrows = lmin(mch, M - f.m0);
    f.n0 = nc * nch; f.ncols = lmin(nch, N - f.n0);
    f.na = nc == 0 && !P.tile_packs_a ? ((f.mrows + MR - 1) / MR + a_pg - 1) / a_pg * a_kb : 0;
    f.nb = ((f.ncols + NR - 1) / NR + b_pg - 1) / b_pg * b_kb;
    f.ntm = (f.mrows + P.tm - 1) / P.tm;
    f.ntn = (f.ncols + P.tw - 1) / P.tw;
    f.bp = bbufs[two_b ? q % 2 : 0];
  }
  auto wait_for = [](const std::atomic<int64_t>& x, int64_t target) {
    for (int spins = 0; x.load(std::memory_order_acquire) < target; ++spins) {
      _mm_pause();
      if (spins > 4096) { std::this_thread::yield(); spins = 0; }
    }
  };

  auto work = [&] {
    for (int64_t q = 0; q < nphase; ++q) {
      Phase& f = ph[q];
      const int64_t mpanels = (f.mrows + MR - 1) / MR, npanels = (f.ncols + NR - 1) / NR;
      // Buffers about to be overwritten must no longer be read: B's buffer was last used by phase
      // q-2 (q-1 when single-buffered), A's by phase q-1 when this phase repacks A.
      const bool repack_a = f.na > 0 && q > 0;
      if (q >= 1 && (repack_a || !two_b)) wait_for(ph[q - 1].tile_done, ph[q - 1].ntm * ph[q - 1].ntn);
      if (q >= 2) wait_for(ph[q - 2].tile_done, ph[q - 2].ntm * ph[q - 2].ntn);
      // Pack: items [0, na) are A panel groups, then B panel groups.
      for (int64_t it; (it = f.pack_next.fetch_add(1, std::memory_order_relaxed)) < f.na + f.nb;) {
        if (it < f.na) {
          const int64_t ip0 = it / a_kb * a_pg, kb = it % a_kb;
          pack_a_range(P, abufp, f.m0, f.mrows, ip0, lmin(mpanels, ip0 + a_pg), a_kb == 1 ? 0 : kb,
                       a_kb == 1 ? P.nkb : kb + 1);
        } else {
          const int64_t jp0 = (it - f.na) / b_kb * b_pg, kb = (it - f.na) % b_kb;
          pack_b_range(P, f.bp, f.n0, f.ncols, jp0, lmin(npanels, jp0 + b_pg), b_kb == 1 ? 0 : kb,
                       b_kb == 1 ? P.nkb : kb + 1);
        }
        f.pack_done.fetch_add(1, std::memory_order_release);
      }
      // Tiles, column-major so consecutive tiles share the same packed B columns.
      const int64_t ntiles = f.ntm * f.ntn;
      auto claim = [&] { return f.tile_next.fetch_add(1, std::memory_order_relaxed); };
      // A thread that would wait for another's packing of B claims its first tile now and packs
      // that tile's first block of A meanwhile (it does not depend on B).
      int64_t it = -1;
      if (P.tile_packs_a && f.pack_done.load(std::memory_order_acquire) < f.na + f.nb) {
        it = claim();
        if (it < ntiles) {
          const int64_t i0 = it % f.ntm * P.tm;
          pack_tile_a(P, f.m0, f.n0, i0, it / f.ntm * P.tw, lmin(P.tm, f.mrows - i0), 0);
        }
      }
      const int64_t prepacked = it;
      wait_for(f.pack_done, f.na + f.nb);
      // The packed A this phase reads may come from an earlier phase of the same row chunk.
      // (Its packing finished before that phase's tiles could start, which we waited for.)
      for (it = it < 0 ? claim() : it; it < ntiles; it = claim()) {
        const int64_t ti = it % f.ntm, tj = it / f.ntm;
        const int64_t i0 = ti * P.tm, j0 = tj * P.tw;
        run_tile(P, abufp, mpanels * MR, f.bp, npanels * NR, f.m0, f.mrows, f.n0, f.ncols, i0,
                 lmin(P.tm, f.mrows - i0), j0, lmin(P.tw, f.ncols - j0), it == prepacked);
        f.tile_done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  // The OpenMP team's workers keep spinning between back-to-back calls, and one that starts
  // late only costs its share (the work is handed out dynamically).
  parallel_region(nt, [&](int, int) { work(); });
  if (P.a_row_sums && !P.sums_in_pack) row_sums_plain(P.a_row_sums, a, M, K, lda, trans_a, first);
  ws.trim();
}

}  // namespace

void sgemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
           bool trans_b, bool accumulate, int nthreads, const GemmExtras& extras) {
  if (M <= 0) return;
  if (N <= 0 || K <= 0) {
    if (extras.a_row_sums) row_sums_plain(extras.a_row_sums, a, M, lmax(K, 0), trans_a ? M : K, trans_a, true);
    if (N <= 0) return;
  }
  GemmExtras ex = extras;
  if (accumulate) ex.bias = nullptr;
  if (K <= 0) {
    const float* r = ex.residual;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const float v = accumulate ? c[i * N + j] : ex.bias ? ex.bias[j] : 0.f;
        c[i * N + j] = r ? v + r[i * N + j] : v;
      }
    return;
  }
  const GemmBlocking& G = gemm_blocking();
  const int64_t KC = G.kc, TW = G.tw;
  // K blocks of nearly equal size <= KC (a multiple of 8 when K allows).
  int64_t nkb = (K + KC - 1) / KC;
  int64_t kcb = (K + nkb - 1) / nkb;
  if (nkb > 1) kcb = lmin(KC, (kcb + 7) / 8 * 8);
  nkb = (K + kcb - 1) / kcb;
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
  // Long K (e.g. dx of a vocabulary head, K = 50304): packing all of A would take row chunks
  // of one tile row each, leaving one tile per phase. Instead cut K into chunks (whole K blocks,
  // at least 8) for which all of A and, where possible, all of B fit the packing limits, and
  // accumulate over the chunks: each C element still adds the same K blocks in the same order.
  int64_t kchunk = nkb;
  const int64_t mpad = (M + MR - 1) / MR * MR, npad = (N + NR - 1) / NR * NR;
  // Several K blocks, C wider than a tile and at most a tile tall (a weight gradient
  // dW (out, in) = dy^T x with out <= 256 < in): then no tile may pack its own A, and all of op(B)
  // is packed up front. C^T = op(B)^T op(A)^T has the shape the tiles handle best (each packs
  // its own rows, only the smaller operand is packed up front), so that is computed instead and
  // each tile is stored transposed. Every element is the same sum of the same products in the
  // same order (x * y == y * x exactly), so the bits are those of the direct product.
  if (!accumulate && !ex.bias && !ex.residual && nkb > 1 && N > TW && M <= TW && npad * K * 4 <= kMaxPackA &&
      mpad * K * 4 <= kMaxPackB) {
    sgemm_pass(c, b, a, {}, N, M, K, ldb, lda, !trans_b, !trans_a, false, nthreads, kcb, true, true,
               /*c_trans=*/true);
    if (ex.a_row_sums) row_sums_plain(ex.a_row_sums, a, M, K, lda, trans_a, true);
    return;
  }
  if (mpad * K * 4 > kMaxPackA)
    kchunk = lmax(8, lmin(kMaxPackA / (4 * mpad * kcb), kMaxPackB / (4 * npad * kcb)));
  for (int64_t pb = 0; pb < nkb; pb += kchunk) {
    const int64_t p0 = pb * kcb, kc = lmin(K - p0, kchunk * kcb);
    const float* ak = trans_a ? a + p0 * lda : a + p0;
    const float* bk = trans_b ? b + p0 : b + p0 * ldb;
    sgemm_pass(c, ak, bk, ex, M, N, kc, lda, ldb, trans_a, trans_b, accumulate || pb > 0, nthreads, kcb, pb == 0,
               pb + kchunk >= nkb);
  }
}

}  // namespace fg::FG_ISA
