"""Tests of the delta-rule and SSD mixers (deltanet, gated_deltanet, mamba2): the chunked delta
rule against its loop (outputs, every gradient and the final state, at odd lengths and chunk
sizes that do not divide them), what the delta rule computes (exact retrieval and overwrite at
b = 1; decay 1 is DeltaNet), strong decay, bf16 autocast, the step, the options, and the fla
adapters with CPU stand-ins."""

import sys

import pytest
import torch
import torch.nn.functional as F

import layers
from layers._delta import _unit_lower_inverse, chunked_delta_rule, delta_operator, naive_delta_rule
from layers import _recurrence
from layers._recurrence import chunked_ssd, naive_recurrence
from layers.testing import assert_matches_reference, assert_rel_close, rel_rms_error

MIXERS = ["deltanet", "gated_deltanet", "mamba2"]
D = 32


def make(name: str, d_model: int = D, **opts) -> torch.nn.Module:
    torch.manual_seed(0)
    return layers.build(name, d_model, **opts).eval()


def inputs(T: int, B: int = 2, d_model: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(seed))


def delta_inputs(T: int, gated: bool, seed: int = 0, beta_min: float = 0.0,
                 decay: float = 1.0) -> list[torch.Tensor]:
    """Unit q, k ``[2, 3, T, 8]``, v ``[2, 3, T, 5]``, b ``[2, 3, T, 1]`` in (beta_min, 1),
    log decays in (-decay, 0) when gated, and an initial state, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    B, H, dk, dv = 2, 3, 8, 5
    q, k = (F.normalize(torch.randn(B, H, T, dk, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(B, H, T, dv, generator=g)
    beta = beta_min + (1 - beta_min) * torch.rand(B, H, T, 1, generator=g)
    log_g = -decay * torch.rand(B, H, T, 1, generator=g) if gated else None
    S0 = torch.randn(B, H, dk, dv, generator=g)
    return [t.requires_grad_() for t in (q, k, v, beta, log_g, S0) if t is not None]


def split(args: list[torch.Tensor], gated: bool, detach: bool = False) -> tuple:
    """(q, k, v, beta, log_g or None, S0) from ``delta_inputs``."""
    if detach:
        args = [t.detach() for t in args]
    return (*args[:4], args[4], args[5]) if gated else (*args[:4], None, args[4])


# --- the chunked delta rule against its loop -------------------------------------------------

@pytest.mark.parametrize("chunk_size", [16, 64], ids=["chunk16", "chunk64"])
@pytest.mark.parametrize("T", [63, 100])
@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_chunked_matches_loop_outputs_grads_and_state(gated, T, chunk_size):
    """Outputs, the final state and the grads of q, k, v, b, the log decays and the initial
    state under one random cotangent on both results; neither chunk size divides T."""
    args = delta_inputs(T, gated)
    q, k, v, beta, log_g, S0 = split(args, gated)
    assert_same_results_and_grads(
        chunked_delta_rule(q, k, v, beta, log_g, chunk_size=chunk_size, initial_state=S0),
        naive_delta_rule(q, k, v, beta, log_g, initial_state=S0),
        args, ["q", "k", "v", "beta", *(["log_g"] if gated else []), "S0"], seed=T)


def assert_same_results_and_grads(fast: tuple, ref: tuple, args: list[torch.Tensor],
                                  names: list[str], seed: int, grad_tol: float = 1e-5) -> None:
    """A kernel's (output, final state) against its loop's, and the grads of ``args`` under one
    random cotangent on both results."""
    (o, S), (o_ref, S_ref) = fast, ref
    gen = torch.Generator().manual_seed(seed)
    go, gS = torch.randn(o.shape, generator=gen), torch.randn(S.shape, generator=gen)
    grads = torch.autograd.grad((o * go).sum() + (S * gS).sum(), args)
    grads_ref = torch.autograd.grad((o_ref * go).sum() + (S_ref * gS).sum(), args)
    assert_rel_close(o, o_ref, 1e-5, what="output")
    assert_rel_close(S, S_ref, 1e-5, what="final state")
    for n, a, b in zip(names, grads, grads_ref):
        assert_rel_close(a, b, grad_tol, what=f"grad of {n}")


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_b_near_one_and_strong_decay(gated):
    """b in (0.99, 1) (the state nearly forgets each key it rewrites) and, gated, per-step log
    decays down to -30: the solve stays exact."""
    args = delta_inputs(100, gated, beta_min=0.99, decay=30.0)
    q, k, v, beta, log_g, S0 = split(args, gated)
    o, S = chunked_delta_rule(q, k, v, beta, log_g, chunk_size=32, initial_state=S0)
    o_ref, S_ref = naive_delta_rule(q, k, v, beta, log_g, initial_state=S0)
    assert_rel_close(o, o_ref, 1e-5, what="output")
    assert_rel_close(S, S_ref, 1e-5, what="final state")


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_chunk_size_independent(gated):
    q, k, v, beta, log_g, _ = split(delta_inputs(100, gated), gated, detach=True)
    o64, _ = chunked_delta_rule(q, k, v, beta, log_g, chunk_size=64)
    for c in (1, 7, 16, 128):
        o, _ = chunked_delta_rule(q, k, v, beta, log_g, chunk_size=c)
        assert_rel_close(o, o64, 1e-5, what=f"chunk_size={c} vs 64")


def test_decay_one_is_the_delta_rule():
    """Log decays of exactly 0 reproduce the ungated rule, in the loop and chunked."""
    q, k, v, beta, _, S0 = split(delta_inputs(70, False), False, detach=True)
    zero = torch.zeros_like(beta)
    for fn, opts in ((naive_delta_rule, {}), (chunked_delta_rule, {"chunk_size": 16})):
        o, S = fn(q, k, v, beta, None, initial_state=S0, **opts)
        o1, S1 = fn(q, k, v, beta, zero, initial_state=S0, **opts)
        torch.testing.assert_close(o1, o, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(S1, S, rtol=1e-6, atol=1e-6)


def test_beta_one_stores_and_overwrites_exactly():
    """b = 1 with orthonormal keys: each write replaces what the state held under its key, so a
    read returns the last value written there exactly, across chunk boundaries (chunks of 4)."""
    g = torch.Generator().manual_seed(0)
    dk, dv = 6, 3
    keys = torch.linalg.qr(torch.randn(dk, dk, generator=g))[0].T  # rows orthonormal
    order = [0, 1, 2, 0, 3, 1, 4, 0, 5]  # keys 0 and 1 rewritten, 0 twice
    k = keys[order][None]  # [1, 9, dk]
    v = torch.randn(1, len(order), dv, generator=g)
    q = keys[None]  # read every key after the last write: [1, dk, dk]
    beta = torch.ones(1, len(order), 1)
    last = {key: t for t, key in enumerate(order)}  # the last write of each key
    expected = v[0, [last[i] for i in range(dk)]]  # [dk, dv]
    for fn, opts in ((naive_delta_rule, {}), (chunked_delta_rule, {"chunk_size": 4})):
        _, S = fn(k, k, v, beta, **opts)  # [1, dk, dv]
        torch.testing.assert_close((q @ S)[0], expected, rtol=0, atol=1e-5)
    # the stored value comes back at once on the step that wrote it
    o, _ = chunked_delta_rule(k, k, v, beta, chunk_size=4)
    torch.testing.assert_close(o, v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_operator_is_the_map_from_v(gated):
    q, k, v, beta, log_g, _ = split(delta_inputs(63, gated), gated, detach=True)
    op = delta_operator(q, k, beta, log_g, chunk_size=16)  # [2, 3, 63, 63]
    assert op.shape == (2, 3, 63, 63) and (op.triu(1) == 0).all()
    o_ref, _ = naive_delta_rule(q, k, v, beta, log_g)
    assert_rel_close(op @ v, o_ref, 1e-5, what="operator @ v vs loop")


def test_strong_decay_long_sequence():
    """Per-step log decays down to -100 over 16384 steps: finite, and equal to the loop on
    the first 300 steps."""
    g = torch.Generator().manual_seed(0)
    T = 16384
    q, k = (F.normalize(torch.randn(1, 1, T, 4, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(1, 1, T, 4, generator=g)
    beta, log_g = torch.rand(1, 1, T, 1, generator=g), -100 * torch.rand(1, 1, T, 1, generator=g)
    o, S = chunked_delta_rule(q, k, v, beta, log_g)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    n = 300
    o_ref, _ = naive_delta_rule(*(t[..., :n, :] for t in (q, k, v, beta, log_g)))
    assert_rel_close(o[..., :n, :], o_ref, 1e-5, what="strong decay vs loop")


def test_kernels_compute_in_fp32_under_autocast():
    args = split(delta_inputs(40, True), True, detach=True)
    q, k, v, beta, log_g, S0 = (t.bfloat16() for t in args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, S = chunked_delta_rule(q, k, v, beta, log_g, chunk_size=16, initial_state=S0)
        o_ref, _ = naive_delta_rule(q, k, v, beta, log_g, initial_state=S0)
    assert o.dtype == S.dtype == o_ref.dtype == torch.float32
    assert_rel_close(o, o_ref, 1e-5, what="autocast chunked vs loop")


# --- the layers ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts", [
    ("deltanet", {"short_conv": 0}), ("deltanet", {"output_gate": True, "chunk_size": 16}),
    ("gated_deltanet", {"short_conv": 0, "output_gate": False, "expand_v": 1.0}),
    ("mamba2", {"d_state": 8, "head_dim": 8, "chunk_size": 16})], ids=str)
def test_options_match_reference(name, opts):
    assert_matches_reference(make(name, **opts), inputs(100), 1e-5)


@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("name", MIXERS)
def test_edge_lengths(name, T):
    """Shorter than the convolution, one token, and past a chunk of 16 by one."""
    assert_matches_reference(make(name, chunk_size=16), inputs(T), 1e-5)


def _strong_decay(name: str, m: torch.nn.Module) -> torch.nn.Module:
    """Decays near 0: dt ~ 20, so log decays of -20 (Mamba-2) to -320 (Gated DeltaNet,
    A up to 16) a step."""
    with torch.no_grad():
        m.dt_bias.fill_(20.0)
    return m


@pytest.mark.parametrize("name", ["gated_deltanet", "mamba2"])
def test_strong_decay(name):
    """4096 tokens with decays near 0: finite outputs and grads; on 100 tokens the output and
    the input grad still equal the loop's (the decay parameters' own grads underflow to about
    1e-30 through decays of exp(-20 A) a step, so their relative error means nothing)."""
    m = _strong_decay(name, make(name, d_model=16))
    x = inputs(4096, B=1, d_model=16).requires_grad_()
    m(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    x = inputs(100, d_model=16).requires_grad_()
    y, y_ref = m(x), m.reference(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    assert_rel_close(y, y_ref, 1e-5, what="output")
    assert_rel_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], 1e-4,
                     what="grad of x")


@pytest.mark.parametrize("name", MIXERS)
def test_bf16_autocast_close_to_fp32(name):
    m, x = make(name), inputs(100)
    with torch.no_grad():
        y32 = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = m(x)
    assert torch.isfinite(y16).all()
    assert rel_rms_error(y16.float(), y32) < 5e-2


@pytest.mark.parametrize("name,opts", [
    ("deltanet", {"chunk_size": 16}), ("deltanet", {"short_conv": 0, "output_gate": True}),
    ("gated_deltanet", {"chunk_size": 16}), ("mamba2", {"chunk_size": 16}),
    ("mamba2", {"d_conv": 1})], ids=str)
def test_step_matches_forward_across_chunks(name, opts):
    m = make(name, **opts)
    x = inputs(70)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2, x.device, x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
    assert_rel_close(torch.stack(ys, 1), y, 1e-5, what=f"{name} step vs forward")


@pytest.mark.parametrize("name,expected", [
    ("deltanet", 2 * 16 * 16 + 3 * D), ("gated_deltanet", 2 * 16 * 32 + 3 * D),
    ("mamba2", 2 * D * 16 + 3 * D)])
def test_state_size(name, expected):
    """``H dk dv`` (``D_in N`` for Mamba-2) plus the 3 inputs the convolution's step keeps."""
    m = make(name)
    assert {m.state_size(T) for T in (1, 100, 10**6)} == {expected}
    S = m.init_state(1)
    assert sum(t.numel() for t in S.values()) == expected


