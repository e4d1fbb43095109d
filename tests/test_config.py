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
    with pytest.raises(ValueError, match="isa must be 'portable' or 'avx2'"):
        _C.set_isa("sse9")


def test_show_config(capsys):
    fusegrad.show_config()
    out = capsys.readouterr().out
    for key in ("isa", "openmp", "num_threads", "cuda"):
        assert key in out
