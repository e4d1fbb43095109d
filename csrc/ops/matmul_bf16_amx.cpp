// AMX-BF16 kernel of matmul_bf16 (see matmul_bf16.h and matmul_bf16_amx_body.h). Compiled with the
// AVX-512 flags plus -mavx512bf16 -mamx-tile -mamx-bf16 and called only when cpu_amx_bf16() is true
// (CPUID, XCR0 and Linux's grant of the tile data state).
//
// The tile policy here maps each operation of the kernel body onto one AMX instruction. GCC's
// intrinsics for them are macros that paste the tile number into the instruction text, so the tile
// number must be a literal: hence one explicit specialization per C tile instead of a template on
// the number. Those asm statements take only the base address as an operand (no memory operand),
// so a compiler barrier keeps the buffer writes before a tile load and the reads after a tile store
// in order.
#include <immintrin.h>

#include "ops/matmul_bf16.h"
#include "ops/matmul_bf16_amx_body.h"

namespace fg::amx {

namespace {

inline void barrier() { __asm__ volatile("" ::: "memory"); }

struct HwTiles {
  static void configure() {
    // palette 1; tiles 0-7 all 16 rows of 64 bytes (C: 16 x 16 float32; A, B: 16 x 32 bf16)
    struct alignas(64) Config {
      unsigned char b[64];
    } cfg = {};
    cfg.b[0] = 1;
    for (int i = 0; i < 8; ++i) {
      cfg.b[16 + 2 * i] = 64;  // bytes per row, little-endian uint16 at offset 16 + 2 i
      cfg.b[48 + i] = 16;      // rows
    }
    // LDTILECFG with the whole 64-byte block as its memory operand (GCC 12's _tile_loadconfig
    // names only the first 8 bytes, so the other stores could legally be dropped)
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
  }
  static void release() { _tile_release(); }
  template <int I>
  static void c_zero();
  template <int I>
  static void c_load(const void* p, int64_t stride);
  template <int I>
  static void c_store(void* p, int64_t stride);
  static void step(const void* a0, const void* a1, const void* b, int64_t b_stride) {
    barrier();
    _tile_loadd(4, a0, 64);
    _tile_loadd(5, a1, 64);
    _tile_loadd(6, b, b_stride);
    _tile_loadd(7, static_cast<const char*>(b) + 64, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
};

#define FG_AMX_C_TILE(I)                                                                  \
  template <>                                                                             \
  void HwTiles::c_zero<I>() {                                                             \
    _tile_zero(I);                                                                        \
  }                                                                                       \
  template <>                                                                             \
  void HwTiles::c_load<I>(const void* p, int64_t stride) {                                \
    barrier();                                                                            \
    _tile_loadd(I, p, stride);                                                            \
  }                                                                                       \
  template <>                                                                             \
  void HwTiles::c_store<I>(void* p, int64_t stride) {                                     \
    _tile_stored(I, p, stride);                                                           \
    barrier();                                                                            \
  }
FG_AMX_C_TILE(0)
FG_AMX_C_TILE(1)
FG_AMX_C_TILE(2)
FG_AMX_C_TILE(3)
#undef FG_AMX_C_TILE

}  // namespace

void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          bool accumulate) {
  amx_body::gemm<HwTiles>(c, a, b, M, N, K, trans_a, trans_b, accumulate);
}

}  // namespace fg::amx