def test_mamba2_is_scalar_gated_linear_attention():
    """Per head the SSD recurrence is _recurrence's: y = C . h, h = exp(dt A) h + dt B x^T, so the
    operator of one head is (C B^T dt) * L plus D on the diagonal, built here from the
    definition."""
    m = make("mamba2")
    x = inputs(20, B=1)
    with torch.no_grad():
        q, k, v, log_a, _ = m._streams(x)
        op = m.operator(x)
        logL = log_a[..., 0].cumsum(-1)  # [1, H, T]
        L = (logL[..., :, None] - logL[..., None, :]).exp().tril()  # [1, H, T, T]
        by_definition = (q @ k.transpose(-1, -2)) * L + torch.diag_embed(
            m.D[:, None].expand(-1, 20))
    assert_rel_close(op, by_definition, 1e-5, what="operator vs definition")
    y, _ = naive_recurrence(q, k, v, log_a)
    assert_rel_close(op @ v, y + m.D[:, None, None] * v, 1e-5, what="operator vs loop")


def test_initialisation_and_weight_decay_marks():
    gdn, m2 = make("gated_deltanet"), make("mamba2")
    assert gdn.A_log._no_weight_decay and gdn.dt_bias._no_weight_decay
    assert m2.A_log._no_weight_decay and m2.dt_bias._no_weight_decay and m2.D._no_weight_decay
    assert ((m2.A_log.exp() >= 1) & (m2.A_log.exp() <= 16)).all()
    assert ((gdn.A_log.exp() > 0) & (gdn.A_log.exp() <= 16)).all()
    for m in (gdn, m2):
        dt = F.softplus(m.dt_bias)
        assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert m2.num_heads == 2 * D // 16 and gdn.dk == D // 2 and gdn.dv == D


