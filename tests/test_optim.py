"""sgd_step / adamw_step / adam_step: NumPy float64 formulas and torch.optim over 10 steps."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from fusegrad import ops

SIZES = [1, 7, 33, 127, 1000, 300_000]


def _bufs(rng, n, dtype):
    return [rng.standard_normal(n).astype(dtype) for _ in range(2)] + [np.zeros(n, dtype), np.zeros(n, dtype)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["adamw_step", "adam_step"])
def test_adam_matches_reference(isa, rng, n, dtype, fn):
    p, _, m, v = _bufs(rng, n, dtype)
    P, M, Vr = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for step in range(1, 11):
        g = rng.standard_normal(n).astype(dtype)
        getattr(ops, fn)(p, g, m, v, step, 1e-2, 0.9, 0.99, 1e-8, 0.1)
        getattr(ref, fn)(P, g.astype(np.float64), M, Vr, step, 1e-2, 0.9, 0.99, 1e-8, 0.1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, P, rtol=tol, atol=tol)
    np.testing.assert_allclose(m, M, rtol=tol, atol=tol)
    np.testing.assert_allclose(v, Vr, rtol=tol, atol=tol)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,nesterov,dampening,wd", [(0.0, False, 0.0, 0.0), (0.9, False, 0.0, 0.01),
                                                            (0.9, True, 0.0, 0.01), (0.5, False, 0.3, 0.0)])
def test_sgd_matches_reference(isa, rng, n, dtype, momentum, nesterov, dampening, wd):
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype) if momentum else None
    P, B = p.astype(np.float64), np.zeros(n)
    for step in range(10):
        g = rng.standard_normal(n).astype(dtype)
        ops.sgd_step(p, g, buf, 0.05, momentum, wd, nesterov, dampening, step == 0)
        ref.sgd_step(P, g.astype(np.float64), B, 0.05, momentum, wd, nesterov, dampening, step == 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, P, rtol=tol, atol=tol)
    if momentum:
        np.testing.assert_allclose(buf, B, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["adamw", "adam"])
def test_adam_against_torch(isa, rng, dtype, kind):
    torch = pytest.importorskip("torch")
    n = 1000
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    opt = cls([tp], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    for step in range(1, 11):
        g = rng.standard_normal(n).astype(dtype)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        getattr(ops, f"{kind}_step")(p, g, m, v, step, 1e-2, 0.9, 0.99, 1e-8, 0.1)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=tol, atol=tol)
    st = opt.state[tp]
    np.testing.assert_allclose(m, st["exp_avg"].numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(v, st["exp_avg_sq"].numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["adamw_step", "adam_step"])
def test_adam_first_moment_lerps_from_the_nearer_end(isa, rng, dtype, fn):
    # m = lerp(m, g, 1 - beta1) is taken from g's end when beta1 < 1/2 (as torch.lerp does):
    # beta1 = 0 then gives m = g exactly, and a small beta1 leaves no error of the size of the
    # old m (the one-sided m + w (g - m) lost ~1e-4 relative with |m| = 1e4 in float32)
    n = 37                                                        # 4 AVX2 vectors and a tail
    g = rng.standard_normal(n).astype(dtype)
    for beta1 in (0.0, 1e-3, 0.3):
        p, m, v = np.ones(n, dtype), np.full(n, 1e4, dtype), np.ones(n, dtype)
        getattr(ops, fn)(p, g, m, v, 3, 1e-3, beta1, 0.999, 1e-8, 0.0)
        M = np.full(n, 1e4)
        getattr(ref, fn)(np.ones(n), g.astype(np.float64), M, np.ones(n), 3, 1e-3, beta1, 0.999, 1e-8, 0.0)
        if beta1 == 0.0:
            np.testing.assert_array_equal(m, g)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(m, M, rtol=4 * eps, atol=4 * eps * np.abs(g).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_inf_gradient_gives_the_first_moment_torch_gives(isa, dtype):
    torch = pytest.importorskip("torch")
    g = np.array([np.inf, -np.inf, 0.5, 2.0] * 3, dtype)
    for beta1 in (0.0, 0.3, 0.9):                      # NaN from g's end (inf - 0 * inf), inf from m's
        p, m, v = np.zeros(12, dtype), np.zeros(12, dtype), np.zeros(12, dtype)
        tp = torch.nn.Parameter(torch.zeros(12, dtype=torch.from_numpy(g).dtype))
        opt = torch.optim.Adam([tp], lr=1e-3, betas=(beta1, 0.999), foreach=False)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        ops.adam_step(p, g, m, v, 1, 1e-3, beta1, 0.999, 1e-8, 0.0)
        np.testing.assert_array_equal(m, opt.state[tp]["exp_avg"].numpy())
        np.testing.assert_array_equal(np.isnan(p), np.isnan(tp.detach().numpy()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,nesterov,dampening,wd", [(0.0, False, 0.0, 0.0), (0.9, False, 0.0, 0.01),
                                                            (0.9, True, 0.0, 0.01), (0.5, False, 0.3, 0.0)])
def test_sgd_against_torch(isa, rng, dtype, momentum, nesterov, dampening, wd):
    torch = pytest.importorskip("torch")
    n = 1000
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype) if momentum else None
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    opt = torch.optim.SGD([tp], lr=0.05, momentum=momentum, weight_decay=wd, nesterov=nesterov,
                          dampening=dampening, foreach=False)
    for step in range(10):
        g = rng.standard_normal(n).astype(dtype)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        ops.sgd_step(p, g, buf, 0.05, momentum=momentum, weight_decay=wd, nesterov=nesterov,
                     dampening=dampening, first_step=step == 0)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=tol, atol=tol)
    if momentum:
        np.testing.assert_allclose(buf, opt.state[tp]["momentum_buffer"].numpy(), rtol=tol, atol=tol)


def test_optim_bad_inputs():
    p, g, m, v = (np.zeros(4, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match=r"adamw_step: step must be >= 1, got 0"):
        ops.adamw_step(p, g, m, v, 0, 1e-3)
    with pytest.raises(ValueError, match=r"adamw_step: beta1 must be in \[0, 1\), got 1"):
        ops.adamw_step(p, g, m, v, 1, 1e-3, beta1=1.0)
    with pytest.raises(ValueError, match=r"adamw_step: beta2 must be in \[0, 1\), got -0.1"):
        ops.adamw_step(p, g, m, v, 1, 1e-3, beta2=-0.1)
    with pytest.raises(ValueError, match=r"adamw_step: lr must be a finite number >= 0, got -1"):
        ops.adamw_step(p, g, m, v, 1, -1.0)
    with pytest.raises(ValueError, match=r"adamw_step: eps must be a finite number > 0, got 0"):
        ops.adamw_step(p, g, m, v, 1, 1e-3, eps=0.0)
    with pytest.raises(ValueError, match=r"adamw_step: m must have the shape of param \(4,\), got \(5,\)"):
        ops.adamw_step(p, g, np.zeros(5, np.float32), v, 1, 1e-3)
    with pytest.raises(TypeError, match=r"adamw_step: v must be float32 .*got float64"):
        ops.adamw_step(p, g, m, np.zeros(4), 1, 1e-3)
    with pytest.raises(ValueError, match=r"adamw_step: param must not share memory with m"):
        ops.adamw_step(p, g, p, v, 1, 1e-3)
    with pytest.raises(ValueError, match=r"adam_step: m must not share memory with v"):
        ops.adam_step(p, g, m, m, 1, 1e-3)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"adamw_step: param must be writeable"):
        ops.adamw_step(ro, g, m, v, 1, 1e-3)
    with pytest.raises(ValueError, match=r"sgd_step: momentum_buf must be an array when momentum != 0, got None"):
        ops.sgd_step(p, g, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"sgd_step: param must not share memory with grad"):
        ops.sgd_step(p, p, None, 0.1)
    with pytest.raises(ValueError, match=r"sgd_step: nesterov requires momentum > 0 and dampening == 0"):
        ops.sgd_step(p, g, m, 0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match=r"sgd_step: grad must be C-contiguous"):
        ops.sgd_step(p, np.zeros(8, np.float32)[::2], None, 0.1)


# ----- sum_squares (clip_grad_norm_'s total norm) -------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 33, 127, 1000, 65_536, 65_537, 300_000, (1 << 20) + 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares_matches_exact_sum(isa, threads, rng, n, dtype):
    # float64 accumulation: any summation order is within n * 2^-53 of the exact sum (math.fsum)
    import math
    x = (rng.standard_normal(n) * 3).astype(dtype).reshape(-1, 1) if n % 2 else (rng.standard_normal(n) * 3).astype(dtype)
    want = math.fsum((x.astype(np.float64).ravel() ** 2).tolist())
    threads(1)
    one = ops.sum_squares(x)
    threads(2)
    two = ops.sum_squares(x)
    assert isinstance(one, float) and one == two  # fixed chunks, added in order
    assert abs(one - want) <= n * 2.0**-52 * want


def test_sum_squares_propagates_nan_and_inf(isa):
    x = np.ones(100_001, np.float32)
    x[70_000] = np.inf
    assert ops.sum_squares(x) == np.inf
    x[5] = np.nan
    assert np.isnan(ops.sum_squares(x))
    assert ops.sum_squares(np.float32(-3.0) * np.ones(3, np.float32)) == 27.0


def test_sum_squares_bad_input():
    with pytest.raises(TypeError, match="sum_squares: x must be"):
        ops.sum_squares(np.ones(3, np.int32))
    with pytest.raises(ValueError, match="sum_squares: x must be C-contiguous"):
        ops.sum_squares(np.ones((4, 4), np.float32)[:, 1])
