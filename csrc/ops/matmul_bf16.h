// Matrix products with bfloat16 operands and float32 accumulation (mixed precision), fp32 in and out.
//   a: (M, K) row-major, or (K, M) when trans_a;  b: (K, N) row-major, or (N, K) when trans_b
//   c: (M, N) row-major; overwritten (=) unless `accumulate` (then +=).
//   bias (N,) and residual (M, N, row-major), each optional (null), only without accumulate:
//   c = (op(a) op(b) + bias) + residual, float32 additions in that order (linear's epilogue).
// Each operand element is rounded to bfloat16 (round to nearest even; NaN stays NaN) and the
// products are summed in float32: a product of two bfloat16 values is exact in float32, so every
// path computes the same function up to the order of the float32 sums (and, on the dot-product
// instructions, denormals read and written as zero):
//   amx          CPUs with AMX-BF16 (Intel Sapphire Rapids and later) once Linux grants the tile
//                state: TDPBF16PS on 16 x 32 bf16 tiles, a 32 x 32 block of C in four tiles
//                (matmul_bf16_amx_body.h). Written and tested through a software model of the
//                tiles ("amx_simulated") but not yet run on AMX hardware, so it is taken only when
//                asked for (FUSEGRAD_BF16_KERNEL=amx or set_bf16_kernel), never by "auto".
//   avx512_bf16  CPUs with AVX512_BF16 (Zen 4, Intel Cooper Lake and later) on the avx512 path:
//                operands packed once as K pairs (12-row tiles of A, 32-column panels of B), then a
//                12 x 32 micro-kernel of VDPBF16PS, one K pair per step, C summed over K in order.
//   emulated     everywhere else: operands rounded to bf16 values (kept as float32) and the float32
//                GEMM (fg::matmul) run on them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fg {

void matmul_bf16(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
                 bool trans_b, bool accumulate, const float* bias = nullptr, const float* residual = nullptr);

// The kernel matmul_bf16 takes now: "amx", "avx512_bf16", "amx_simulated" or "emulated".
const char* bf16_path();
bool cpu_has_avx512_bf16();
// Kernel choice: "auto" (AVX512_BF16 on the avx512 path where the CPU has it, else emulated) or one
// kernel by name, which is taken while the active ISA path allows it (all but "emulated" need the
// avx512 path) and "auto"'s choice otherwise. Returns false (and changes nothing) for a name this
// CPU or build cannot run. The first choice comes from FUSEGRAD_BF16_KERNEL (default auto);
// bf16_env_note() says when that could not be honoured.
bool set_bf16_kernel(const char* name);
bool bf16_kernel_runs(const char* name);  // this CPU and build run it (the ISA path aside)
std::vector<std::string> bf16_kernels_available();  // the names of those that do, "auto" aside
const char* bf16_kernel_setting();        // "auto" or the forced kernel's name
const char* bf16_env_note();

// float32 -> bfloat16 bits, round to nearest even; NaN -> a quiet NaN of the same sign. static:
// each translation unit (compiled with its own ISA flags) keeps its own copy.
static inline uint16_t bf16_round(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
static inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

namespace avx512_bf16 {
// c (=|+=) op(a) op(b) on the VDPBF16PS kernel; same operands as matmul_bf16, K > 0. Threads split the
// work. bias / res (or null): the epilogue, added in the last K block's stores.
void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          bool accumulate, const float* bias, const float* res);
// The AMX kernel with its tile operations done in software (slow): tests its packing and tiling
// on CPUs without AMX. Needs AVX512_BF16 (the packing uses it).
void gemm_amx_simulated(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
                        bool trans_b, bool accumulate);
}  // namespace avx512_bf16

namespace amx {
// The AMX-BF16 kernel; call only when cpu_amx_bf16() (core/cpu.h) is true.
void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          bool accumulate);
}  // namespace amx

}  // namespace fg