@pytest.mark.parametrize("name,opts,message", [
    ("deltanet", {"num_heads": 0}, "num_heads must be >= 1"),
    ("gated_deltanet", {"num_heads": -2}, "num_heads must be >= 1"),
    ("deltanet", {"num_heads": 3}, "not a positive multiple of num_heads=3"),
    ("deltanet", {"expand_v": 0.0}, "expand_v must be > 0"),
    ("deltanet", {"chunk_size": 0}, "chunk_size must be >= 1"),
    ("gated_deltanet", {"short_conv": -1}, "short_conv"),
    ("mamba2", {"head_dim": 0}, "head_dim must be >= 1"),
    ("mamba2", {"d_state": 0}, "d_state must be >= 1"),
    ("mamba2", {"head_dim": 24}, "not divisible by head_dim=24"),
    ("mamba2", {"dt_min": 0.2}, "dt_min <= dt_max"),
], ids=str)
def test_bad_options_fail_by_name(name, opts, message):
    with pytest.raises(ValueError, match=message):
        layers.build(name, D, **opts)


# --- the accelerated paths -------------------------------------------------------------------

class FakeFla:
    """fla's kernel signatures on ``[B, T, H, d]`` tensors (b and g ``[B, T, H]``), computed
    by the loops: checks the adapters' layouts and argument order on CPU."""

    @staticmethod
    def _heads(*ts):
        return [t.transpose(1, 2) for t in ts]  # [B, H, T, ...]

    def chunk_delta_rule(self, q, k, v, beta, scale=None):
        q, k, v, beta = self._heads(q * scale, k, v, beta[..., None])
        o, S = naive_delta_rule(q, k, v, beta)
        return o.transpose(1, 2), S

    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None):
        q, k, v, beta, g = self._heads(q * scale, k, v, beta[..., None], g[..., None])
        o, S = naive_delta_rule(q, k, v, beta, g)
        return o.transpose(1, 2), S

    def chunk_simple_gla(self, q, k, v, g, scale=None):
        q, k, v, g = self._heads(q * scale, k, v, g[..., None])
        o, S = naive_recurrence(q, k, v, g)
        return o.transpose(1, 2), S


