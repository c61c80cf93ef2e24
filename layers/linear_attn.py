"""Linear attention (Katharopoulos, Vyas, Pappas, Fleuret 2020, "Transformers are RNNs",
arXiv 2006.16236): softmax attention with the exponential kernel replaced by a feature map.

Per head (``S in R^{dk x dv}``, ``S_0 = 0``):

    S_t = S_{t-1} + phi(k_t)^T v_t,        o_t = phi(q_t) S_t
    optional normaliser:  o_t / (phi(q_t) . z_t + eps),   z_t = sum_{j<=t} phi(k_j)
    y = W_o concat_h o

``phi``: ``identity`` (default), ``elu+1``, ``relu``. ``short_conv=k > 0`` (default 0, off) puts
fla's short convolution on q, k, v after their projection, before ``phi``:
``silu(conv_causal(.))``, depthwise, k taps (``_shortconv.py``). Parallel form
``O = ((Q K^T) * M) V``; ``forward`` is the chunked form
(``_recurrence.chunked_linear_attention`` without decay), linear in T.
The normaliser is the same recurrence on an extra all-ones value column (``z_t`` rides along
as column ``dv`` of the state). On CUDA with ``fla`` installed, fla's ``chunk_linear_attn``.

Paths: ``reference`` loops over time; ``step`` runs that loop on one token. ``operator`` is
``(phi(Q) phi(K)^T) * M`` per head (row-normalised with the normaliser), applied to v.
State size: ``H dk dv`` floats (``H dk (dv + 1)`` with the normaliser; plus ``(k - 1) D`` inputs
with the short convolution), constant in T.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._dispatch import call_time_major, kernel_module
from ._recurrence import chunked_linear_attention, naive_recurrence
from ._shortconv import ShortConv
from .registry import SequenceMixer, register, split_heads

FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "elu+1": lambda t: F.elu(t) + 1.0,
    "relu": F.relu,
}
EPS = 1e-6


@register("linear_attn")
class LinearAttention(SequenceMixer):
    """Linear attention: ``S_t = S_{t-1} + phi(k_t)^T v_t``, ``o_t = phi(q_t) S_t`` per head.

    Args:
        d_model: width D of the input and output.
        num_heads: heads H; must divide ``d_model``.
        feature_map: ``phi``, one of ``identity``, ``elu+1``, ``relu``.
        normalize: divide by ``phi(q_t) . z_t``, ``z_t`` the sum of ``phi(k_j)`` so far.
        chunk_size: tokens per chunk of the chunked form.
        short_conv: taps of the short causal convolution on q, k, v (0: none).
        use_kernels: use fla's kernel on CUDA when it is installed, and on the CPU the short
            convolution compiled from C (``_cscan``; pure torch where it does not build).
    """

    def __init__(self, d_model: int, *, num_heads: int = 4,
                 feature_map: str = "identity", normalize: bool = False, chunk_size: int = 64,
                 short_conv: int = 0, use_kernels: bool = True) -> None:
        super().__init__()
        split_heads("linear_attn", num_heads, d_model=d_model)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"linear_attn: feature_map={feature_map!r} is not one of "
                             f"{tuple(FEATURE_MAPS)}")
        if chunk_size < 1:
            raise ValueError(f"linear_attn: chunk_size must be a positive int, got {chunk_size}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.feature_map, self.phi = feature_map, FEATURE_MAPS[feature_map]
        self.normalize, self.chunk_size, self.use_kernels = normalize, chunk_size, use_kernels
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.short_conv = ShortConv(3 * d_model, short_conv, "linear_attn", use_kernels)

    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi(q), phi(k) ``[B, H, T, dk]`` and v ``[B, H, T, dv]``."""
        qkv = self.short_conv(self.qkv(x))
        q, k, v = rearrange(qkv, "b t (s h d) -> s b h t d", s=3, h=self.num_heads)
        return self.phi(q), self.phi(k), v

    def _values(self, v: torch.Tensor) -> torch.Tensor:
        """v with a ones column when normalising: the recurrence then also carries z_t."""
        if not self.normalize:
            return v
        return torch.cat([v, torch.ones_like(v[..., :1])], -1)  # [B, H, T, dv + 1]

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + EPS)  # phi(q_t) S_t / (phi(q_t) . z_t)
        return self._merge(o)

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        o = rearrange(o, "b h t d -> b t (h d)")  # [B, T, D]
        return self.out(o.to(self.out.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._streams(x)
        v = self._values(v)
        fla = kernel_module("fla.ops.linear_attn", x, self.use_kernels)
        if fla is not None:
            o = _fla_linear_attn(fla, q, k, v)
        else:
            o, _ = chunked_linear_attention(q, k, v, chunk_size=self.chunk_size)
        return self._out(o)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._streams(x)
        o, _ = naive_recurrence(q, k, self._values(v))
        return self._out(o)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, T]`` in fp32: ``(phi(Q) phi(K)^T) * M``, rows normalised if enabled."""
        q, k, _ = self._streams(x)
        op = (q.float() @ k.float().transpose(-1, -2)).tril()  # [B, H, T, T]
        if self.normalize:
            op = op / (op.sum(-1, keepdim=True) + EPS)
        return op

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        _, _, v = self._streams(x)
        return self._merge(op @ v.float())

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``S [B, H, dk, dv (+1)]`` in fp32; ``x`` the short convolution's last inputs
        ``[B, k - 1, D]`` (empty without it)."""
        dv = self.head_dim + int(self.normalize)
        return {"S": torch.zeros(batch, self.num_heads, self.head_dim, dv, device=device,
                                 dtype=torch.float32),
                "x": self.short_conv.init_window(batch, self.d_model, device, dtype)}

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        window, past = self.short_conv.window(state["x"], x_t)
        q, k, v = (t[..., -1:, :] for t in self._streams(window))  # the newest token
        o, S = naive_recurrence(q, k, self._values(v), initial_state=state["S"])
        return self._out(o)[:, 0], {"S": S, "x": past}

    def state_size(self, seq_len: int) -> int:
        return (self.num_heads * self.head_dim * (self.head_dim + int(self.normalize))
                + self.short_conv.state_size(self.d_model))

    def operator_channels(self) -> int:
        return self.head_dim


def _fla_linear_attn(fla: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """fla's Triton ``chunk_linear_attn`` (layout ``[B, T, H, d]``, unscaled, unnormalised:
    the normaliser is applied by the caller from the ones column)."""
    q, k, v = (rearrange(t, "b h t d -> b t h d") for t in (q, k, v))
    o, _ = call_time_major(fla.chunk_linear_attn, q, k, v, scale=1.0, normalize=False)
    return rearrange(o, "b t h d -> b h t d")
