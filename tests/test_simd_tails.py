"""Vector tails on every ISA path: the elementwise float32 kernels run a tail (n % lanes
elements, 0..15 with 16-lane AVX-512 vectors) through masked loads/stores and the same math as
a full vector, so each element's result must not depend on the array's length: the kernel on
x[:n] equals the kernel on a longer x, cut to n, bit for bit, at every remainder. Row kernels
(softmax, layernorm, ...) are checked at every row width 1..33 against the reference in their
own test files."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import ops
import reference as ref

LENGTHS = [r for r in range(16)] + [16 + r for r in range(16)] + [48 + 5]


def _elementwise():
    """(name, f(x, dy) -> output, reference f on float64, tolerance (rtol, atol) for float32)."""
    return [
        ("relu_forward", lambda x, dy: ops.relu_forward(x), lambda x, dy: ref.relu_forward(x), (0, 0)),
        ("relu_backward", lambda x, dy: ops.relu_backward(dy, x), lambda x, dy: ref.relu_backward(dy, x), (0, 0)),
        ("gelu_tanh_forward", lambda x, dy: ops.gelu_forward(x, "tanh"),
         lambda x, dy: ref.gelu_forward(x, "tanh"), (1e-5, 1e-6)),
        ("gelu_tanh_backward", lambda x, dy: ops.gelu_backward(dy, x, "tanh"),
         lambda x, dy: ref.gelu_backward(dy, x, "tanh"), (1e-5, 1e-6)),
        ("gelu_erf_forward", lambda x, dy: ops.gelu_forward(x, "none"),
         lambda x, dy: ref.gelu_forward(x, "none"), (1e-5, 1e-6)),
        ("gelu_erf_backward", lambda x, dy: ops.gelu_backward(dy, x, "none"),
         lambda x, dy: ref.gelu_backward(dy, x, "none"), (1e-5, 1e-6)),
        ("sigmoid_forward", lambda x, dy: ops.sigmoid_forward(x), lambda x, dy: ref.sigmoid_forward(x), (1e-6, 1e-7)),
        ("tanh_forward", lambda x, dy: ops.tanh_forward(x), lambda x, dy: ref.tanh_forward(x), (1e-6, 1e-7)),
    ]


CASES = _elementwise()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_elementwise_tail_equals_full_vector(isa, rng, case):
    _, f, rf, (rtol, atol) = case
    x = (3 * rng.standard_normal(64)).astype(np.float32)
    x[::7] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -20.0, 20.0, 9.0, -9.0][: x[::7].size]
    dy = rng.standard_normal(64).astype(np.float32)
    full = f(x, dy)
    for n in LENGTHS:
        got = f(x[:n].copy(), dy[:n].copy())
        assert got.shape == (n,)
        np.testing.assert_array_equal(got.view(np.int32), full[:n].view(np.int32), err_msg=f"n={n}")
    finite = np.isfinite(x)
    want = rf(x[finite].astype(np.float64), dy[finite].astype(np.float64))
    np.testing.assert_allclose(full[finite], want, rtol=rtol, atol=atol)