@pytest.mark.parametrize("name", MIXERS)
def test_accelerated_path_adapters(name, monkeypatch):
    module = sys.modules[layers.get(name).forward.__module__]  # gated_deltanet: DeltaNet's
    monkeypatch.setattr(module, "kernel_module",
                        lambda pkg, x, enabled=True: FakeFla() if enabled else None)
    m, x = make(name), inputs(40)
    with torch.no_grad():
        assert_rel_close(m(x), m.reference(x), 1e-5, what=f"{name} through the kernel adapter")


@pytest.mark.gpu
@pytest.mark.parametrize("name", MIXERS)
def test_fla_kernel_matches_pure_torch(name):
    pytest.importorskip("fla")
    m = make(name).cuda()
    x = inputs(300).cuda()
    with torch.no_grad():
        y_kernel = m(x)
        m.use_kernels = False
        y_torch = m(x)
    assert_rel_close(y_kernel, y_torch, 1e-2, what=f"{name} fla kernel vs pure torch")


@pytest.mark.gpu
@pytest.mark.parametrize("name", MIXERS)
def test_pure_torch_paths_on_cuda(name):
    assert_matches_reference(make(name, use_kernels=False).cuda(), inputs(100).cuda(), 1e-4)


def test_no_fla_import_on_cpu():
    """Building and running the three on CPU imports no accelerator package."""
    before = {m for m in sys.modules if m.split(".")[0] in ("fla", "triton")}
    x = inputs(20)
    for name in MIXERS:
        make(name)(x)
    after = {m for m in sys.modules if m.split(".")[0] in ("fla", "triton")}
    assert after == before


