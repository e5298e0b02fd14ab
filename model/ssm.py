"""The selective scan of Mamba (Gu and Dao, 2023) in pure torch, with mamba_ssm's CUDA kernel when it is importable.

Per channel d and state index s, along the sequence l = 0 .. L-1 (h_{-1} = 0)::

    Δ_l = softplus(delta_l + delta_bias)          (or delta_l + delta_bias without delta_softplus)
    h_l = exp(Δ_l A) * h_{l-1} + Δ_l B_l u_l      (A negative: exp(Δ A) in (0, 1) is how much of the state is kept)
    y_l = C_l · h_l + D u_l,   then y_l * silu(z_l) when a gate z is given

B_l and C_l depend on the step (the "selective" part), A and D do not. The layout is mamba_ssm's
``selective_scan_fn``: u, delta, z [Bt, Di, L]; A [Di, S]; B, C [Bt, S, L]; D, delta_bias [Di]; output [Bt, Di, L].
``reverse=True`` runs the recurrence from the last step to the first (the backward direction of a bidirectional
block): the same as flipping every sequence, scanning forward and flipping the result.

mamba_ssm has no CPU build, so the torch path is what runs here: ``selective_scan_reference`` is the recurrence
written step by step as above (the definition, for tests), ``selective_scan_torch`` the one the models use: the
same recurrence as a loop of L steps, each over every sequence, channel and state at once (one exponential, one
fused multiply-add, one batched product with C). Few-shot clips are short (8-16 frames), so L steps over large
tensors cost little; a log-depth parallel scan would do L log L work instead of L, which only pays on a GPU.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLEMENTATIONS = ("auto", "torch", "reference", "mamba")
CHUNK_ELEMENTS = 65536  # state floats per chunk of sequences in selective_scan_torch (256 KB)


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """One-line errors for shapes that do not fit the layout in the module docstring."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective scan needs u and delta [batch, channels, length] of one shape, got {tuple(u.shape)} and {tuple(delta.shape)}")
    bt, di, length = u.shape
    if A.dim() != 2 or A.shape[0] != di:
        raise ValueError(f"selective scan needs A [channels={di}, state], got {tuple(A.shape)}")
    want = (bt, A.shape[1], length)
    if tuple(B.shape) != want or tuple(C.shape) != want:
        raise ValueError(f"selective scan needs B and C [batch, state, length] = {want}, got {tuple(B.shape)} and {tuple(C.shape)}")


