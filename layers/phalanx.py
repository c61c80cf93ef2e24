"""Phalanx: a layer built on Sliding Window Recurrence (SWR), arXiv 2512.13921.

SWR is the first-order linear recurrence ``x_i = a_i x_{i-1} + u_i`` truncated to a *jagged*
window aligned to blocks of ``BL = 16`` tokens:

    x = (L * M_jag) u,    L_ij = prod_{m=j+1..i} a_m  (L_ii = 1),
    M_jag[i, j] = 1  iff  j <= i  and  floor(i/BL) - floor(j/BL) in {0, 1}

so token ``i`` sees its own block so far and the whole previous block: the
``(i mod BL) + 1 + BL`` most recent tokens (17 to 32; fewer in the first block).

Block two-pass computation (``swr``): (1) inside every block the exact recurrence from zero
(``BL`` steps, each over all blocks at once); (2) the carry
``x_{c,r} += (prod_{m<=r} a_{c,m}) * x^loc_{c-1, BL-1}`` from the previous block's *local*
terminal value (without its own carry), the products as ``exp`` of log-space cumulative sums.
Its backward is written out (``_SWR``): the adjoint of ``L * M_jag`` is the same jagged
recurrence run in reverse time. On CUDA with Triton installed (``use_kernels``), Triton
kernels of the same two passes, forward and backward (``_phalanx_triton``). Streaming state per channel: ``h_loc``, ``r_pref``,
``c_prev``; each step ``h_loc <- a h_loc + u``, ``r_pref <- a r_pref``,
``y = h_loc + r_pref c_prev``; at a block end ``c_prev <- h_loc, h_loc <- 0, r_pref <- 1``.

The layer (head dim 16, ``H = D / 16``; default ``nn.Linear`` init):

    A = sigmoid(x W_a + b_a)   one decay per head, tiled over its 16 channels   [B, T, H]
    Bg = sigmoid(x W_b + b_b),  C = x W_c + b_c,  V = x W_v                        [B, T, D]
    Y = SWR(A, Bg * V),   y = Y * C + V,   out = W_out y

The recurrence runs in fp32 even under bf16 autocast; T is padded to a multiple of BL
internally, so any T works. ``operator`` is ``L * M_jag`` per head ``[B, H, T, T]`` (built from
the definition in float64), applied to ``Bg * V`` of that head's channels.
State size: 2 floats per channel (``2 D``; ``h_loc`` and ``c_prev``), where the untruncated
recurrence would need 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._dispatch import fp32, kernel_module, pad_time
from .registry import SequenceMixer, register


class _SWR(torch.autograd.Function):
    """Block two-pass SWR on whole blocks: la ``[..., NB, BL]`` log decays, u
    ``[..., NB, BL, c]`` -> x ``[..., NB, BL, c]`` (fp32).

    Forward: pass 1 runs the recurrence ``loc_r = a_r loc_{r-1} + u_r`` from zero inside every
    block, one step of ``BL`` for all blocks at once; pass 2 adds the carry
    ``P_r e_{c-1}`` with ``P_r = exp(cs_r)`` (``cs`` the in-block cumulative log decay) and
    ``e_{c-1}`` the previous block's local end. Saves x, the ends e and la: no ``[BL, BL]``
    matrices, nothing else of x's size.

    Backward: the adjoint of ``L * M_jag`` is the same jagged recurrence in reverse time:
    ``zc`` = the in-block reverse scan of gx (``zc_r = gx_r + a_{r+1} zc_{r+1}``), then
    ``grad_u = z = zc + Q_r inj_c`` with ``Q_r = exp(cs_end - cs_r)`` and the injection
    ``inj_c = a_{c+1,0} zc_{c+1,0}`` from the next block. Every log decay feeds both chains:
    ``dL/dla_r = sum_ch [a_r loc_{r-1} z_r + carry_r zc_r]``, which with ``carry_r = P_r e``
    and ``P_r Q_r = Gamma = exp(cs_end)`` becomes
    ``a_r sum_ch x_{r-1} z_r - Gamma sum_ch e_{c-1} inj_c`` (``x_{-1} := e_{c-1}``).
    """

    @staticmethod
    def forward(ctx: Any, la: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        BL = la.shape[-1]
        a, cs = la.exp(), la.cumsum(-1)  # [..., NB, BL]
        x = torch.empty(u.shape, dtype=u.dtype, device=u.device)  # [..., NB, BL, c]
        x[..., 0, :] = u[..., 0, :]
        for r in range(1, BL):  # pass 1: all blocks' local recurrences, one step at a time
            torch.addcmul(u[..., r, :], a[..., r, None], x[..., r - 1, :], out=x[..., r, :])
        e = F.pad(x[..., :-1, -1, :], (0, 0, 1, 0))  # [..., NB, c] e_{c-1}, zero for block 0
        x.addcmul_(cs.exp()[..., None], e[..., None, :])  # pass 2: the carry
        ctx.save_for_backward(la, x, e)
        return x

    @staticmethod
    def backward(ctx: Any, gx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        la, x, e = ctx.saved_tensors
        BL = la.shape[-1]
        a, cs = la.exp(), la.cumsum(-1)  # [..., NB, BL]
        z = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # [..., NB, BL, c]
        z[..., -1, :] = gx[..., -1, :]
        for r in range(BL - 2, -1, -1):  # zc: the in-block reverse scan
            torch.addcmul(gx[..., r, :], a[..., r + 1, None], z[..., r + 1, :], out=z[..., r, :])
        inj = F.pad(a[..., 1:, 0, None] * z[..., 1:, 0, :], (0, 0, 0, 1))  # [..., NB, c]
        gla = None
        if ctx.needs_input_grad[0]:
            gamma = cs[..., -1].exp()  # [..., NB]
            # r = 0 before z is final: the carry term, sum_ch e zc_0 (Q_0 inj cancels -Gamma)
            gla = torch.empty_like(la)
            gla[..., 0] = a[..., 0] * torch.linalg.vecdot(e, z[..., 0, :])
        z.addcmul_((cs[..., -1:] - cs).exp()[..., None], inj[..., None, :])  # z = zc + Q inj
        if gla is not None:
            gla[..., 1:] = a[..., 1:] * torch.linalg.vecdot(x[..., :-1, :], z[..., 1:, :])
            gla[..., 1:] -= (gamma * torch.linalg.vecdot(e, inj))[..., None]
        return gla, z


def swr(log_a: torch.Tensor, u: torch.Tensor, block: int = 16) -> torch.Tensor:
    """Block two-pass SWR (``_SWR``). log_a ``[..., T]`` (one decay per row of channels),
    u ``[..., T, c]`` -> x ``[..., T, c]`` in fp32."""
    with fp32(u):
        T = u.shape[-2]
        la = rearrange(pad_time(log_a.float(), block, dim=-1), "... (n l) -> ... n l", l=block)
        ub = rearrange(pad_time(u.float(), block), "... (n l) c -> ... n l c", l=block)
        x = rearrange(_SWR.apply(la, ub), "... n l c -> ... (n l) c")  # [..., T (padded), c]
        return x if x.shape[-2] == T else x[..., :T, :]


def swr_reference(log_a: torch.Tensor, u: torch.Tensor, block: int = 16) -> torch.Tensor:
    """SWR as a plain loop over time, in fp32: two copies of the recurrence, restarted at
    alternate block starts; a token in block c reads the copy restarted at block c - 1."""
    a, u = log_a.float().exp(), u.float()  # [..., T], [..., T, c]
    h = [torch.zeros_like(u[..., 0, :]), torch.zeros_like(u[..., 0, :])]
    out = []
    for t, (a_t, u_t) in enumerate(zip(a.unbind(-1), u.unbind(-2))):
        c = t // block
        if t % block == 0:
            h[c % 2] = torch.zeros_like(h[c % 2])
        h = [a_t[..., None] * h_i + u_t for h_i in h]
        out.append(h[(c - 1) % 2] if c > 0 else h[0])
    return torch.stack(out, -2)


def jagged_operator(log_a: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``L * M_jag`` from the definition: log_a ``[..., T]`` -> ``[..., T, T]`` (fp32, formed in
    float64 so the global cumulative sum loses nothing at long T)."""
    T = log_a.shape[-1]
    cs = log_a.double().cumsum(-1)  # [..., T]
    i = torch.arange(T, device=log_a.device)
    blk = i // block
    mask = (i[None, :] <= i[:, None]) & (blk[:, None] - blk[None, :] <= 1)  # [T, T] M_jag
    diff = cs[..., :, None] - cs[..., None, :]  # log L_ij
    return diff.masked_fill(~mask, float("-inf")).exp().float()


