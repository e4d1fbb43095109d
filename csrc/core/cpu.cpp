// Run-time CPU feature detection and ISA selection (see cpu.h).
#include "core/cpu.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define FG_X86_CPUID 1
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fg {

bool isa_compiled(Isa isa) {
  switch (isa) {
    case Isa::portable: return true;
#ifdef FUSEGRAD_HAVE_AVX2_BUILD
    case Isa::avx2: return true;
#endif
#ifdef FUSEGRAD_HAVE_AVX512_BUILD
    case Isa::avx512: return true;
#endif
    default: return false;
  }
}

namespace {

#ifdef FG_X86_CPUID
// XCR0, the register in which the OS says which vector state it saves on a context switch.
// Read with the raw opcode so this file needs no -mxsave.
uint64_t xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

struct Features {
  bool avx2 = false, avx512 = false;
};

Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  const uint64_t x = xcr0();
  const bool os_ymm = (x & 0x6) == 0x6;            // SSE + AVX (YMM upper halves) state
  const bool os_zmm = (x & 0xE6) == 0xE6;          // + opmask, ZMM0-15 upper halves, ZMM16-31
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31);
  f.avx2 = os_ymm && avx2 && fma && f16c;
  f.avx512 = f.avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  return f;
}
#endif

bool cpu_runs(Isa isa) {
#ifdef FG_X86_CPUID
  static const Features f = detect();
  switch (isa) {
    case Isa::portable: return true;
    case Isa::avx2: return f.avx2;
    case Isa::avx512: return f.avx512;
  }
  return false;
#else
  return isa == Isa::portable;
#endif
}

std::string& env_note() {
  static std::string note;
  return note;
}

Isa highest_supported_at_or_below(Isa want) {
  for (int i = static_cast<int>(want); i > 0; --i)
    if (isa_supported(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::portable;
}

Isa initial_isa() {
  const Isa best = best_isa();
  const char* env = std::getenv("FUSEGRAD_ISA");
  if (!env || !*env || std::strcmp(env, "auto") == 0) return best;
  Isa want;
  if (!parse_isa(env, &want)) {
    env_note() = std::string("FUSEGRAD_ISA='") + env + "' is not one of auto, portable, avx2, avx512; using " +
                 isa_name(best);
    return best;
  }
  const Isa got = highest_supported_at_or_below(want);
  if (got != want)
    env_note() = std::string("FUSEGRAD_ISA=") + env + ": this " +
                 (isa_compiled(want) ? "CPU (or its OS) cannot run it" : "build does not include it") +
                 "; using " + isa_name(got);
  return got;
}

std::atomic<int>& isa_state() {
  static std::atomic<int> state{static_cast<int>(initial_isa())};
  return state;
}

}  // namespace

bool isa_supported(Isa isa) { return isa_compiled(isa) && cpu_runs(isa); }

Isa best_isa() { return highest_supported_at_or_below(Isa::avx512); }

Isa active_isa() { return static_cast<Isa>(isa_state().load(std::memory_order_relaxed)); }
void set_active_isa(Isa isa) { isa_state().store(static_cast<int>(isa), std::memory_order_relaxed); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "portable";
  }
}

bool parse_isa(const std::string& name, Isa* out) {
  for (int i = 0; i < kNumIsas; ++i)
    if (name == isa_name(static_cast<Isa>(i))) {
      *out = static_cast<Isa>(i);
      return true;
    }
  return false;
}

const std::string& isa_env_note() {
  (void)active_isa();  // the note is written when the choice is first made
  return env_note();
}

bool cpu_amx_bf16() {
#if defined(FG_X86_CPUID) && defined(__linux__) && defined(__x86_64__)
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
    if (!amx_bf16 || !amx_tile) return false;
    if ((xcr0() & 0x60000u) != 0x60000u) return false;  // XTILECFG (bit 17) and XTILEDATA (bit 18)
    // Linux hands the 8 KB tile data state to a process only on request (arch_prctl
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA = 18; since Linux 5.16); without it the first tile
    // instruction kills the process with SIGILL. The grant covers every thread of the process.
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

std::string cpu_model() {
#ifdef FG_X86_CPUID
  if (__get_cpuid_max(0x80000000u, nullptr) < 0x80000004u) return "";
  char s[49] = {};
  for (unsigned i = 0; i < 3; ++i) {
    unsigned r[4];
    __cpuid(0x80000002u + i, r[0], r[1], r[2], r[3]);
    std::memcpy(s + 16 * i, r, 16);
  }
  std::string m(s);
  const size_t b = m.find_first_not_of(' '), e = m.find_last_not_of(' ');
  return b == std::string::npos ? "" : m.substr(b, e - b + 1);
#else
  return "";
#endif
}

}  // namespace fg