def _step_sizes(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    return F.softplus(delta) if delta_softplus else delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + u * D[:, None].to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                             reverse: bool = False) -> Tensor:
    """The recurrence exactly as written in the module docstring, one step at a time. [Bt, Di, L].

    Computed in float32 (float64 inputs stay float64), returned in the input's dtype."""
    _check(u, delta, A, B, C)
    dtype, work = u.dtype, torch.promote_types(u.dtype, torch.float32)
    u, A, B, C = u.to(work), A.to(work), B.to(work), C.to(work)
    delta = _step_sizes(delta.to(work), delta_bias, delta_softplus)
    bt, di, length = u.shape
    h = u.new_zeros(bt, di, A.shape[1])
    y = u.new_zeros(bt, di, length)
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for l in steps:
        dt = delta[:, :, l, None]  # [Bt, Di, 1]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, l] * u[:, :, l, None]
        y[:, :, l] = (h * C[:, None, :, l]).sum(dim=-1)
    return _finish(y, u, D, z).to(dtype)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         reverse: bool = False) -> Tensor:
    """The same values as ``selective_scan_reference``, faster: the per-channel inputs laid out time-major once
    ([L, Bt, Di], [L, Bt, S]: small), then per step one exponential, one fused multiply-add with the outer product
    Δ u ⊗ B (never materialised for all steps), and the contraction with C as a batched matrix product; in place
    when no gradient is needed; sequences in cache-sized chunks. [Bt, Di, L]."""
    _check(u, delta, A, B, C)
    dtype, work = u.dtype, torch.promote_types(u.dtype, torch.float32)
    in_place = not (torch.is_grad_enabled() and any(x.requires_grad for x in (u, delta, A, B, C)))
    u, A = u.to(work), A.to(work)
    dt = _step_sizes(delta.to(work), delta_bias, delta_softplus).permute(2, 0, 1).contiguous()  # [L, Bt, Di]
    du = dt * u.permute(2, 0, 1)  # Δ u: [L, Bt, Di]
    b = B.to(work).permute(2, 0, 1).contiguous()[:, :, None, :]  # [L, Bt, 1, S]
    c = C.to(work).permute(2, 0, 1).contiguous()[..., None]  # [L, Bt, S, 1]
    length, steps = u.shape[-1], (range(u.shape[-1] - 1, -1, -1) if reverse else range(u.shape[-1]))
    # sequences in chunks whose state (chunk x Di x S floats) stays in a core's cache across the steps' operations
    chunk = max(1, CHUNK_ELEMENTS // (A.shape[0] * A.shape[1]))
    parts = []
    for s in range(0, u.shape[0], chunk):
        sl = slice(s, s + chunk)
        ys: list[Tensor] = [None] * length  # type: ignore[list-item]
        h = None
        for l in steps:
            if h is None:  # first step: the state was zero
                h = du[l, sl, :, None] * b[l, sl]
            elif in_place:
                h = torch.mul(dt[l, sl, :, None], A).exp_().mul_(h).addcmul_(du[l, sl, :, None], b[l, sl])
            else:
                h = torch.addcmul(torch.exp(dt[l, sl, :, None] * A) * h, du[l, sl, :, None], b[l, sl])
            ys[l] = torch.bmm(h, c[l, sl])  # [chunk, Di, 1]
        parts.append(torch.cat(ys, dim=-1))
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    return _finish(y, u, D, z).to(dtype)


@functools.lru_cache(maxsize=1)
def mamba_kernel() -> Callable | None:
    """mamba_ssm's CUDA ``selective_scan_fn`` when the package imports, else None (it is never installed for you)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built for another torch / CUDA: the torch path serves
        return None
    return selective_scan_fn


def selective_scan_mamba(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         reverse: bool = False) -> Tensor:
    """mamba_ssm's kernel (CUDA tensors only); ``reverse`` by flipping the sequences around it. [Bt, Di, L]."""
    kernel = mamba_kernel()
    if kernel is None:
        raise RuntimeError("mamba_ssm is not importable; use the torch selective scan (impl='torch') or install mamba-ssm on a CUDA machine")
    if not u.is_cuda:
        raise RuntimeError("mamba_ssm's selective scan runs on CUDA tensors only; use impl='torch' on the CPU")
    _check(u, delta, A, B, C)
    # the kernel wants u, delta, B, C, z in one input dtype and A, D, delta_bias in float32
    flip = (lambda x: x.to(u.dtype).flip(-1).contiguous()) if reverse else (lambda x: x.to(u.dtype).contiguous())
    y = kernel(flip(u), flip(delta), A.float().contiguous(), flip(B), flip(C),
               None if D is None else D.float().contiguous(), None if z is None else flip(z),
               None if delta_bias is None else delta_bias.float().contiguous(), delta_softplus)
    return y.flip(-1) if reverse else y


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   reverse: bool = False, impl: str = "auto") -> Tensor:
    """The selective scan by ``impl``: "auto" (mamba_ssm's kernel for CUDA tensors when it imports, else torch),
    "torch", "reference" or "mamba". Arguments and shapes as in the module docstring."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"selective scan impl must be one of {', '.join(IMPLEMENTATIONS)}, got '{impl}'")
    if impl == "auto":
        impl = "mamba" if (u.is_cuda and mamba_kernel() is not None) else "torch"
    fn = {"torch": selective_scan_torch, "reference": selective_scan_reference, "mamba": selective_scan_mamba}[impl]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