@register("phalanx")
class Phalanx(SequenceMixer):
    """Phalanx: sigmoid-gated sliding-window recurrence over jagged windows of one to two
    blocks, one decay per head (see the module docstring).

    Args:
        d_model: width D of the input and output; a multiple of ``head_dim``.
        head_dim: channels per head, which share a decay.
        block_size: tokens per block BL (a token sees its block so far and the previous one).
        use_kernels: use the Triton kernels on CUDA when triton is installed.
    """

    def __init__(self, d_model: int, *, head_dim: int = 16,
                 block_size: int = 16, use_kernels: bool = True) -> None:
        super().__init__()
        if head_dim < 1 or d_model % head_dim:
            raise ValueError(f"phalanx: d_model={d_model} is not divisible by head_dim={head_dim}")
        if block_size < 1:
            raise ValueError(f"phalanx: block_size must be a positive int, got {block_size}")
        self.d_model, self.head_dim, self.block_size = d_model, head_dim, block_size
        self.use_kernels = use_kernels
        self.num_heads = d_model // head_dim
        self.abc = nn.Linear(d_model, self.num_heads + 2 * d_model)  # W_a, W_b, W_c with biases
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)


    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """log A ``[B, H, T]`` and u = Bg * V ``[B, H, T, hd]`` in fp32; C, V ``[B, T, D]``."""
        H, D = self.num_heads, self.d_model
        za, zb, c = self.abc(x).split([H, D, D], -1)
        v = self.v(x)
        log_a = rearrange(F.logsigmoid(za.float()), "b t h -> b h t")
        u = rearrange(torch.sigmoid(zb.float()) * v.float(), "b t (h d) -> b h t d", h=H)
        return log_a, u, c, v

    def _out(self, Y: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        Y = rearrange(Y, "b h t d -> b t (h d)")  # [B, T, D]
        y = Y * c.float() + v.float()  # fp32; cast for the projection (bf16 when the layer is)
        return self.out(y.to(self.out.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_a, u, c, v = self._streams(x)
        triton_swr = kernel_module(f"{__package__}._phalanx_triton", x, self.use_kernels)
        two_pass = swr if triton_swr is None else triton_swr.swr
        return self._out(two_pass(log_a, u, self.block_size), c, v)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        log_a, u, c, v = self._streams(x)
        return self._out(swr_reference(log_a, u, self.block_size), c, v)

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """``L * M_jag`` per head, ``[B, H, T, T]``."""
        return jagged_operator(self._streams(x)[0], self.block_size)

    def apply_operator(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        _, u, c, v = self._streams(x)
        return self._out(op @ u, c, v)

    def operator_channels(self) -> int:
        return self.head_dim

    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Any]:
        """fp32 ``h_loc``, ``c_prev`` ``[B, H, hd]``; ``r_pref`` ``[B, H, 1]`` (shared by a head's
        channels, as the decay is); ``pos`` the tokens seen so far."""
        zeros = torch.zeros(batch, self.num_heads, self.head_dim, device=device,
                            dtype=torch.float32)
        return {"h_loc": zeros, "c_prev": zeros.clone(),
                "r_pref": zeros.new_ones(batch, self.num_heads, 1), "pos": 0}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        log_a, u, c, v = self._streams(x_t[:, None, :])
        a, u = log_a.exp(), u[:, :, 0]  # [B, H, 1], [B, H, hd]
        h_loc, r_pref, c_prev = a * state["h_loc"] + u, a * state["r_pref"], state["c_prev"]
        y = h_loc + r_pref * c_prev  # [B, H, hd]
        if state["pos"] % self.block_size == self.block_size - 1:  # block end
            c_prev, h_loc, r_pref = h_loc, torch.zeros_like(h_loc), torch.ones_like(r_pref)
        state = {"h_loc": h_loc, "c_prev": c_prev, "r_pref": r_pref, "pos": state["pos"] + 1}
        return self._out(y[:, :, None], c, v)[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model
