"""Family tests for the recurrent mixers (linear_attn, gla, phalanx, mamba): fast paths against
the loop references at odd and long lengths, chunk-size independence, numerics under strong
decay and bf16 autocast, the Phalanx jagged window, and the guarded accelerated paths."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import layers
from layers import _selective_scan
from layers._recurrence import (_FactorisedChunks, causal_operator, chunked_linear_attention,
                                naive_recurrence)
from layers._selective_scan import _SelectiveScan, selective_scan
from layers.phalanx import _SWR, jagged_operator, swr, swr_reference
from layers.testing import (assert_matches_reference, assert_rel_close, assert_same_function,
                            rel_rms_error)

RECURRENT = ["linear_attn", "gla", "phalanx", "mamba"]
D = 32


def make(name: str, d_model: int = D, **opts) -> torch.nn.Module:
    torch.manual_seed(0)
    return layers.build(name, d_model, **opts).eval()


def inputs(T: int, B: int = 1, d_model: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(seed))


# --- fast path vs reference ----------------------------------------------------------------

@pytest.mark.parametrize("T", [63, 100, 1000])
@pytest.mark.parametrize("name", RECURRENT)
def test_fast_matches_reference(name, T):
    assert_matches_reference(make(name), inputs(T))


@pytest.mark.parametrize("opts", [
    {"feature_map": "elu+1"}, {"feature_map": "relu"},
    {"feature_map": "elu+1", "normalize": True}, {"feature_map": "identity", "normalize": True},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_linear_attn_options_match_reference(opts):
    assert_matches_reference(make("linear_attn", **opts), inputs(100, B=2))


@pytest.mark.parametrize("opts", [{"gate": "scalar"}, {"expand_k": 1.0, "expand_v": 2.0}],
                         ids=["scalar-gate", "expand"])
def test_gla_options_match_reference(opts):
    assert_matches_reference(make("gla", **opts), inputs(100, B=2))


@pytest.mark.parametrize("T", [1, 2, 63, 100])
@pytest.mark.parametrize("name", ["linear_attn", "gla"])
def test_short_conv_matches_reference(name, T):
    assert_matches_reference(make(name, short_conv=4, chunk_size=16), inputs(T, B=2))


@pytest.mark.parametrize("name", ["linear_attn", "gla"])
def test_short_conv_reads_the_previous_tokens(name):
    """With the convolution, a change at t0 reaches outputs t0..; its taps reach back
    kernel_size - 1 tokens, so zeroing the conv weights' older taps changes the output."""
    m = make(name, short_conv=3)
    x = inputs(20, B=2)
    with torch.no_grad():
        y = m(x)
        m.short_conv.conv.weight[..., :2] = 0  # keep only the current token's tap
        y_now = m(x)
    assert m.short_conv.conv.weight.shape[-1] == 3
    assert not torch.allclose(y, y_now), f"{name}: the short conv's older taps have no effect"


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("T", [1, 15, 16, 17])
def test_short_and_block_edge_lengths(name, T):
    assert_matches_reference(make(name), inputs(T, B=2))


# --- chunking ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear_attn", "gla", "mamba"])
def test_chunk_size_independent(name):
    x = inputs(100, B=2)
    with torch.no_grad():
        ys = {c: make(name, chunk_size=c)(x) for c in (1, 8, 16, 24, 64, 256)}
    for c, y in ys.items():
        assert_rel_close(y, ys[64], 1e-5, what=f"{name} chunk_size={c} vs 64")


