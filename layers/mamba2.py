"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", arXiv 2405.21060): the SSD layer, a
selective state space with a scalar decay per head, in the form of mamba-ssm's ``Mamba2``.

    [z, xBC, dt] = x W_in                       z: [B, T, D_in], D_in = expand * D
    [x, B, C] = silu(conv_causal(xBC))          depthwise, d_conv taps; B, C: [B, T, N]
    dt_t = softplus(dt_t + dt_bias)             one per head, H = D_in / P heads of P channels
    per head h:  h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T      h_t in R^{P x N}, A_h < 0
                 y_t = h_t C_t + D_h x_t
    out = RMSNorm(y * silu(z)) W_out            (the gate before the norm, mamba-ssm's default)

B and C are shared by the heads (one group). Per head this is scalar-gated linear attention
with ``q = C``, ``k = dt B``, ``v = x`` and log decay ``dt A`` (SSD, sec. 4-6): ``forward`` is
SSD's chunked matrix algorithm (``_recurrence.chunked_ssd``: inside a chunk the quadratic
masked form ``(C B^T * L) X``, between chunks the state; linear in T, the decays in log
space), with ``C B^T`` one matrix for all heads and the heads side by side in the columns of
every product; under a decay too strong to factorise ``L`` it is
``_recurrence.chunked_linear_attention`` per head. ``reference`` is the loop over time
(``_recurrence.naive_recurrence``); on CUDA with ``fla`` installed, fla's ``chunk_simple_gla`` (the
same scalar-decay kernel). ``step`` keeps the last ``d_conv - 1`` inputs and re-runs the input
projection and the convolution on that window (no bias on ``W_in``: the zero inputs before the
start project to the convolution's zero padding), then one step of the loop.
``operator`` is per head ``T_ts = C_t . (prod_{m=s+1..t} exp(dt_m A)) dt_s B_s`` plus ``D_h``
on the diagonal, applied to the head's ``x`` channels (after the convolution).

Initialisation as mamba-ssm: ``A = -exp(A_log)``, ``exp(A_log) ~ U(1, 16)`` per head;
``softplus(dt_bias)`` log-uniform in ``[dt_min, dt_max]``; ``D = 1``; ``A_log``, ``dt_bias``
and ``D`` skip weight decay. Defaults: mamba-ssm's ``expand = 2``, ``d_conv = 4`` (with bias);
``d_state = 16`` and ``head_dim = 16`` sized for widths 32-128 (see configs/layer/mamba2.yaml).
State size: ``H P N = D_in N`` floats plus the ``(d_conv - 1) D`` inputs the step keeps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._dispatch import call_time_major, fp32, kernel_module
from ._recurrence import causal_operator, chunked_ssd, naive_recurrence
from ._shortconv import CausalConv, _CausalConv
from .registry import SequenceMixer, register


@register("mamba2")
class Mamba2(SequenceMixer):
    """The SSD mixer: one input projection to ``z``, ``xBC`` and ``dt``; the convolution on
    ``xBC``; per head the scalar-decay recurrence; gate, norm and output projection.

    Args:
        d_model: width D of the input and output.
        d_state: state size N per head (B and C, shared by the heads).
        d_conv: taps of the causal depthwise convolution on ``xBC``.
        expand: inner width ``D_in = expand * D``.
        head_dim: channels P per head (``H = D_in / P`` heads).
        dt_min, dt_max: range of the log-uniform initial ``dt``.
        dt_init_floor: lower bound of the initial ``dt``.
        conv_bias: a bias on the convolution.
        chunk_size: tokens per chunk of the chunked form.
        norm_eps: epsilon of the gated RMSNorm.
        use_kernels: use fla's kernel on CUDA when it is installed, and on the CPU the short
            convolution compiled from C (``_cscan``; pure torch where it does not build).
    """

    def __init__(self, d_model: int, *, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, head_dim: int = 16, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 chunk_size: int = 64, norm_eps: float = 1e-5, use_kernels: bool = True) -> None:
        super().__init__()
        for opt, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                           ("head_dim", head_dim), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"mamba2: {opt} must be >= 1, got {opt}={value!r}")
        if (expand * d_model) % head_dim:
            raise ValueError(f"mamba2: expand * d_model = {expand * d_model} is not divisible by "
                             f"head_dim={head_dim}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"mamba2: need 0 < dt_min <= dt_max, got dt_min={dt_min}, "
                             f"dt_max={dt_max}")
        if not norm_eps > 0:
            raise ValueError(f"mamba2: norm_eps must be > 0, got norm_eps={norm_eps!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.head_dim = expand * d_model, head_dim
        self.num_heads = self.d_inner // head_dim
        self.chunk_size, self.use_kernels = chunk_size, use_kernels
        Di, N, H = self.d_inner, d_state, self.num_heads
        self.widths = [Di, Di + 2 * N, H]  # z | x, B, C | dt
        self.in_proj = nn.Linear(d_model, sum(self.widths), bias=False)
        self.conv = nn.Conv1d(Di + 2 * N, Di + 2 * N, d_conv, groups=Di + 2 * N,
                              padding=d_conv - 1, bias=conv_bias)
        self.norm = nn.RMSNorm(Di, eps=norm_eps)
        self.out_proj = nn.Linear(Di, d_model, bias=False)

        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

    def _ssd_streams(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """In fp32: C, B ``[B, T, N]``, x per head ``[B, T, H, P]``, dt and the log decay
        dt A ``[B, T, H]``; and the gate z ``[B, T, D_in]``."""
        z, xBC, dt = self.in_proj(x).split(self.widths, -1)
        # the convolution keeps xBC's [B, T, Di+2N] rows, as the kernel reads them (compiled
        # from C with use_kernels on the CPU: it reads the strided view and writes whole rows)
        conv = CausalConv if self.use_kernels else _CausalConv
        xBC = conv.apply((xBC if self.use_kernels else xBC.contiguous()).transpose(0, 1),
                         self.conv.weight[:, 0, :], self.conv.bias).transpose(0, 1)
        u, Bm, Cm = xBC.float().split([self.d_inner, self.d_state, self.d_state], -1)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # [B, T, H]
        u = u.unflatten(-1, (self.num_heads, self.head_dim))  # [B, T, H, P]
        return Cm, Bm, u, dt, dt * -self.A_log.float().exp(), z

    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per head, in ``_recurrence``'s convention and fp32: q = C ``[B, H, T, N]``,
        k = dt B ``[B, H, T, N]``, v = x ``[B, H, T, P]``, log decay dt A ``[B, H, T, 1]``;
        and the gate z ``[B, T, D_in]``."""
        Cm, Bm, u, dt, log_a, z = self._ssd_streams(x)
        (B, T, N), H = Cm.shape, self.num_heads
        q = Cm[:, None].expand(B, H, T, N)
        k = dt.transpose(1, 2)[..., None] * Bm[:, None]  # [B, H, T, N]
        return q, k, u.transpose(1, 2), log_a.transpose(1, 2)[..., None], z

    def _out(self, y: torch.Tensor, v: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """y ``[B, T, H, P]`` the recurrence, plus the skip ``D v`` (v ``[B, T, H, P]``; None
        when y has it), gated, normed and projected -> ``[B, T, D]``."""
        if v is not None:
            y = torch.addcmul(y, self.D.float()[:, None], v)
        y = y.flatten(2)  # [B, T, D_in]
        y = self.norm((y * F.silu(z.float())).to(self.norm.weight.dtype))
        return self.out_proj(y.to(self.out_proj.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fla = kernel_module("fla.ops.simple_gla", x, self.use_kernels)
        if fla is not None:
            q, k, v, log_a, z = self._streams(x)
            y = _fla_simple_gla(fla, q, k, v, log_a)
            return self._out(y.transpose(1, 2), v.transpose(1, 2), z)
        Cm, Bm, u, dt, log_a, z = self._ssd_streams(x)
        y, _ = chunked_ssd(Cm, Bm, u, dt, log_a, chunk_size=self.chunk_size)  # [B, T, H, P]
        return self._out(y, u, z)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, log_a, z = self._streams(x)
        y, _ = naive_recurrence(q, k, v, log_a)
        return self._out(y.transpose(1, 2), v.transpose(1, 2), z)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, T]`` per head, fp32, the skip ``D_h`` on the diagonal."""
        q, k, _, log_a, _ = self._streams(x)
        op = causal_operator(q, k, log_a, chunk_size=self.chunk_size)
        return op + torch.diag_embed(self.D.float()[:, None].expand(-1, op.shape[-1]))

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        _, _, v, _, z = self._streams(x)
        return self._out((op @ v).transpose(1, 2), None, z)  # the skip is inside op

    def operator_channels(self) -> int:
        return self.head_dim

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``h [B, H, N, P]`` in fp32 (``_recurrence``'s ``[dk, dv]`` layout); ``x`` the last
        ``d_conv - 1`` inputs ``[B, d_conv - 1, D]``."""
        return {"h": torch.zeros(batch, self.num_heads, self.d_state, self.head_dim,
                                 device=device, dtype=torch.float32),
                "x": torch.zeros(batch, self.d_conv - 1, self.d_model, device=device,
                                 dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        window = torch.cat([state["x"], x_t[:, None, :].to(state["x"].dtype)], 1)  # [B, d_conv, D]
        *streams, z = self._streams(window)
        q, k, v, log_a = (t[..., -1:, :] for t in streams)  # the newest token
        z = z[:, -1:]
        y, h = naive_recurrence(q, k, v, log_a, initial_state=state["h"])
        y = self._out(y.transpose(1, 2), v.transpose(1, 2), z)[:, 0]
        return y, {"h": h, "x": window[:, 1:]}

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state + (self.d_conv - 1) * self.d_model


def _fla_simple_gla(fla: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    log_a: torch.Tensor) -> torch.Tensor:
    """fla's Triton ``chunk_simple_gla`` (layout ``[B, T, H, d]``, g ``[B, T, H]``), in fp32,
    unscaled: k carries dt."""
    with fp32(q):
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # [B, T, H, d]
        g = log_a[..., 0].transpose(1, 2).contiguous()  # [B, T, H]
        o, _ = call_time_major(fla.chunk_simple_gla, q, k, v, g, scale=1.0)
        return o.transpose(1, 2)  # [B, H, T, P]
