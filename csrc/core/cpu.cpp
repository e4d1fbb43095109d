// Run-time CPU feature detection and ISA selection (see cpu.h).
#include "core/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fg {

bool avx2_compiled() {
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
  return true;
#else
  return false;
#endif
}

bool cpu_has_avx2_fma() {
#if defined(FUSEGRAD_HAVE_AVX2_BUILD) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

static Isa initial_isa() {
  const bool can = cpu_has_avx2_fma();
  const char* env = std::getenv("FUSEGRAD_ISA");
  if (env && std::strcmp(env, "portable") == 0) return Isa::portable;
  return can ? Isa::avx2 : Isa::portable;  // "avx2" on a CPU without it falls back
}

static std::atomic<int>& isa_state() {
  static std::atomic<int> state{static_cast<int>(initial_isa())};
  return state;
}

Isa active_isa() { return static_cast<Isa>(isa_state().load(std::memory_order_relaxed)); }
void set_active_isa(Isa isa) { isa_state().store(static_cast<int>(isa), std::memory_order_relaxed); }
const char* isa_name(Isa isa) { return isa == Isa::avx2 ? "avx2" : "portable"; }

}  // namespace fg
