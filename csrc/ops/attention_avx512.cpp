// AVX-512 float32 attention: attention_body.h compiled with the AVX-512 F/BW/VL/DQ flags into
// fg::avx512. Called from attention.cpp only on the avx512 path.
#define FG_ISA avx512
#include "ops/attention_body.h"
