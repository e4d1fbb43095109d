"""Shared fixtures: run kernel tests on every ISA path and at chosen thread counts."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad
from fusegrad import _C

ISAS = list(_C.isas_supported())  # portable, then avx2 / avx512 where this CPU runs them


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per ISA path this CPU can run (portable, avx2, avx512)."""
    old = _C.get_isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(old)


@pytest.fixture
def threads():
    """Set the kernel thread count inside a test: threads(1); restored afterwards."""
    old = fusegrad.get_num_threads()
    yield fusegrad.set_num_threads
    fusegrad.set_num_threads(old)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
