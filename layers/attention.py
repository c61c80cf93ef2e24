"""Causal multi-head softmax attention (Vaswani et al. 2017), the zoo's baseline.

    y = W_o concat_h softmax(q_h k_h^T / sqrt(dk) + b_h) v_h

with ``b_h`` the causal mask, optionally restricted to a sliding ``window`` (token ``i`` sees
keys ``i - window < j <= i``; registered on its own as ``swa``), plus the positional scheme
``pos`` (layers/positional.py): ``rope`` (default), ``nope``, ``alibi`` (``b_h[i, j] =
-m_h (i - j)``) or ``hard_alibi`` (head ``h < num_masked_heads`` sees only ``i - j <= h``).
``qk_norm`` RMS-normalises q and k per head (learned gain) before the positional step.

Paths: ``reference`` materialises the attention matrix in fp32; ``forward`` uses
``F.scaled_dot_product_attention`` (which dispatches to flash/memory-efficient kernels where
the device has them) with the bias as ``attn_mask``; ``step`` keeps a KV cache (only the last
``window`` entries when windowed) and applies the same bias at absolute positions.

A window (``swa``'s, or ``hard_alibi``'s per-head reach) is an ``attn_mask`` to SDPA, which
then has no flash kernel. On CUDA with ``flash-attn`` (>= 2.3) installed, fp16/bf16
activations and ``use_kernels``, ``forward`` calls flash-attn's windowed kernel instead
(``_flash``): ``flash_attn_func(q, k, v, causal=True, window_size=(left, 0))``, where a query
at ``i`` sees the keys ``i - left .. i`` (flash-attn's convention), so ``left = window - 1``
for a window, ``min(h, window - 1)`` for hard-ALiBi head ``h < num_masked_heads``, ``-1``
(all the past) for the other heads without a window: one call per distinct ``left``. Soft
``alibi`` stays on SDPA; SDPA's path stays the default and the reference.
State size: ``2 D t`` floats at position ``t`` (the KV cache), ``2 D window`` with a window.

Subclasses (``ssa``, ``cat``) change how q, k, v are made (``_project``, ``_qkv``) and what the
mixing matrix acts on (``_values``, ``_mix_sources``); the attention itself is shared.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._dispatch import kernel_module, pad_time
from .positional import POSITIONS, attention_bias, rope
from .registry import SequenceMixer, register, split_heads

FLASH_DTYPES = (torch.float16, torch.bfloat16)  # the only ones flash-attn takes
FLASH_MAX_HEAD_DIM = 256  # flash-attn 2's largest head dim


@register("swa", window=64)
@register("attention")
class Attention(SequenceMixer):
    """Causal multi-head softmax attention; registered as ``attention`` and, with
    ``window=64``, as ``swa``.

    Args:
        d_model: width D of the input and output.
        num_heads: heads H; must divide ``d_model`` (head dim ``D / H``, even under rope).
            Default 1, Zoology's MQAR baseline: one head of width D.
        pos: positional scheme, one of ``rope``, ``nope``, ``alibi``, ``hard_alibi``.
        window: sliding window (token i sees ``i - window < j <= i``); None: all the past.
        num_masked_heads: ``hard_alibi`` only: heads ``h`` below it see ``i - j <= h`` only
            (None: half the heads); the others use no positions.
        qk_norm: RMS-normalise q and k per head (learned gain) before the positional step.
        rope_base: rope's frequency base.
        bias: biases on the qkv and output projections.
        use_kernels: use flash-attn's windowed kernel for a window or ``hard_alibi`` on CUDA
            (fp16/bf16) when flash-attn is installed.
    """

    label = "attention"  # names the mixer in option errors

    def __init__(self, d_model: int, *, num_heads: int = 1, pos: str = "rope",
                 window: int | None = None,
                 num_masked_heads: int | None = None, qk_norm: bool = False,
                 rope_base: float = 10000.0, bias: bool = False,
                 use_kernels: bool = True) -> None:
        super().__init__()
        name = self.label
        split_heads(name, num_heads, d_model=d_model)
        if pos not in POSITIONS:
            raise ValueError(f"{name}: pos={pos!r} is not one of {POSITIONS}")
        if (d_model // num_heads) % 2 and pos == "rope":
            raise ValueError(f"{name}: pos='rope' needs an even head dim, got d_model/num_heads="
                             f"{d_model // num_heads}")
        if window is not None and window < 1:
            raise ValueError(f"{name}: window must be a positive int or None, got {window}")
        if num_masked_heads is not None and pos != "hard_alibi":
            raise ValueError(f"{name}: num_masked_heads applies only to pos='hard_alibi', "
                             f"got pos={pos!r}")
        if num_masked_heads is None:
            num_masked_heads = num_heads // 2 if pos == "hard_alibi" else 0
        if not 0 <= num_masked_heads <= num_heads:
            raise ValueError(f"{name}: num_masked_heads must be in 0..num_heads={num_heads}, "
                             f"got {num_masked_heads}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.pos, self.window, self.rope_base = pos, window, rope_base
        self.num_masked_heads, self.use_kernels = num_masked_heads, use_kernels
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else None

    # q, k, v ---------------------------------------------------------------------------------
    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The fused projection ``[B, T, 3 D]`` (q, k, v, each heads-major) -> q, k, v
        ``[B, H, T, dk]`` (q, k normed if asked)."""
        q, k, v = rearrange(qkv, "b t (s h d) -> s b h t d", s=3, h=self.num_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v ``[B, H, T, dk]`` before positions."""
        return self._split(self.qkv(x))

    def _rotate(self, q: torch.Tensor, k: torch.Tensor, offset: int) -> tuple[torch.Tensor, ...]:
        if self.pos == "rope":
            positions = torch.arange(offset, offset + q.shape[2], device=q.device)
            q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
        return q, k

    def _qkv(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, ...]:
        """q, k, v ``[B, H, T, dk]`` as the attention consumes them; ``x`` starts at ``offset``."""
        q, k, v = self._project(x)
        return (*self._rotate(q, k, offset), v)

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """The per-head stream ``u(x) [B, H, T, dv]`` the operator mixes: ``y = W_o (T u)``."""
        return self._project(x)[2]

    def _mix_sources(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Operator from attention probabilities: what ``forward`` does to ``u(x)`` before the
        softmax-weighted sum (nothing here; ``ssa`` scales it, ``cat`` filters it)."""
        return probs

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        """Heads ``[B, H, T, dv]`` -> the output projection of their concatenation ``[B, T, D]``."""
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    # positions and masks ---------------------------------------------------------------------
    def _bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Additive fp32 bias ``[H, Tq, Tk]`` (causal, window, positional scheme)."""
        return attention_bias(q_pos, k_pos, pos=self.pos, num_heads=self.num_heads,
                              window=self.window, num_masked_heads=self.num_masked_heads)

    def _attn_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor | None:
        """SDPA ``attn_mask``; None when causality is all there is (``is_causal`` in forward,
        nothing in ``step``, where every cached key lies in the past)."""
        if self.pos in ("rope", "nope") and self.window is None:
            return None
        return self._bias(q_pos, k_pos).to(dtype)

    def _probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``[B, H, T, T]`` in fp32, rows are queries."""
        positions = torch.arange(q.shape[2], device=q.device)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        return (scores + self._bias(positions, positions)).softmax(-1)

    # paths -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        flash = self._flash_module(q)
        if flash is not None:
            return self._merge(self._flash(flash, q, k, v))
        if self.window is not None and x.shape[1] > 2 * self.window:
            return self._merge(self._windowed(q, k, v))
        positions = torch.arange(x.shape[1], device=x.device)
        mask = self._attn_mask(positions, positions, q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self._merge(o)

    def _windowed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Sliding-window attention in blocks of ``W = window`` queries, each attending to its
        own block and the one before (every key a window can reach): ``O(T W)`` time and
        memory instead of the dense ``O(T^2)``. The bias depends on ``i - j`` only, so one
        ``[H, W, 2W]`` block serves every block; block 0 has no predecessor (masked)."""
        W, T = self.window, q.shape[2]
        qb, kb, vb = (rearrange(pad_time(t, W), "b h (n w) d -> b h n w d", w=W)
                      for t in (q, k, v))  # [B, H, NB, W, d]
        shift = (0, 0, 0, 0, 1, 0)  # each block's predecessor; zeros before block 0
        k2 = torch.cat([F.pad(kb[:, :, :-1], shift), kb], dim=3)  # [B, H, NB, 2W, dk]
        v2 = torch.cat([F.pad(vb[:, :, :-1], shift), vb], dim=3)
        rel = self._bias(torch.arange(W, 2 * W, device=q.device),
                         torch.arange(2 * W, device=q.device))  # [H, W, 2W]
        first = torch.zeros(qb.shape[2], 1, 2 * W, device=q.device)
        first[0, :, :W] = -math.inf
        mask = (rel[:, None] + first).to(q.dtype)  # [H, NB, W, 2W]
        o = F.scaled_dot_product_attention(qb, k2, v2, attn_mask=mask)  # [B, H, NB, W, dv]
        return rearrange(o, "b h n w d -> b h (n w) d")[:, :, :T]

    # flash-attn ------------------------------------------------------------------------------
    def _flash_module(self, q: torch.Tensor) -> Any:
        """flash-attn's module where its windowed kernel serves: a window or ``hard_alibi``
        reach to enforce (plain causal attention has SDPA's flash kernel already; soft
        ``alibi`` is a bias, not a window), fp16/bf16 ``q`` (all flash-attn runs) on CUDA, a
        head dim it takes, ``use_kernels``, and the package installed; otherwise None."""
        windowed = self.window is not None or self.pos == "hard_alibi"
        if not windowed or self.pos == "alibi" or q.dtype not in FLASH_DTYPES \
                or self.head_dim > FLASH_MAX_HEAD_DIM:
            return None
        return kernel_module("flash_attn", q, self.use_kernels)

    def flash_reach(self) -> list[int]:
        """Per head, flash-attn's left window: a query at ``i`` sees keys ``i - left .. i``
        (``-1``: all the past). ``window`` w gives ``w - 1``; hard-ALiBi head ``h`` below
        ``num_masked_heads`` sees ``i - j <= h``, within the window if there is one."""
        left = -1 if self.window is None else self.window - 1
        reach = [left] * self.num_heads
        if self.pos == "hard_alibi":
            for h in range(self.num_masked_heads):
                reach[h] = h if left < 0 else min(h, left)
        return reach

    def _flash(self, flash: Any, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:
        """Windowed attention by ``flash.flash_attn_func`` (layout ``[B, T, H, d]``), one call
        per run of heads with the same reach (``flash_reach``); ``[B, H, T, dv]`` out."""
        q, k, v = (rearrange(t, "b h t d -> b t h d") for t in (q, k, v))
        reach, out, start = self.flash_reach(), [], 0
        for end in range(1, self.num_heads + 1):
            if end == self.num_heads or reach[end] != reach[start]:
                heads = slice(start, end)
                out.append(flash.flash_attn_func(q[:, :, heads], k[:, :, heads], v[:, :, heads],
                                                 causal=True, window_size=(reach[start], 0)))
                start = end
        o = out[0] if len(out) == 1 else torch.cat(out, dim=2)
        return rearrange(o, "b t h d -> b h t d")

    def _attend_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._merge((self._probs(q, k) @ v.float()).to(v.dtype))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend_reference(*self._qkv(x))

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """The causal mixing matrix ``[B, H, T, T]`` (rows: queries) acting on ``_values``, fp32."""
        q, k, _ = self._qkv(x)
        return self._mix_sources(self._probs(q, k), x)

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        return self._merge((op @ self._values(x).float()).to(x.dtype))

    def operator_channels(self) -> int:
        return self.head_dim

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Any]:
        empty = torch.zeros(batch, self.num_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone(), "pos": 0}

    def _cached_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Attend from one query ``[B, H, 1, dk]`` at ``state["pos"]`` over the cache plus the new
        key/value; returns ``y_t [B, D]`` and the grown (window-cropped) cache."""
        k = torch.cat([state["k"], k], dim=2)  # [B, H, t+1, dk]
        v = torch.cat([state["v"], v], dim=2)
        if self.window is not None:
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]
        t = state["pos"]
        q_pos = torch.tensor([t], device=q.device)
        k_pos = torch.arange(t - k.shape[2] + 1, t + 1, device=q.device)  # absolute positions
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attn_mask(q_pos, k_pos, q.dtype))
        return self._merge(o)[:, 0], {"k": k, "v": v, "pos": t + 1}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        q, k, v = self._qkv(x_t[:, None, :], offset=state["pos"])  # [B, H, 1, dk]
        return self._cached_step(q, k, v, state)

    def state_size(self, seq_len: int) -> int:
        length = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * self.d_model * length