# --- the kernels' own pieces -----------------------------------------------------------------

def ssd_inputs(T: int, decay: float, seed: int = 0) -> list[torch.Tensor]:
    """C, B ``[2, T, 5]``, x ``[2, T, 3, 4]``, dt ``[2, T, 3]`` in (0, 1), log decays
    ``-decay * dt`` and an initial state ``[2, 3, 5, 4]``, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    C, B = (torch.randn(2, T, 5, generator=g) for _ in range(2))
    x = torch.randn(2, T, 3, 4, generator=g)
    dt = torch.rand(2, T, 3, generator=g)
    log_a = -decay * dt * torch.rand(3, generator=g)
    S0 = torch.randn(2, 3, 5, 4, generator=g)
    return [t.detach().requires_grad_() for t in (C, B, x, dt, log_a, S0)]


@pytest.mark.parametrize("T,chunk_size", [(63, 16), (100, 64), (1000, 64)])
@pytest.mark.parametrize("decay,fallback", [(0.5, False), (6.0, False), (200.0, True)],
                         ids=["factorised", "halved", "strong"])
def test_chunked_ssd_matches_loop(T, chunk_size, decay, fallback, monkeypatch):
    """Mamba-2's chunked SSD (heads sharing C B^T; per head the loop with q = C, k = dt B,
    v = x) against naive_recurrence: outputs, final state and every gradient, the initial
    state included. decay 0.5 keeps every chunk above exp(-60) (the factorised chunks),
    6 needs chunks of 8-16 tokens for that (halved chunks), 200 a per-step decay past
    exp(-60 / 8) (the per-head fallback, the only case that calls chunked_linear_attention)."""
    if not fallback:
        monkeypatch.setattr(_recurrence, "chunked_linear_attention", None)
    args = ssd_inputs(T, decay)
    C, B, x, dt, log_a, S0 = args
    q = C[:, None].expand(2, 3, T, 5)
    k = dt.transpose(1, 2)[..., None] * B[:, None]
    y_ref, S_ref = naive_recurrence(q, k, x.transpose(1, 2), log_a.transpose(1, 2)[..., None],
                                    initial_state=S0)
    assert_same_results_and_grads(
        chunked_ssd(C, B, x, dt, log_a, chunk_size=chunk_size, initial_state=S0),
        (y_ref.transpose(1, 2), S_ref), args, ["C", "B", "x", "dt", "log_a", "S0"], seed=T,
        grad_tol=1e-4 if decay > 1 else 1e-5)


@pytest.mark.parametrize("C", [7, 16, 64, 96])
def test_unit_lower_inverse(C):
    """The blocked inverse of I + tril(M, -1) equals the triangular solve, reading neither M's
    diagonal nor its upper triangle."""
    M = torch.randn(3, C, C, generator=torch.Generator().manual_seed(C)) / C ** 0.5
    eye = torch.eye(C).expand(3, C, C)
    expected = torch.linalg.solve_triangular(torch.eye(C) + M.tril(-1), eye, upper=False)
    assert_rel_close(_unit_lower_inverse(M), expected, 1e-5, what="blocked inverse")
    assert_rel_close(_unit_lower_inverse(M.tril(-1)), expected, 1e-5, what="strictly lower")
