"""Comparison helpers for fast paths against references (used by the tests, handy for anyone
adding a mixer): relative RMS error rather than element-wise allclose."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are zero)."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.norm()
    diff = (a - e).norm()
    if denom == 0:
        return float(diff)
    return float(diff / denom)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 5e-3,
                     what: str = "") -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    err = rel_rms_error(actual, expected)
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"{what}: relative RMS error {err:.3e} > {tol:.1e}")


def assert_same_function(fast: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                         inputs: Sequence[torch.Tensor], tol: float = 5e-3,
                         names: Sequence[str] = ()) -> None:
    """``fast(*inputs)`` against ``reference(*inputs)``: the outputs, and the grads of every
    input under one random cotangent (inputs must require grad)."""
    y = fast(*inputs)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y)
    grads = torch.autograd.grad(y, inputs, gy)
    y_ref = reference(*inputs)
    grads_ref = torch.autograd.grad(y_ref, inputs, gy)
    assert_rel_close(y, y_ref, tol, what="output")
    names = list(names) or [f"input {i}" for i in range(len(inputs))]
    for name, a, b in zip(names, grads, grads_ref):
        assert_rel_close(a, b, tol, what=f"grad of {name}")


def assert_matches_reference(module: torch.nn.Module, x: torch.Tensor, tol: float = 5e-3) -> None:
    """A mixer's ``forward`` against its ``reference`` on ``x``: the outputs, and the grads of
    ``x`` and of every parameter under one random cotangent (a parameter neither path uses is
    skipped)."""
    x = x.detach().clone().requires_grad_()
    wrt = [x, *module.parameters()]
    y = module(x)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y)
    grads = torch.autograd.grad(y, wrt, gy, allow_unused=True)
    y_ref = module.reference(x)
    grads_ref = torch.autograd.grad(y_ref, wrt, gy, allow_unused=True)
    assert_rel_close(y, y_ref, tol, what="output")
    names = ["x", *(n for n, _ in module.named_parameters())]
    for name, a, b in zip(names, grads, grads_ref):
        if a is not None or b is not None:
            assert_rel_close(a, b, tol, what=f"grad of {name}")
