"""DeltaNet: linear attention with the delta rule (Schlag, Irie, Schmidhuber 2021, arXiv
2102.11174), parallelised over the sequence by Yang, Wang, Zhang, Shen, Kim 2024 (arXiv
2406.06484), in the form of fla's ``DeltaNet`` layer.

Per head, with ``q_t, k_t`` L2-normalised over the head dimension and ``b_t`` a scalar:

    [q, k, v] = silu(conv_causal(x [W_q, W_k, W_v]))       depthwise, 4 taps (fla's short conv)
    q_t, k_t <- q_t / |q_t|, k_t / |k_t|;    b_t = sigmoid(x_t W_b)
    S_t = S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T       S_t in R^{dv x dk}, S_0 = 0
    o_t = S_t q_t / sqrt(dk)
    y_t = concat_h RMSNorm_head(o_t) W_o     (output_gate: RMSNorm_head(o_t) * silu(x_t W_g))

Each step writes ``v_t`` under key ``k_t`` after erasing a ``b_t`` fraction of what the state
held there (``S_{t-1} k_t``): with ``b_t = 1`` and a unit key the state then returns exactly
``v_t`` for ``k_t``. ``1 / sqrt(dk)`` is fla's kernel scale (only the norm's eps sees it).
Defaults: fla's layer (``expand_k = expand_v = 1``, the short convolution on, no output gate,
RMSNorm eps 1e-5, chunks of 64) with 2 heads, as Zoology's MQAR runs of DeltaNet. Without the
convolution (``short_conv=0``) q, k, v still pass through silu, as in fla.

Paths: ``reference`` is the loop over time (``_delta.naive_delta_rule``); ``forward`` the
chunked form (``_delta.chunked_delta_rule``: the UT transform makes each chunk a triangular
inverse and matrix products, with a hand-written backward, linear in T); on CUDA with ``fla`` installed, fla's
``chunk_gated_delta_rule`` with a zero decay (its ``chunk_delta_rule`` refuses fp32).
``step`` is the loop on one token. The map from v to o is linear given q, k, b: ``operator``
is per head ``T_ts = b_s q_t^T P_{s+1..t} k_s / sqrt(dk)`` with
``P_{a..t} = prod_{r=a..t} (I - b_r k_r k_r^T)`` (``_delta.delta_operator``, exact), applied
to v before the norm, gate and output projection.
State size: ``H dk dv`` floats plus the short convolution's ``(k - 1) D`` inputs, constant in T.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._delta import chunked_delta_rule, delta_operator, naive_delta_rule
from ._dispatch import call_time_major, fp32, kernel_module
from ._shortconv import ShortConv
from .registry import SequenceMixer, register


@register("deltanet")
class DeltaNet(SequenceMixer):
    """The delta rule mixer; ``gated_deltanet`` is this class with a decay (``_log_decay``).

    One input projection gives q, k, v (through the short convolution), the ``b`` logits, the
    decay logits (gated only) and the output gate (``output_gate`` only); a step re-runs it on
    the convolution's window of the last ``short_conv`` inputs.

    Args:
        d_model: width D of the input and output.
        num_heads: heads H; must divide the key and the value width.
        expand_k: key width over D (all heads together).
        expand_v: value width over D.
        short_conv: taps of the short causal convolution on q, k, v (0: none; silu stays).
        output_gate: gate the normed output by ``silu(x W_g)``.
        chunk_size: tokens per chunk of the chunked form.
        norm_eps: epsilon of the per-head RMSNorm.
        use_kernels: use fla's kernel on CUDA when it is installed, and on the CPU the short
            convolution compiled from C (``_cscan``; pure torch where it does not build).
    """

    gated = False

    def __init__(self, d_model: int, *, num_heads: int = 2,
                 expand_k: float = 1.0, expand_v: float = 1.0, short_conv: int = 4,
                 output_gate: bool = False, chunk_size: int = 64, norm_eps: float = 1e-5,
                 use_kernels: bool = True) -> None:
        super().__init__()
        name = "gated_deltanet" if self.gated else "deltanet"
        for opt, value in (("num_heads", num_heads), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {opt} must be >= 1, got {opt}={value!r}")
        for opt, value in (("expand_k", expand_k), ("expand_v", expand_v), ("norm_eps", norm_eps)):
            if not value > 0:
                raise ValueError(f"{name}: {opt} must be > 0, got {opt}={value!r}")
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        for what, dim in (("key", key_dim), ("value", value_dim)):
            if dim < num_heads or dim % num_heads:
                raise ValueError(f"{name}: the {what} dim {dim} (d_model={d_model} * expand_"
                                 f"{what[0]}) is not a positive multiple of num_heads={num_heads}")
        self.d_model, self.num_heads = d_model, num_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.dk, self.dv = key_dim // num_heads, value_dim // num_heads
        self.chunk_size, self.use_kernels = chunk_size, use_kernels
        # q, k, v | b logits | decay logits | output gate
        self.widths = [2 * key_dim + value_dim, num_heads, num_heads if self.gated else 0,
                       value_dim if output_gate else 0]
        self.proj = nn.Linear(d_model, sum(self.widths), bias=False)
        self.short_conv = ShortConv(2 * key_dim + value_dim, short_conv, name, use_kernels)
        self.norm = nn.RMSNorm(self.dv, eps=norm_eps)
        self.out = nn.Linear(value_dim, d_model, bias=False)

    def _log_decay(self, a: torch.Tensor) -> torch.Tensor | None:
        """Log decays ``[B, T, H]`` (fp32, <= 0) from the decay logits; None: no decay."""
        return None

    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q (unit, scaled), k (unit) ``[B, H, T, dk]``, v ``[B, H, T, dv]``, b and the log
        decay (or None) ``[B, H, T, 1]``, all fp32; the gate ``[B, T, value_dim]`` (or None)."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.key_dim
        qkv, b, a, r = self.proj(x).split(self.widths, -1)
        qkv = self.short_conv(qkv)  # rows of time, as the chunked kernel reads them
        if self.short_conv.conv is None:
            qkv = F.silu(qkv)  # fla's activation on q, k, v, with or without the convolution
        q, k, v = qkv.float().split([K, K, self.value_dim], -1)
        # unit keys keep every I - b k k^T a contraction (eigenvalues 1 - b and 1)
        q = F.normalize(q.view(B, T, H, self.dk), dim=-1, eps=1e-6) * self.dk ** -0.5
        k = F.normalize(k.view(B, T, H, self.dk), dim=-1, eps=1e-6)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, dk]
        v = v.view(B, T, H, self.dv).transpose(1, 2)  # [B, H, T, dv]
        b = torch.sigmoid(b.float()).transpose(1, 2)[..., None]  # [B, H, T, 1]
        g = self._log_decay(a)
        g = None if g is None else g.transpose(1, 2)[..., None]  # [B, H, T, 1]
        return q, k, v, b, g, (r if r.shape[-1] else None)

    def _out(self, o: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        B, H, T, dv = o.shape
        o = self.norm(o.transpose(1, 2).to(self.norm.weight.dtype))  # [B, T, H, dv] per head
        o = o.reshape(B, T, H * dv)  # [B, T, value_dim]
        if r is not None:
            o = o * F.silu(r.to(o.dtype))
        return self.out(o.to(self.out.weight.dtype))  # [B, T, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, b, g, r = self._streams(x)
        fla = kernel_module("fla.ops.gated_delta_rule", x, self.use_kernels)
        if fla is not None:
            o = _fla_delta_rule(fla, q, k, v, b, g)
        else:
            o, _ = chunked_delta_rule(q, k, v, b, g, chunk_size=self.chunk_size)
        return self._out(o, r)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, b, g, r = self._streams(x)
        o, _ = naive_delta_rule(q, k, v, b, g)
        return self._out(o, r)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, T]`` in fp32: row t mixes v_0..v_t into o_t."""
        q, k, _, b, g, _ = self._streams(x)
        return delta_operator(q, k, b, g, chunk_size=self.chunk_size)

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        *_, v, _, _, r = self._streams(x)
        return self._out(op @ v, r)

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``S [B, H, dk, dv]``, in fp32 whatever ``dtype`` the activations use; ``x`` the
        short convolution's last inputs ``[B, k - 1, D]`` (empty without it)."""
        return {"S": torch.zeros(batch, self.num_heads, self.dk, self.dv, device=device,
                                 dtype=torch.float32),
                "x": self.short_conv.init_window(batch, self.d_model, device, dtype)}

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        window, past = self.short_conv.window(state["x"], x_t)
        q, k, v, b, g, r = (None if t is None else t[..., -1:, :]  # the newest token
                            for t in self._streams(window))
        o, S = naive_delta_rule(q, k, v, b, g, initial_state=state["S"])
        return self._out(o, r)[:, 0], {"S": S, "x": past}

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.dk * self.dv + self.short_conv.state_size(self.d_model)

    def operator_channels(self) -> int:
        return self.dv


def _fla_delta_rule(fla: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    b: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """fla's Triton ``chunk_gated_delta_rule`` (layout ``[B, T, H, d]``, b and g ``[B, T, H]``)
    in fp32, for both layers: DeltaNet's is a zero log decay, since fla's ``chunk_delta_rule``
    refuses fp32 inputs. q is already normalised and scaled, k normalised."""
    with fp32(q):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, T, H, d]
        b = b[..., 0].transpose(1, 2)  # [B, T, H]
        g = torch.zeros_like(b) if g is None else g[..., 0].transpose(1, 2)  # [B, T, H]
        o, _ = call_time_major(fla.chunk_gated_delta_rule, q, k, v, g, b, scale=1.0)
        return o.transpose(1, 2)  # [B, H, T, dv]
