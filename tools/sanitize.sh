#!/usr/bin/env bash
# Build fusegrad._C with AddressSanitizer + UndefinedBehaviorSanitizer and run the kernel
# tests against it. Usage: tools/sanitize.sh [pytest args...]   (default: the whole suite)
# Needs gcc's libasan/libubsan (Debian: part of gcc). Leak checking is off because CPython
# itself keeps allocations alive at exit; every invalid access or UB aborts the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=build-asan/pkg
rm -rf "$out" && mkdir -p "$out"
cp -r python/fusegrad "$out/"
rm -f "$out"/fusegrad/_C*.so
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFUSEGRAD_SANITIZE=ON \
      -DPython_EXECUTABLE="$(command -v "$PY")" -DFUSEGRAD_OUTPUT_DIR="$PWD/$out/fusegrad" >/dev/null
cmake --build build-asan
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
LD_PRELOAD="$preload" PYTHONPATH="$out" "$PY" -m pytest -p no:cacheprovider "${@:-tests}"
