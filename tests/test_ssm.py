"""The selective scan: the fast torch path equals the step-by-step reference (values and gradients), the reference is
the stated recurrence, reversal mirrors, and the mamba_ssm kernel is used only where it can run."""
from __future__ import annotations

import math

import pytest
import torch

from fsar.model import ssm
from fsar.model.ssm import selective_scan, selective_scan_reference, selective_scan_torch

from _model_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(bt=3, di=5, s=4, length=8, seed=0, dtype=torch.float32, device="cpu"):
    """Random scan inputs in mamba_ssm's layout, of the magnitudes a trained block produces (A negative)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = dict(u=r(bt, di, length), delta=r(bt, di, length) * 0.5, A=-torch.rand(di, s, generator=g, dtype=torch.float64) * 3 - 0.1,
             B=r(bt, s, length), C=r(bt, s, length), D=r(di), z=r(bt, di, length), delta_bias=r(di) * 0.3)
    return {k: v.to(dtype=dtype, device=device) for k, v in x.items()}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw-delta"])
def test_fast_scan_equals_reference(reverse, softplus):
    x = _inputs()
    if not softplus:
        x["delta"] = x["delta"].abs()  # raw step sizes must be >= 0 for the recurrence to decay
    for opt in ({}, {"D": None, "z": None, "delta_bias": None}):
        args = {**x, **opt}
        ref = selective_scan_reference(**args, delta_softplus=softplus, reverse=reverse)
        fast = selective_scan_torch(**args, delta_softplus=softplus, reverse=reverse)
        assert ref.shape == fast.shape == (3, 5, 8) and ref.dtype == torch.float32
        assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5), (fast - ref).abs().max()
    # in float64 the two differ only by the order of float operations
    x64 = _inputs(dtype=torch.float64)
    ref, fast = (f(**x64, delta_softplus=True, reverse=reverse) for f in (selective_scan_reference, selective_scan_torch))
    assert fast.dtype == torch.float64 and torch.allclose(fast, ref, atol=1e-12, rtol=1e-12)


def test_fast_scan_in_chunks_and_without_grad_equals_reference():
    """A batch larger than one cache chunk (several chunks) and the in-place no-grad path give the same values."""
    x = _inputs(bt=160, di=64, s=16, length=6, seed=3)
    assert 160 * 64 * 16 > 2 * ssm.CHUNK_ELEMENTS  # three chunks
    ref = selective_scan_reference(**x, delta_softplus=True)
    with torch.no_grad():
        fast = selective_scan_torch(**x, delta_softplus=True)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)


def test_fast_scan_gradients_equal_reference():
    x = _inputs(seed=1, dtype=torch.float64)
    grads = []
    for fn in (selective_scan_reference, selective_scan_torch):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        out = fn(**leaves, delta_softplus=True)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for k in x:
        assert grads[0][k] is not None and grads[0][k].abs().sum() > 0, k
        assert torch.allclose(grads[1][k], grads[0][k], atol=1e-10), k


def test_reference_is_the_stated_recurrence():
    """One channel, one state, scalars: h_l = exp(Δ_l a) h_{l-1} + Δ_l b_l u_l, y_l = c_l h_l + d u_l, gated by silu(z)."""
    x = _inputs(bt=1, di=1, s=1, length=5, seed=2, dtype=torch.float64)
    out = selective_scan_reference(**x, delta_softplus=True)
    u, a, b, c, d, z = x["u"][0, 0], x["A"][0, 0], x["B"][0, 0], x["C"][0, 0], x["D"][0], x["z"][0, 0]
    dt = torch.nn.functional.softplus(x["delta"][0, 0] + x["delta_bias"][0])
    h, expected = 0.0, []
    for l in range(5):
        h = math.exp(float(dt[l] * a)) * h + float(dt[l] * b[l] * u[l])
        y = float(c[l]) * h + float(d * u[l])
        expected.append(y * float(z[l] * torch.sigmoid(z[l])))
    assert torch.allclose(out[0, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # a state that decays: with a strongly negative A the output forgets the past
    x["A"] = torch.full_like(x["A"], -1e4)
    forgetful = selective_scan_reference(**{**x, "D": None, "z": None}, delta_softplus=True)
    assert torch.allclose(forgetful[0, 0], (dt * b * u * c).to(torch.float64), atol=1e-9)


@pytest.mark.parametrize("fn", [selective_scan_reference, selective_scan_torch], ids=["reference", "torch"])
def test_reversal_mirrors(fn):
    """Scanning the flipped sequences forward, flipped back, is the reverse scan of the original ones."""
    x = _inputs(seed=4)
    time_axis = ("u", "delta", "B", "C", "z")
    flipped = {k: (v.flip(-1) if k in time_axis else v) for k, v in x.items()}
    backward = fn(**x, delta_softplus=True, reverse=True)
    assert torch.allclose(fn(**flipped, delta_softplus=True, reverse=False).flip(-1), backward, atol=1e-6)
    assert not torch.allclose(fn(**x, delta_softplus=True), backward, atol=1e-3)  # the direction matters


def test_dispatch_and_one_line_errors():
    x = _inputs()
    assert torch.equal(selective_scan(**x, delta_softplus=True), selective_scan_torch(**x, delta_softplus=True))  # auto on CPU
    assert torch.equal(selective_scan(**x, impl="reference"), selective_scan_reference(**x))
    with pytest.raises(ValueError, match="impl must be one of auto, torch, reference, mamba, got 'cuda'"):
        selective_scan(**x, impl="cuda")
    with pytest.raises(RuntimeError) as err:
        selective_scan(**x, impl="mamba")
    assert "\n" not in str(err.value) and "impl='torch'" in str(err.value)
    with pytest.raises(ValueError, match=r"B and C \[batch, state, length\]"):
        selective_scan(**{**x, "B": x["B"][:, :2]})
    with pytest.raises(ValueError, match=r"A \[channels=5, state\]"):
        selective_scan(**{**x, "A": x["A"][:3]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_paths_equal_cpu():
    """On a GPU: the torch scan equals the CPU one, and mamba_ssm's kernel (when it imports) equals the torch scan."""
    x = _inputs(bt=8, di=32, s=16, length=16, seed=5)
    cpu = selective_scan_torch(**x, delta_softplus=True, reverse=True)
    xc = {k: v.cuda() for k, v in x.items()}
    assert torch.allclose(selective_scan_torch(**xc, delta_softplus=True, reverse=True).cpu(), cpu, atol=1e-4, rtol=1e-4)
    if ssm.mamba_kernel() is None:
        pytest.skip("mamba_ssm is not importable here; the torch path was checked on CUDA")
    auto = selective_scan(**xc, delta_softplus=True, reverse=True)
    assert torch.allclose(auto.cpu(), cpu, atol=1e-4, rtol=1e-4)
