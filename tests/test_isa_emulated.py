"""Each ISA path on a CPU that has only that ISA (issue 22): tools/isa_smoke.py under
qemu-user's emulated CPUs. Nehalem has no AVX: the portable path must be chosen and run without
an illegal instruction; Haswell has AVX2 but no AVX-512: the avx2 path must be chosen, on any
host. About 20 s per CPU; .ci/run runs the same two commands."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fusegrad

QEMU = shutil.which("qemu-x86_64")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
@pytest.mark.parametrize("cpu, expect", [("Nehalem", "portable"), ("Haswell", "avx2")])
def test_isa_path_on_emulated_cpu(cpu, expect):
    # the emulated python may not see a virtual environment: hand it fusegrad's and NumPy's homes
    paths = [os.path.dirname(os.path.dirname(m.__file__)) for m in (fusegrad, np)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    env.pop("FUSEGRAD_ISA", None)
    r = subprocess.run([QEMU, "-cpu", cpu, sys.executable, os.path.join(ROOT, "tools", "isa_smoke.py"),
                        "--expect", expect], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"under -cpu {cpu} (rc {r.returncode}):\n{r.stdout}\n{r.stderr[-2000:]}"
    assert f"isa: {expect}" in r.stdout and "ok:" in r.stdout, r.stdout


BUILD = os.path.join(ROOT, "build")


@pytest.mark.skipif(shutil.which("nm") is None or not os.path.isdir(os.path.join(BUILD, "CMakeFiles")),
                    reason="needs the dev build's objects (build/) and nm")
def test_no_weak_symbol_is_shared_between_isa_flag_sets():
    # an inline function or template instance defined by objects built with different flags is
    # merged by the linker into one copy that may hold AVX-512 code for the portable path
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_isa_symbols.py"), BUILD],
                       capture_output=True, text=True, timeout=300)
    if r.returncode == 2:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout + r.stderr
