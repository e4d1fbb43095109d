// CPU features and the run-time choice of instruction-set path.
// Kernels with an AVX2/FMA version ask `use_avx2()`; the choice is made once from the CPU's
// features and the FUSEGRAD_ISA environment variable (auto | avx2 | portable) and can be
// changed from Python (fusegrad._C.set_isa) so tests cover both paths in one process.
#pragma once
#include <string>

namespace fg {

enum class Isa { portable = 0, avx2 = 1 };

bool cpu_has_avx2_fma();          // the CPU (and OS) can run our AVX2+FMA code
bool avx2_compiled();             // the *_avx2.cpp files were built into this module
Isa active_isa();                 // the path kernels take now
void set_active_isa(Isa isa);     // caller has checked availability
inline bool use_avx2() { return active_isa() == Isa::avx2; }
const char* isa_name(Isa isa);

}  // namespace fg
