"""Comparison helpers for fast paths against references (used by the tests, handy for anyone
adding a mixer): relative RMS error rather than element-wise allclose."""

from __future__ import annotations

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
