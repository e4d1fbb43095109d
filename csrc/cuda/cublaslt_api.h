// The part of cuBLASLt's C API that matmul.cu uses, declared here because the machines that build
// fusegrad have the CUDA compiler and runtime but not the cuBLAS headers or libraries (and the
// nvidia-cublas wheel is too large to make a build dependency). libcublasLt.so is loaded with
// dlopen at first use (matmul.cu), so nothing here is linked.
//
// These are facts of the library's public, versioned ABI, written from cuBLAS's documentation
// (docs.nvidia.com/cuda/cublas, "cuBLASLt API"; cross-checked against the enum listings of
// nvmath-python's cublasLt bindings, which mirror the header): opaque handle types, the enum
// values we pass, and the prototypes of the functions we call. Only the values used are listed.
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>  // cudaDataType_t (CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14): part of cudart

#include <cstddef>
#include <cstdint>

namespace fg::lt {

// cublasStatus_t (0 = CUBLAS_STATUS_SUCCESS; 15 = NOT_SUPPORTED; 7 = INVALID_VALUE)
using Status = int;
constexpr Status kSuccess = 0, kInvalidValue = 7, kNotSupported = 15;

// Opaque handles (pointers to structures the library owns).
struct Context;
struct MatmulDescOpaque;
struct MatrixLayoutOpaque;
struct PreferenceOpaque;
using Handle = Context*;
using MatmulDesc = MatmulDescOpaque*;
using MatrixLayout = MatrixLayoutOpaque*;
using Preference = PreferenceOpaque*;

// cublasLtMatmulAlgo_t: 64 opaque bytes, aligned as uint64_t.
struct MatmulAlgo {
  uint64_t data[8];
};
// cublasLtMatmulHeuristicResult_t
struct HeuristicResult {
  MatmulAlgo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};

// cublasComputeType_t
enum ComputeType : int { kCompute32F = 68, kCompute32FFastTF32 = 77 };
// cublasOperation_t
enum Operation : int { kOpN = 0, kOpT = 1 };
// cublasLtMatmulDescAttributes_t
enum DescAttr : int {
  kDescTransA = 3,
  kDescTransB = 4,
  kDescEpilogue = 7,
  kDescBiasPointer = 8,
  kDescEpilogueAuxPointer = 11,
  kDescEpilogueAuxLd = 12,
};
// cublasLtEpilogue_t
enum Epilogue : uint32_t {
  kEpiDefault = 1,
  kEpiBias = 4,
  kEpiGeluAuxBias = 164,  // D = GELU(AB + bias); aux = AB + bias (the tanh approximation of GELU)
  kEpiDGeluBGrad = 208,   // D = AB * GELU'(aux); bias = sums of D over its columns
  kEpiBGradB = 512,       // bias = sums of op(B) over k (one per column of D)
};
// cublasLtMatrixLayoutAttribute_t
enum LayoutAttr : int { kLayoutBatchCount = 5, kLayoutStridedBatchOffset = 6 };
// cublasLtMatmulPreferenceAttributes_t
enum PrefAttr : int {
  kPrefMaxWorkspaceBytes = 1,
  kPrefMinAlignABytes = 5,
  kPrefMinAlignBBytes = 6,
  kPrefMinAlignCBytes = 7,
  kPrefMinAlignDBytes = 8,
};

// Function pointer types of the entry points (names as exported by libcublasLt.so).
using CreateFn = Status (*)(Handle*);
using DestroyFn = Status (*)(Handle);
using GetVersionFn = size_t (*)();
using GetStatusStringFn = const char* (*)(Status);
using DescCreateFn = Status (*)(MatmulDesc*, int compute_type, cudaDataType_t scale_type);
using DescDestroyFn = Status (*)(MatmulDesc);
using DescSetFn = Status (*)(MatmulDesc, int attr, const void* buf, size_t size);
using LayoutCreateFn = Status (*)(MatrixLayout*, cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld);
using LayoutDestroyFn = Status (*)(MatrixLayout);
using LayoutSetFn = Status (*)(MatrixLayout, int attr, const void* buf, size_t size);
using PrefCreateFn = Status (*)(Preference*);
using PrefDestroyFn = Status (*)(Preference);
using PrefSetFn = Status (*)(Preference, int attr, const void* buf, size_t size);
using HeuristicFn = Status (*)(Handle, MatmulDesc, MatrixLayout a, MatrixLayout b, MatrixLayout c, MatrixLayout d,
                               Preference, int requested, HeuristicResult* results, int* returned);
using MatmulFn = Status (*)(Handle, MatmulDesc, const void* alpha, const void* A, MatrixLayout, const void* B,
                            MatrixLayout, const void* beta, const void* C, MatrixLayout, void* D, MatrixLayout,
                            const MatmulAlgo* algo, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace fg::lt
