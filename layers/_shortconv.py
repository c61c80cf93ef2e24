"""The short causal convolution of linear-recurrence featurizers (H3, arXiv 2212.14052;
Zoology's BaseConv, arXiv 2312.04927; the ``use_short_conv`` of fla's layers):

    z = silu(conv_causal(z)),    a depthwise convolution of ``kernel_size`` taps over time

applied to the projected q, k, v streams. It lets a key be built from the previous token and
a value from the current one, the shift that associative recall needs and that a single
linear recurrence does not learn readily (measured on MQAR in ``configs/experiment``'s
ESS study). ``kernel_size=0`` is the identity (no parameters).

In a recurrent ``step`` the mixer keeps its last ``kernel_size - 1`` inputs and re-runs its
projections and this convolution on that window (see ``window``): without biases on the
projections, the zero inputs before the start project to the zero padding of the convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    def __init__(self, channels: int, kernel_size: int, owner: str) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 0:
            raise ValueError(f"{owner}: short_conv must be an int >= 0 (0: none), got "
                             f"short_conv={kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = (nn.Conv1d(channels, channels, kernel_size, groups=channels,
                               padding=kernel_size - 1, bias=False) if kernel_size else None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, T, C] -> [B, T, C]``, causal."""
        if self.conv is None:
            return z
        T = z.shape[1]
        return F.silu(self.conv(z.transpose(1, 2))[..., :T]).transpose(1, 2)

    def state_size(self, d_model: int) -> int:
        """Floats the step keeps: the last ``kernel_size - 1`` inputs of width ``d_model``."""
        return max(self.kernel_size - 1, 0) * d_model

    def init_window(self, batch: int, d_model: int, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """The ``kernel_size - 1`` most recent mixer inputs ``[B, k - 1, D]`` (zeros; empty
        without a convolution)."""
        return torch.zeros(batch, max(self.kernel_size - 1, 0), d_model, device=device,
                           dtype=dtype)

    def window(self, past: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(window [B, k, D], new past [B, k - 1, D])`` for one step on ``x_t [B, D]``: the
        mixer runs its streams on the window and keeps the last position."""
        x = torch.cat([past, x_t[:, None, :].to(past.dtype)], 1)
        return x, x[:, 1:]
