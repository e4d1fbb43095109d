// AVX2/FMA float32 attention: attention_body.h compiled with -mavx2 -mfma into fg::avx2.
// Called from attention.cpp only when the CPU has AVX2 + FMA.
#define FG_ISA avx2
#include "ops/attention_body.h"
