// CPU features and the run-time choice of instruction-set path.
//
// Three paths, ordered: portable < avx2 (AVX2 + FMA + F16C) < avx512 (AVX-512 F/BW/VL/DQ + the
// AVX2 set). The path in use is chosen once from the CPU (CPUID *and* the OS: XCR0 must show the
// YMM state, and for avx512 the opmask and ZMM states, enabled) and the FUSEGRAD_ISA environment
// variable (auto | portable | avx2 | avx512); it can be changed from Python (fusegrad._C.set_isa)
// so tests cover every path in one process. Asking for a path this CPU or build lacks falls back
// to the best one below it, and isa_env_note() says so (Python turns it into a warning).
//
// A kernel dispatches on the best path it has at or below the active one:
//   if (use_avx512()) return avx512::f(...);   // only where an AVX-512 version exists
//   if (use_avx2()) return avx2::f(...);       // true on the avx2 *and* the avx512 path
//   ...portable...
#pragma once
#include <string>

namespace fg {

enum class Isa { portable = 0, avx2 = 1, avx512 = 2 };
constexpr int kNumIsas = 3;

bool isa_compiled(Isa isa);   // that path's translation units were built into this module
bool isa_supported(Isa isa);  // compiled, and this CPU and OS can run it
Isa best_isa();               // the highest supported path
Isa active_isa();             // the path kernels take now
void set_active_isa(Isa isa); // caller has checked isa_supported
const char* isa_name(Isa isa);
bool parse_isa(const std::string& name, Isa* out);  // "portable" | "avx2" | "avx512"
const std::string& isa_env_note();  // non-empty when FUSEGRAD_ISA could not be honoured
std::string cpu_model();      // the CPUID brand string ("" where unknown)
// The CPU has AMX-TILE and AMX-BF16, the OS saves the tile state, and Linux granted this process
// the tile data state (requested on the first call). Any AMX instruction needs this to be true.
bool cpu_amx_bf16();

inline bool use_avx2() { return active_isa() >= Isa::avx2; }
inline bool use_avx512() { return active_isa() >= Isa::avx512; }

// Kept for the existing bindings: the avx2 path is supported / compiled.
inline bool cpu_has_avx2_fma() { return isa_supported(Isa::avx2); }
inline bool avx2_compiled() { return isa_compiled(Isa::avx2); }

}  // namespace fg
