// bf16 matrix products: path choice and the emulated path (see matmul_bf16.h).
#include "ops/matmul_bf16.h"

#include <vector>

#include "core/cpu.h"
#include "core/parallel.h"
#include "ops/matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace fg {

bool cpu_has_avx512_bf16() {
#if defined(FUSEGRAD_HAVE_AVX512BF16_BUILD) && (defined(__x86_64__) || defined(__i386__))
  static const bool has = [] {
    if (!isa_supported(Isa::avx512)) return false;  // also checks the OS's ZMM state
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 1, a, b, c, d);
    return (a & (1u << 5)) != 0;  // CPUID.(EAX=7,ECX=1):EAX[5] AVX512_BF16
  }();
  return has;
#else
  return false;
#endif
}

const char* bf16_path() { return cpu_has_avx512_bf16() && use_avx512() ? "avx512_bf16" : "emulated"; }

namespace {

// Rounds a float32 matrix to bf16 values kept in float32, in its own layout.
std::vector<float> rounded(const float* x, int64_t n) {
  std::vector<float> r(static_cast<size_t>(n));
  parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) r[i] = bf16_to_float(bf16_round(x[i]));
  });
  return r;
}

}  // namespace

void matmul_bf16(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool trans_a,
                 bool trans_b, bool accumulate) {
  if (M <= 0 || N <= 0) return;
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
  if (cpu_has_avx512_bf16() && use_avx512() && K > 0) {
    avx512_bf16::gemm(c, a, b, M, N, K, trans_a, trans_b, accumulate);
    return;
  }
#endif
  const std::vector<float> ra = rounded(a, M * K), rb = rounded(b, K * N);
  matmul<float>(c, ra.data(), rb.data(), 1, M, N, K, trans_a, trans_b, accumulate, 0, 0);
}

}  // namespace fg
