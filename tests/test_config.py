"""Build configuration, ISA switching and thread control."""
from __future__ import annotations

import pytest

import fusegrad
from fusegrad import _C


def test_set_num_threads_roundtrip(threads):
    threads(1)
    assert fusegrad.get_num_threads() == 1
    threads(2)
    assert fusegrad.get_num_threads() == 2


def test_set_num_threads_rejects_bad_values():
    with pytest.raises(ValueError, match="n must be >= 1"):
        fusegrad.set_num_threads(0)
    with pytest.raises(TypeError):
        fusegrad.set_num_threads(1.5)


def test_set_isa(isa):
    assert _C.get_isa() == isa
    with pytest.raises(ValueError, match="isa must be 'portable', 'avx2' or 'avx512'"):
        _C.set_isa("sse9")


def test_isa_lists_are_ordered_and_consistent():
    compiled, supported = _C.isas_compiled(), _C.isas_supported()
    order = ["portable", "avx2", "avx512"]
    assert compiled[0] == supported[0] == "portable"
    assert set(supported) <= set(compiled) <= set(order)
    assert supported == [i for i in order if i in supported]
    assert _C.best_isa() == supported[-1]
    for name in set(compiled) - set(supported):
        with pytest.raises(ValueError, match="has no"):
            _C.set_isa(name)


@pytest.mark.parametrize("env, expect_warning", [("portable", False), ("auto", False), ("avx9", True)])
def test_isa_environment_variable(env, expect_warning):
    import subprocess
    import sys
    code = "import warnings; warnings.simplefilter('always'); import fusegrad; print(fusegrad._C.get_isa())"
    r = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "FUSEGRAD_ISA": env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    want = {"portable": "portable", "auto": _C.best_isa(), "avx9": _C.best_isa()}[env]
    assert r.stdout.strip() == want
    assert ("FUSEGRAD_ISA" in r.stderr) == expect_warning


def test_isa_environment_variable_beyond_cpu_falls_back_with_warning():
    import subprocess
    import sys
    missing = [i for i in ("avx2", "avx512") if i not in _C.isas_supported()]
    if not missing:
        pytest.skip("this CPU runs every path: nothing to fall back from")
    code = "import warnings; warnings.simplefilter('always'); import fusegrad; print(fusegrad._C.get_isa())"
    r = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "FUSEGRAD_ISA": missing[-1]},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _C.best_isa()
    assert "FUSEGRAD_ISA" in r.stderr and "using" in r.stderr


@pytest.mark.parametrize("env", ["emulated", "amx", "fastest"])
def test_bf16_kernel_environment_variable(env):
    # issue 19: FUSEGRAD_BF16_KERNEL picks the bf16 kernel; one this CPU cannot run warns and uses auto
    import subprocess
    import sys
    code = ("import warnings; warnings.simplefilter('always'); import fusegrad; "
            "print(fusegrad._C.bf16_kernel_setting()); fusegrad.show_config()")
    r = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "FUSEGRAD_BF16_KERNEL": env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    runs = env in _C.bf16_kernels_available()
    assert r.stdout.splitlines()[0] == (env if runs else "auto")
    assert ("FUSEGRAD_BF16_KERNEL" in r.stderr) == (not runs)
    if runs:
        assert f"(set: {env})" in r.stdout


def test_peak_fma_per_isa():
    for name in _C.isas_supported():
        assert _C.peak_fma_gflops(1, 0.02, name) > 0
    with pytest.raises(ValueError, match="isa must be"):
        _C.peak_fma_gflops(1, 0.02, "sse9")


def test_show_config(capsys):
    fusegrad.show_config()
    out = capsys.readouterr().out
    for key in ("cpu", "isa", "isas_compiled", "isas_supported", "openmp", "num_threads", "cuda"):
        assert key in out


def test_show_config_names_the_bf16_path(capsys):
    # issue 19: the bf16 path this CPU takes (the AVX512_BF16 kernel only on the avx512 path of a CPU
    # that has the instructions)
    fusegrad.show_config()
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("bf16_matmul:")]
    assert len(line) == 1
    assert line[0].split(":", 1)[1].strip().split(":")[0] == _C.bf16_path()