def kernel_inputs(gate: str, T: int = 150, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k ``[2, 3, T, 8]``, v ``[2, 3, T, 5]``, log decays (None, scalar or vector) and an
    initial state."""
    g = torch.Generator().manual_seed(seed)
    B, H, dk, dv = 2, 3, 8, 5
    q, k = torch.randn(B, H, T, dk, generator=g), torch.randn(B, H, T, dk, generator=g)
    v = torch.randn(B, H, T, dv, generator=g)
    width = {"none": 0, "scalar": 1, "vector": dk}[gate]
    log_g = -2 * torch.rand(B, H, T, width, generator=g) if width else None
    return q, k, v, log_g, torch.randn(B, H, dk, dv, generator=g)


@pytest.mark.parametrize("segment", [2048, 40], ids=["one-segment", "segments"])
@pytest.mark.parametrize("gate,factorise_below", [
    ("none", 60.0), ("scalar", 60.0), ("vector", 60.0), ("vector", 0.0)],
    ids=["none", "scalar", "vector-factorised", "vector-two-level"])
def test_kernel_matches_loop_and_final_state(gate, factorise_below, segment):
    """All intra-chunk paths; the vector gate's log decays (-1 a step on average) total about
    -32 +- 3 over a 32-token chunk, above -60, so it can take either. ``segment=40`` runs
    150 tokens as segments of 32, 32, 32, 32, 22 with the state carried."""
    q, k, v, log_g, S0 = kernel_inputs(gate)
    o_ref, S_ref = naive_recurrence(q, k, v, log_g, initial_state=S0)
    o, S = chunked_linear_attention(q, k, v, log_g, chunk_size=32, initial_state=S0,
                                    factorise_below=factorise_below, segment=segment)
    assert_rel_close(o, o_ref, 1e-5, what="output")
    assert_rel_close(S, S_ref, 1e-5, what="final state")
    op = causal_operator(q, k, log_g, chunk_size=32)
    assert_rel_close(op @ v, naive_recurrence(q, k, v, log_g)[0], 1e-5, what="operator")


@pytest.mark.parametrize("gate", ["none", "vector"])
def test_kernel_grads_across_segments(gate):
    """Grads of q, k, v, the log decays and the initial state through segment boundaries."""
    inputs_ = [t.requires_grad_() for t in kernel_inputs(gate, T=100) if t is not None]
    def kernel(fn, **opts):
        def run(q, k, v, *rest):
            log_g, S0 = (None, *rest) if gate == "none" else rest
            o, S = fn(q, k, v, log_g, initial_state=S0, **opts)
            return torch.cat([o.flatten(), S.flatten()])
        return run
    fast = kernel(chunked_linear_attention, chunk_size=16, segment=32)
    assert_same_function(fast, kernel(naive_recurrence), inputs_, 1e-5)


@pytest.mark.parametrize("width", [1, 3], ids=["scalar", "vector"])
def test_factorised_chunks_gradcheck(width):
    """The chunked kernel's hand-written backward in float64: q, k, v, the log decays and the
    initial state, through both outputs (the chunk outputs and the final state), over three
    chunks of 4."""
    g = torch.Generator().manual_seed(3)
    B, N, C, dk, dv = 2, 3, 4, 3, 2
    q, k = (torch.randn(B, N, C, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, N, C, dv, generator=g, dtype=torch.float64)
    log_g = -torch.rand(B, N, C, width, generator=g, dtype=torch.float64)
    S0 = torch.randn(B, dk, dv, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v, log_g, S0)]
    assert torch.autograd.gradcheck(_FactorisedChunks.apply, inputs)


def s6_inputs(B: int, T: int, Di: int, N: int, dtype: torch.dtype = torch.float32,
              seed: int = 0) -> list[torch.Tensor]:
    """u, delta ``[B, T, Di]``, A ``[Di, N]``, B, C ``[B, T, N]``, D ``[Di]`` for
    ``selective_scan``, with per-step decays exp(delta A) from about 1 down to exp(-8)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, Di, generator=g, dtype=dtype)
    delta = 2 * torch.rand(B, T, Di, generator=g, dtype=dtype)
    A = -4 * torch.rand(Di, N, generator=g, dtype=dtype)
    Bm, Cm = (torch.randn(B, T, N, generator=g, dtype=dtype) for _ in range(2))
    D = torch.randn(Di, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, Bm, Cm, D)]


def s6_loop(u, delta, A, Bm, Cm, D):
    """``selective_scan`` through ``naive_recurrence``, as Mamba's reference calls it."""
    Di, N = A.shape
    d = delta.transpose(1, 2)[..., None]  # [B, Di, T, 1]
    q = Cm[:, None].expand(-1, Di, -1, -1)  # [B, Di, T, N]
    o, _ = naive_recurrence(q, d * Bm[:, None], u.transpose(1, 2)[..., None], d * A[:, None])
    return o[..., 0].transpose(1, 2) + D * u  # [B, T, Di]


