// bf16 matrix products: path choice and the emulated path (see matmul_bf16.h).
#include "ops/matmul_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
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

namespace {

enum class Bf16Kernel { automatic = 0, emulated, avx512_bf16, amx_simulated, amx };
constexpr const char* kBf16Names[] = {"auto", "emulated", "avx512_bf16", "amx_simulated", "amx"};

bool parse_bf16(const char* name, Bf16Kernel* out) {
  for (int i = 0; i < 5; ++i)
    if (std::strcmp(name, kBf16Names[i]) == 0) {
      *out = static_cast<Bf16Kernel>(i);
      return true;
    }
  return false;
}

bool runs(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::automatic:
    case Bf16Kernel::emulated: return true;
    case Bf16Kernel::avx512_bf16:
    case Bf16Kernel::amx_simulated: return cpu_has_avx512_bf16();
    case Bf16Kernel::amx:
#ifdef FUSEGRAD_HAVE_AMX_BUILD
      return cpu_has_avx512_bf16() && cpu_amx_bf16();
#else
      return false;
#endif
  }
  return false;
}

std::string& env_note() {
  static std::string note;
  return note;
}

std::atomic<int>& setting() {
  static std::atomic<int> s{[] {
    const char* env = std::getenv("FUSEGRAD_BF16_KERNEL");
    Bf16Kernel k = Bf16Kernel::automatic;
    if (env && *env && !(parse_bf16(env, &k) && runs(k))) {
      env_note() = std::string("FUSEGRAD_BF16_KERNEL='") + env + "' is not a kernel this CPU and build run " +
                   "(auto, emulated, avx512_bf16, amx_simulated, amx); using auto";
      k = Bf16Kernel::automatic;
    }
    return static_cast<int>(k);
  }()};
  return s;
}

// The kernel taken now: the forced one while the ISA path allows it, else auto's choice.
Bf16Kernel current() {
  const auto k = static_cast<Bf16Kernel>(setting().load(std::memory_order_relaxed));
  if (!use_avx512()) return Bf16Kernel::emulated;  // every kernel but emulated is AVX-512 code
  if (k != Bf16Kernel::automatic) return k;
  return cpu_has_avx512_bf16() ? Bf16Kernel::avx512_bf16 : Bf16Kernel::emulated;
}

}  // namespace

const char* bf16_path() { return kBf16Names[static_cast<int>(current())]; }

bool bf16_kernel_runs(const char* name) {
  Bf16Kernel k;
  return parse_bf16(name, &k) && runs(k);
}

std::vector<std::string> bf16_kernels_available() {
  std::vector<std::string> r;
  for (int i = 1; i < 5; ++i)  // every kernel by name, "auto" (0) aside
    if (runs(static_cast<Bf16Kernel>(i))) r.emplace_back(kBf16Names[i]);
  return r;
}

bool set_bf16_kernel(const char* name) {
  Bf16Kernel k;
  if (!parse_bf16(name, &k) || !runs(k)) return false;
  setting().store(static_cast<int>(k), std::memory_order_relaxed);
  return true;
}

const char* bf16_kernel_setting() { return kBf16Names[setting().load(std::memory_order_relaxed)]; }

const char* bf16_env_note() {
  (void)setting();
  return env_note().c_str();
}

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
                 bool trans_b, bool accumulate, const float* bias, const float* residual) {
  if (M <= 0 || N <= 0) return;
  const Bf16Kernel k = current();
  if (K <= 0) {  // the product is zero
    if (!accumulate) std::fill(c, c + M * N, 0.f);
  } else {
    switch (k) {
#ifdef FUSEGRAD_HAVE_AVX512BF16_BUILD
      case Bf16Kernel::avx512_bf16:  // the epilogue fused into the kernel's last stores
        avx512_bf16::gemm(c, a, b, M, N, K, trans_a, trans_b, accumulate, bias, residual);
        return;
      case Bf16Kernel::amx_simulated:
        avx512_bf16::gemm_amx_simulated(c, a, b, M, N, K, trans_a, trans_b, accumulate);
        break;
#endif
#ifdef FUSEGRAD_HAVE_AMX_BUILD
      case Bf16Kernel::amx: amx::gemm(c, a, b, M, N, K, trans_a, trans_b, accumulate); break;
#endif
      default: {
        const std::vector<float> ra = rounded(a, M * K), rb = rounded(b, K * N);
        matmul<float>(c, ra.data(), rb.data(), 1, M, N, K, trans_a, trans_b, accumulate, 0, 0);
      }
    }
  }
  if (bias || residual)  // the same additions, in the same order, as the fused epilogue
    parallel_for(M, std::max<int64_t>(1, (int64_t{1} << 14) / N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t j = 0; j < N; ++j) {
          float v = c[i * N + j];
          if (bias) v += bias[j];
          if (residual) v = residual[i * N + j] + v;
          c[i * N + j] = v;
        }
    });
}

}  // namespace fg
