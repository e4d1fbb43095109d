#!/usr/bin/env bash
# The GPU check of the CUDA path, in one run (about 5-8 minutes on one H100/H200):
#   1. build fusegrad in place with CMake (FUSEGRAD_CUDA=on: fails loudly without nvcc);
#   2. pytest -m cuda (every CUDA op against the CPU kernels and float64 references; bf16 and
#      fp16 tensor-core attention by the error-budget rule; the cuBLASLt products in
#      float32/float16/bfloat16 with their epilogues; tensors, the optimizers and a tiny GPT
#      training on the GPU against the CPU run) plus the host-side CUDA tests;
#   3. a short benchmark against PyTorch CUDA in the same run (bench/bench_cuda.py).
# Results and logs go to the folder given as $1, else $OUT (the device tool's), else ./gpu_check_out.
# Needs: nvcc, cmake, ninja, pybind11, numpy, cupy, pytest (torch for the benchmark); no network.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
check() {
  local status=0
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  nvcc --version | tail -1; python3 -c "import cupy; print('cupy', cupy.__version__)" || true
  echo "== build"
  arch="$(python3 -c 'import cupy; d=cupy.cuda.Device(); print("%d%d" % d.compute_capability)' 2>/dev/null || echo 90)"
  cmake -S . -B build-gpu -G Ninja -DFUSEGRAD_CUDA=on -DCMAKE_CUDA_ARCHITECTURES="${arch}-real" >/dev/null &&
    cmake --build build-gpu -j "$(nproc)" || { echo "BUILD FAILED"; return 1; }
  echo "== cuBLASLt"
  python3 -c "from fusegrad import cuda; print(cuda.load_cublaslt())" ||
    { echo "cuBLASLt NOT LOADED: the products ran on CuPy's fallback, so cuBLASLt is unverified"; status=1; }
  echo "== tests"
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_matmul.py tests/test_cuda_tensor.py \
    tests/test_interop.py tests/test_torch_cuda.py \
    -m "cuda or not cuda" || status=1
  echo "== bench"
  timeout 240 python3 -m bench cuda --out "$out/bench_cuda.json" || status=1
  return $status
}
check 2>&1 | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
echo "gpu_check: exit $status (log: $out/gpu_check.log)"
exit $status