# How many steps each op of the scan covers (at most SCAN_BUFFER floats of state, a divisor of
# the chunk): one, the form the frontier's shapes take; two; or whole chunks (small states).
STEPS_PER_OP = {"per-step": 1, "two-steps": 2, "whole-chunk": 10 ** 6}


def steps_per_op(monkeypatch, steps: int, B: int, Di: int, N: int) -> None:
    monkeypatch.setattr(_selective_scan, "SCAN_BUFFER", steps * B * Di * N)


@pytest.mark.parametrize("steps", STEPS_PER_OP.values(), ids=STEPS_PER_OP.keys())
@pytest.mark.parametrize("chunk_size", [3, 4])
def test_selective_scan_gradcheck(chunk_size, steps, monkeypatch):
    """The hand-written backward in float64, across chunk boundaries and a ragged last chunk
    (7 steps: chunks of 3 + 3 + 1 or 4 + 3; two steps per op leave one step alone)."""
    steps_per_op(monkeypatch, steps, 2, 3, 4)

    def scan(u, delta, A, Bm, Cm, D):
        u, delta, Bm, Cm = (t.transpose(0, 1) for t in (u, delta, Bm, Cm))  # [T, B, .]
        return _SelectiveScan.apply(u, delta, A.t(), Bm, Cm, D, chunk_size)
    assert torch.autograd.gradcheck(scan, s6_inputs(2, 7, 3, 4, torch.float64))


@pytest.mark.parametrize("steps", STEPS_PER_OP.values(), ids=STEPS_PER_OP.keys())
@pytest.mark.parametrize("chunk_size", [1, 8, 16, 64, 128])
@pytest.mark.parametrize("T", [63, 100])
def test_selective_scan_matches_loop(T, chunk_size, steps, monkeypatch):
    """Output and all six input grads of the scan against the autograd loop, at odd lengths
    (chunk 64 splits 100 unevenly; 128 is one chunk), a step, two or a chunk per op."""
    steps_per_op(monkeypatch, steps, 2, 8, 5)
    args = s6_inputs(2, T, 8, 5)
    y = selective_scan(*args, chunk_size=chunk_size)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, args, g)
    y_ref = s6_loop(*args)
    grads_ref = torch.autograd.grad(y_ref, args, g)
    assert_rel_close(y, y_ref, 1e-5, what="output")
    for name, a, b in zip(["u", "delta", "A", "B", "C", "D"], grads, grads_ref):
        assert_rel_close(a, b, 1e-5, what=f"grad of {name}")


def test_selective_scan_time_major_is_the_same_scan():
    args = s6_inputs(2, 37, 8, 5)
    y = selective_scan(*args)
    u, delta, A, Bm, Cm, D = (t.detach() for t in args)
    y_tm = selective_scan(*(t.transpose(0, 1) for t in (u, delta)), A,
                          *(t.transpose(0, 1) for t in (Bm, Cm)), D, time_major=True)
    assert torch.equal(y_tm.transpose(0, 1), y.detach())


