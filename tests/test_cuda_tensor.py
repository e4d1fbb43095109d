"""Tensors, modules, the optimizers and the GPT on the GPU (Tensor.to("cuda"), Module.to("cuda"),
``train --device cuda``).

Here without a GPU: the CPU behaviour is unchanged, and every way onto the GPU fails with a
RuntimeError (the CLI: exit status 2) naming fusegrad.cuda.unavailable_reason(). With a GPU
(marker ``cuda``; tools/gpu_check.sh runs them): the same code on CuPy arrays matches the CPU."""
from __future__ import annotations

import re

import numpy as np
import pytest

import fusegrad as fg
from fusegrad import cuda, nn, optim
from fusegrad.cli import main
from fusegrad.lm import TrainOptions
from fusegrad.models.gpt import GPT, GPTConfig

no_gpu = pytest.mark.skipif(cuda.is_available(), reason="a GPU is here: the no-GPU errors cannot happen")
gpu = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not cuda.is_available(), reason=f"no GPU: {cuda.unavailable_reason()}")


def test_cpu_tensors_report_cpu_and_stay_put():
    x = fg.tensor([[1.0, 2.0]], requires_grad=True)
    assert x.device == "cpu" and not x.is_cuda
    assert x.cpu() is x and x.to("cpu") is x and x.to(x) is x and x.to("cpu", copy=True) is not x
    m = nn.Linear(3, 2)
    w = m.weight.data
    assert m.to("cpu") is m and m.cpu() is m and m.weight.data is w and m.weight.device == "cpu"


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps"])
def test_unknown_device_names_are_refused(device):
    with pytest.raises(RuntimeError, match=f"device '{re.escape(device)}' is not available"):
        fg.zeros(2).to(device)
    with pytest.raises(RuntimeError, match=f"Module.to: device '{re.escape(device)}' is not available"):
        nn.Linear(2, 2).to(device)


@no_gpu
@pytest.mark.parametrize("move", [lambda t: t.to("cuda"), lambda t: t.cuda(), lambda t: t.to("cuda:0"),
                                  lambda t: t.to(device="cuda")])
def test_tensor_to_cuda_without_gpu_says_why(move):
    x = fg.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=re.escape(cuda.unavailable_reason())):
        move(x)
    assert x.device == "cpu" and x.grad is None


@no_gpu
def test_module_to_cuda_without_gpu_says_why_and_changes_nothing():
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    before = [p.data for p in m.parameters()]
    for move in (lambda: m.to("cuda"), m.cuda):
        with pytest.raises(RuntimeError, match=re.escape(cuda.unavailable_reason())):
            move()
    assert all(p.data is b for p, b in zip(m.parameters(), before))


@no_gpu
def test_train_device_cuda_without_gpu_is_a_clear_cli_error(capsys, tmp_path):
    rc = main(["train", "--device", "cuda", "--max-iters", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--device cuda, but CUDA is not available here" in err and cuda.unavailable_reason() in err
    assert not (tmp_path / "o").exists()


def test_train_options_refuse_other_devices():
    with pytest.raises(ValueError, match=r"device \(--device\) must be 'cpu' or 'cuda', got 'tpu'"):
        TrainOptions(device="tpu")
    assert TrainOptions(device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="on --device cuda use float32"):
        TrainOptions(device="cuda", dtype="bf16")


# ---------------------------------------------------------------- on a GPU

def _tiny(pos):
    cfg = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos=pos)
    return GPT(cfg, seed=3)


def _train(model, device, steps=5):
    model.to(device)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    rng = np.random.default_rng(5)
    losses = []
    for _ in range(steps):
        w = rng.integers(0, 37, (3, 17))
        _, loss = model(w[:, :-1], w[:, 1:])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.data))
    return losses, {n: fg.Tensor(p.data).cpu().numpy() for n, p in model.named_parameters()}


@gpu
@needs_gpu
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_gpu_tiny_gpt_trains_as_on_the_cpu(pos):
    want_loss, want_p = _train(_tiny(pos), "cpu")
    got_loss, got_p = _train(_tiny(pos), "cuda")
    # float32 on both, the GPU's sums in other orders: rounding of ~1e-7 relative per op, grown
    # through 5 AdamW steps (lr 3e-3) to at most ~1e-5 of a loss of ~3.6 and of each weight
    np.testing.assert_allclose(got_loss, want_loss, rtol=2e-5)
    for n, a in want_p.items():
        np.testing.assert_allclose(got_p[n], a, rtol=1e-4, atol=2e-5, err_msg=n)


@gpu
@needs_gpu
def test_gpu_tiny_gpt_trains_under_autocast_as_on_the_cpu():
    # fusegrad.autocast on the GPU: linear on cuBLASLt's bf16 products, attention on the tensor-core
    # kernels; the CPU run rounds the same operands (its bf16 kernels) and sums in other orders, so
    # an operand can land on the other side of a bf16 rounding boundary (2^-8 relative) in one run
    # and not the other: the losses agree to ~1e-3 of ~3.6, not to float32's rounding
    with fg.autocast("bfloat16"):
        want_loss, _ = _train(_tiny("learned"), "cpu")
        got_loss, _ = _train(_tiny("learned"), "cuda")
    np.testing.assert_allclose(got_loss, want_loss, rtol=5e-3)


@gpu
@needs_gpu
def test_gpu_batched_matmul_under_autocast():
    # a batched product under autocast rounds its operands on the GPU (fusegrad.cuda's rounding),
    # forward and backward, as the CPU does
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5, 70)).astype(np.float32), rng.standard_normal((3, 70, 9)).astype(np.float32)

    def run(device):
        ta, tb = fg.tensor(a, requires_grad=True), fg.tensor(b, requires_grad=True)
        with fg.autocast("bfloat16"):
            y = ta.to(device) @ tb.to(device)
        y.sum().backward()
        return y.cpu().numpy(), ta.grad.numpy(), tb.grad.numpy()

    for got, want in zip(run("cuda"), run("cpu")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # same bf16 operands, float32 sums


@gpu
@needs_gpu
def test_gpu_tensor_round_trip_and_gradients_cross_devices():
    import cupy
    x = fg.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda" and isinstance(y.data, cupy.ndarray) and y.requires_grad
    z = ((y * 2.0 + 1.0).relu() * y).sum()           # a CPU 0-d constant meets a CUDA tensor: allowed
    assert z.device == "cuda"
    z.backward()
    assert x.grad.device == "cpu"                     # the gradient came back through .to("cuda")
    np.testing.assert_allclose(x.grad.numpy(), 4 * x.numpy() + 1, rtol=1e-6)
    assert y.cpu().device == "cpu" and np.array_equal(y.cpu().numpy(), x.detach().numpy())
    with pytest.raises(TypeError, match=r"use tensor.cpu\(\).numpy\(\)"):
        y.detach().numpy()
    assert "device='cuda'" in repr(y.detach())


@gpu
@needs_gpu
def test_gpu_mixing_devices_is_a_clear_error():
    a, b = fg.ones(2, 3).cuda(), fg.ones(2, 3)
    with pytest.raises(RuntimeError, match=r"expected all tensors on one device, got a CPU tensor of shape \(2, 3\)"):
        a + b
    with pytest.raises(RuntimeError, match="expected all tensors on one device"):
        b @ fg.ones(3, 2).cuda()


@gpu
@needs_gpu
def test_gpu_cli_train_runs(tmp_path, capsys):
    rc = main(["train", "--device", "cuda", "--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1",
               "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
               "--max-bytes", "20000", "--sample-tokens", "8", "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o").exists()