def test_selective_scan_saves_chunk_states_only():
    """Autograd holds the inputs, delta u and one state per chunk, not the T states
    (B T Di N floats)."""
    B, T, Di, N = 2, 256, 8, 16
    y = selective_scan(*s6_inputs(B, T, Di, N), chunk_size=16)
    scan = y.grad_fn.next_functions[0][0]  # past the transpose back to [B, T, Di]
    saved = sum(t.numel() for t in scan.saved_tensors)
    assert saved == 3 * B * T * Di + 2 * B * T * N + Di * N + Di + (T // 16) * B * N * Di


# --- strong decay ----------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 4], ids=["scalar", "vector"])
def test_kernel_strong_decay_long_sequence(width):
    """Per-step log decays down to -100 (products far below fp32's range within one chunk)
    over 16384 steps: finite, and equal to the loop where that is cheap."""
    g = torch.Generator().manual_seed(0)
    T = 16384
    q, k, v = (torch.randn(1, 1, T, 4, generator=g) for _ in range(3))
    log_g = -100 * torch.rand(1, 1, T, width, generator=g)
    o, S = chunked_linear_attention(q, k, v, log_g)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    n = 300
    o_ref, _ = naive_recurrence(q[..., :n, :], k[..., :n, :], v[..., :n, :], log_g[..., :n, :])
    assert_rel_close(o[..., :n, :], o_ref, 1e-5, what="strong decay vs loop")


def _strong_decay(name: str, m: torch.nn.Module) -> torch.nn.Module:
    """Gates near 0: GLA per-channel gate logits down to -400 (log alpha to -25 per step),
    Mamba Delta ~ 10 (Delta A to -160), Phalanx a ~ 1e-13; linear attention has no decay."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if name == "gla":
            bias = m.gate_proj[1].bias
            bias.copy_(-400 * torch.rand(bias.shape, generator=g))
        elif name == "mamba":
            m.dt_proj.bias.fill_(10.0)
        elif name == "phalanx":
            m.abc.bias[: m.num_heads].fill_(-30.0)
    return m


@pytest.mark.parametrize("name", RECURRENT)
def test_strong_decay(name):
    """The fast paths over 16384 tokens with gates near 0: finite outputs and grads (nothing
    overflows or underflows into inf/nan), and still equal to the loop on a short input."""
    m = _strong_decay(name, make(name, d_model=16))
    x = inputs(16384, d_model=16).requires_grad_()
    y = m(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert_matches_reference(m, inputs(100, d_model=16))


# --- state -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("linear_attn", 4 * 8 * 8), ("gla", 4 * 4 * 8), ("phalanx", 2 * D), ("mamba", 2 * D * 16)])
def test_state_size_is_constant(name, expected):
    m = make(name)
    assert {m.state_size(T) for T in (1, 100, 10**6)} == {expected}


@pytest.mark.parametrize("name", ["linear_attn", "gla"])
def test_short_conv_operator_reproduces_forward(name):
    m, x = make(name, short_conv=4), inputs(63, B=2)
    with torch.no_grad():
        y, op = m(x), m.operator(x)
        assert_rel_close(m.apply_operator(x, op), y, 1e-4, what=f"{name} operator vs forward")


@pytest.mark.parametrize("name,opts", [("linear_attn", {"short_conv": 4}),
                                       ("gla", {"short_conv": 4}), ("gla", {"short_conv": 1})])
def test_state_size_counts_the_short_conv_inputs(name, opts):
    assert make(name, **opts).state_size(64) == make(name).state_size(64) + (
        opts["short_conv"] - 1) * D


@pytest.mark.parametrize("name,opts", [
    *((n, {} if n == "phalanx" else {"chunk_size": 16}) for n in RECURRENT),
    ("linear_attn", {"chunk_size": 16, "short_conv": 4, "normalize": True}),
    ("gla", {"chunk_size": 16, "short_conv": 4})], ids=str)
def test_step_matches_forward_across_chunks(name, opts):
    m = make(name, **opts)
    x = inputs(70, B=2)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2, x.device, x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
    assert_rel_close(torch.stack(ys, 1), y, 1e-5, what=f"{name} step vs forward")


# --- bf16 autocast -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", RECURRENT)
def test_bf16_autocast_close_to_fp32(name):
    m, x = make(name), inputs(100, B=2)
    with torch.no_grad():
        y32 = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = m(x)
    assert torch.isfinite(y16).all()
    assert rel_rms_error(y16.float(), y32) < 5e-2


def test_kernels_compute_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 4, generator=g).bfloat16() for _ in range(3))
    log_g = -torch.rand(1, 2, 40, 4, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, S = chunked_linear_attention(q, k, v, log_g, chunk_size=16)
        y = selective_scan(*(t.detach().bfloat16() for t in s6_inputs(1, 40, 4, 3)))
        x = swr(log_g[..., 0], v)
    assert {o.dtype, S.dtype, y.dtype, x.dtype} == {torch.float32}
    o_ref, _ = naive_recurrence(q.float(), k.float(), v.float(), log_g.float())
    assert_rel_close(o, o_ref, 1e-5, what="autocast kernel vs fp32 loop")


# --- Phalanx ---------------------------------------------------------------------------------

def test_phalanx_jagged_window():
    """Token i sees exactly the (i mod 16) + 1 + 16 most recent tokens (i + 1 in block 0)."""
    m = make("phalanx")
    with torch.no_grad():
        op = m.operator(inputs(100, B=2))  # [B, H, T, T]
    assert op.shape == (2, D // 16, 100, 100)
    seen = op != 0
    for i in range(100):
        width = min(i + 1, i % 16 + 1 + 16)
        expected = torch.zeros(100, dtype=torch.bool)
        expected[i + 1 - width: i + 1] = True
        assert (seen[..., i, :] == expected).all(), f"row {i}"


@pytest.mark.parametrize("T", [16, 63, 100])
def test_phalanx_two_pass_equals_exact_form(T):
    g = torch.Generator().manual_seed(0)
    log_a = -4 * torch.rand(2, 3, T, generator=g)
    u = torch.randn(2, 3, T, 5, generator=g)
    exact = jagged_operator(log_a) @ u  # (L * M_jag) u
    assert_rel_close(swr(log_a, u), exact, 1e-5, what="two-pass vs exact")
    assert_rel_close(swr_reference(log_a, u), exact, 1e-5, what="loop vs exact")


def test_swr_backward_gradcheck():
    """The closed-form backward of ``_SWR`` (grads of the log decays and of u) in float64,
    over three blocks of 4 so the carry and the injection from the next block both count."""
    g = torch.Generator().manual_seed(0)
    la = (-3 * torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    u = torch.randn(1, 2, 3, 4, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_SWR.apply, (la, u))


@pytest.mark.parametrize("T", [63, 100, 1000])
def test_swr_grads_match_loop(T):
    """Output and the grads of log_a and u of the two-pass against the loop's autograd, on
    a layer-like layout (u a transposed view) with a ragged last block."""
    g = torch.Generator().manual_seed(T)
    log_a = (-4 * torch.rand(2, 3, T, generator=g)).requires_grad_()
    u = torch.randn(2, T, 3, 16, generator=g).transpose(1, 2).requires_grad_()  # [2, 3, T, 16]
    assert_same_function(swr, swr_reference, (log_a, u), 1e-5, names=("log_a", "u"))


def test_phalanx_needs_d_model_divisible_by_16():
    with pytest.raises(ValueError, match="d_model=40"):
        layers.build("phalanx", 40)


# --- Mamba -----------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 3, 5])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_mamba_shorter_than_its_convolution(T, conv_bias):
    """The time-major convolution of the fast path (taps as shifted slices) against
    nn.Conv1d in the reference, where the sequence is shorter than the d_conv = 4 taps."""
    assert_matches_reference(make("mamba", conv_bias=conv_bias), inputs(T, B=2))


def test_mamba_causal_conv_gradcheck():
    from layers._shortconv import _CausalConv
    g = torch.Generator().manual_seed(0)
    u, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
               for shape in ((6, 2, 3), (3, 4), (3,)))
    assert torch.autograd.gradcheck(_CausalConv.apply, (u, w, b))
    assert torch.autograd.gradcheck(lambda u, w: _CausalConv.apply(u, w, None), (u, w))


def test_mamba_initialisation():
    m = make("mamba")
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    torch.testing.assert_close(-m.A_log.exp(), -torch.arange(1.0, 17.0).expand(2 * D, 16))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()


# --- option validation and import hygiene ------------------------------------------------------

@pytest.mark.parametrize("name,opts,message", [
    ("gla", {"gate": "matrix"}, "gate='matrix'"),
    ("gla", {"num_heads": 3}, "divisible by num_heads=3"),
    ("linear_attn", {"feature_map": "softmax"}, "feature_map='softmax'"),
    ("mamba", {"dt_rank": 0}, "dt_rank"),
    ("gla", {"short_conv": -1}, "short_conv"),
    ("linear_attn", {"short_conv": 2.5}, "short_conv"),
])
def test_bad_options_fail_clearly(name, opts, message):
    with pytest.raises(ValueError, match=message):
        layers.build(name, D, **opts)


def run_checkout_python(code: str, **env: str) -> None:
    """Run ``code`` in a fresh interpreter that imports this checkout's ``layers``."""
    root = str(Path(layers.__file__).resolve().parents[1])  # the same checkout as this test's
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": path, **env})


def test_no_accelerator_imports_on_cpu():
    code = ("import sys, torch, layers\n"
            "x = torch.randn(1, 20, 32)\n"
            "for n in ['linear_attn', 'gla', 'phalanx', 'mamba']: layers.build(n, 32)(x)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('fla', 'mamba_ssm', 'triton')]\n"
            "assert not bad, bad\n")
    run_checkout_python(code)


class FakeFla:
    """fla's kernel signatures on ``[B, T, H, d]`` tensors (pre-2025 ``head_first`` flag
    included), computed by the loop reference: checks the adapters' layouts on CPU."""

    @staticmethod
    def _loop(q, k, v, g=None):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, d]
        o, S = naive_recurrence(q, k, v, None if g is None else g.transpose(1, 2))
        return o.transpose(1, 2), S

    def chunk_gla(self, q, k, v, g, scale=None, head_first=True):
        assert not head_first and g.shape == k.shape
        return self._loop(q * scale, k, v, g)

    def chunk_linear_attn(self, q, k, v, scale=None, normalize=True):
        assert not normalize
        return self._loop(q * scale, k, v)


def fake_selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba-ssm's ``selective_scan_fn`` semantics (u, delta, z ``[b, d, l]``; B, C
    ``[b, n, l]``), written out independently of layers/mamba.py."""
    delta = delta + delta_bias[:, None]
    delta = torch.nn.functional.softplus(delta) if delta_softplus else delta
    h, ys = 0.0, []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]  # [b, d, 1]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]  # [b, d, n]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * torch.nn.functional.silu(z)


FAKE_KERNELS = {
    "gla": FakeFla(), "linear_attn": FakeFla(),
    "mamba": type("ops", (), {"selective_scan_fn": staticmethod(fake_selective_scan_fn)}),
    "phalanx": type("tri", (), {"swr": staticmethod(swr_reference)}),
}


@pytest.mark.parametrize("name,opts", [
    ("gla", {}), ("gla", {"gate": "scalar"}), ("linear_attn", {}),
    ("linear_attn", {"feature_map": "elu+1", "normalize": True}), ("mamba", {}),
    ("phalanx", {})],
    ids=["gla", "gla-scalar", "linear_attn", "linear_attn-normalize", "mamba", "phalanx"])
def test_accelerated_path_adapters(name, opts, monkeypatch):
    """The code around the fla / mamba-ssm / Triton calls (layouts, scale, gate and
    normaliser handling) with those kernels replaced by CPU stand-ins of the same signature."""
    fake = FAKE_KERNELS[name]
    module = sys.modules[layers.get(name).__module__]
    monkeypatch.setattr(module, "kernel_module",
                        lambda pkg, x, enabled=True: fake if enabled else None)
    m, x = make(name, **opts), inputs(40, B=2)
    with torch.no_grad():
        assert_rel_close(m(x), m.reference(x), 1e-5, what=f"{name} through the kernel adapter")


@pytest.mark.gpu
@pytest.mark.parametrize("name,package", [
    ("linear_attn", "fla"), ("gla", "fla"), ("mamba", "mamba_ssm"), ("phalanx", "triton")])
def test_accelerated_path_matches_pure_torch(name, package):
    pytest.importorskip(package)
    m = make(name).cuda()
    x = inputs(300, B=2).cuda()
    with torch.no_grad():
        y_kernel = m(x)
        m.use_kernels = False
        y_torch = m(x)
    assert_rel_close(y_kernel, y_torch, 1e-2, what=f"{name} kernel vs pure torch")


@pytest.mark.gpu
@pytest.mark.parametrize("name", RECURRENT)
def test_pure_torch_paths_on_cuda(name):
    m = make(name, use_kernels=False)
    assert_matches_reference(m.cuda(), inputs(100, B=2).cuda())
