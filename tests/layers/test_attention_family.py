"""The attention family (attention, swa, ssa, cat): every positional scheme on every member,
SSA's temperatures and CAT's filters moved off their identity start (the registry-wide
contract tests only see the defaults at initialisation), and the options' edges."""


import sys
import types

import pytest
import torch

import layers
from layers import attention
from layers._dispatch import kernels_on_cpu, optional_import
from layers.positional import POSITIONS, alibi_slopes, attention_bias
from layers.testing import assert_matches_reference, assert_rel_close

D = 64
# id -> (registered name, options); swa's window is small enough to bind at the test lengths
VARIANTS = {
    "attention": ("attention", {}),
    "swa": ("swa", {"window": 9}),
    "ssa": ("ssa", {"token_temp": True, "value_temp": True}),
    "ssa-full": ("ssa", {"token_temp": True, "value_temp": True, "temp_weights": "full"}),
    "cat": ("cat", {}),
    "cat-depthwise": ("cat", {"depthwise": True, "kernel_size": 4}),
}


def make(variant: str, seed: int = 0, **opts) -> torch.nn.Module:
    """Four heads unless told (the classes default to one): the tests see heads differ."""
    name, defaults = VARIANTS[variant]
    torch.manual_seed(seed)
    return layers.build(name, D, **{"num_heads": 4, **defaults, **opts}).eval()


def off_init(m: torch.nn.Module, seed: int = 2) -> torch.nn.Module:
    """Move what starts at an identity (SSA temperatures, CAT taps, qk-norm gains) away from it,
    so that the tests see it act; ``beta = 0`` makes SSA's position term strong (c = 1/e)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("beta_"):
                p.zero_()
            elif not name.startswith(("qkv.", "out.")):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return m


def inputs(T: int, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def stepped(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    state = m.init_state(x.shape[0], x.device, x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def supports_operator(variant: str) -> bool:
    return not VARIANTS[variant][1].get("depthwise", False)


# every member x every positional scheme ----------------------------------------------------------
@pytest.mark.parametrize("T", (63, 100))
@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_reference(variant, pos, T):
    m = off_init(make(variant, pos=pos))
    x = inputs(T).requires_grad_()
    y = m(x)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    y_ref = m.reference(x)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    assert_rel_close(y, y_ref, what=f"{variant}/{pos} output")
    assert_rel_close(gx, gx_ref, what=f"{variant}/{pos} input grad")


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_step_matches_forward(variant, pos):
    m = off_init(make(variant, pos=pos))
    x = inputs(37)
    with torch.no_grad():
        y_steps, _ = stepped(m, x)
        y = m(x)
    assert_rel_close(y_steps, y, tol=1e-4, what=f"{variant}/{pos} step vs forward")


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("variant", [v for v in VARIANTS if supports_operator(v)])
def test_operator_reproduces_forward(variant, pos):
    m = off_init(make(variant, pos=pos))
    x = inputs(63)
    with torch.no_grad():
        op = m.operator(x)
        y_op = m.apply_operator(x, op)
        y = m(x)
    assert op.shape == (2, m.num_heads, 63, 63)
    assert op.triu(1).abs().max() == 0
    assert_rel_close(y_op, y, tol=1e-4, what=f"{variant}/{pos} operator vs forward")


# positional schemes --------------------------------------------------------------------------
def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -h for h in range(1, 9)]))
    # 6 heads: the 4-head slopes, then every other 8-head slope
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0 ** -e for e in (2, 4, 6, 8, 1, 3)]))


def test_alibi_bias_is_the_linear_ramp():
    pos = torch.arange(7)
    bias = attention_bias(pos, pos, pos="alibi", num_heads=4)
    i, j = torch.meshgrid(pos, pos, indexing="ij")
    expected = -alibi_slopes(4)[:, None, None] * (i - j)
    expected = expected.masked_fill(j > i, float("-inf"))
    torch.testing.assert_close(bias, expected)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if supports_operator(v)])
def test_hard_alibi_heads_reach_only_their_distance(variant):
    m = off_init(make(variant, pos="hard_alibi"))
    assert m.num_masked_heads == m.num_heads // 2 == 2
    with torch.no_grad():
        op = m.operator(inputs(63))  # [B, H, T, T]
    # cat's operator also carries the value filter, which reaches W - 1 further back
    spread = m.kernel_size - 1 if VARIANTS[variant][0] == "cat" else 0
    window = VARIANTS[variant][1].get("window")
    i = torch.arange(63)
    dist = i[:, None] - i[None, :]  # [T, T] query minus key
    for h in range(m.num_heads):
        reach = h + spread if h < m.num_masked_heads else (window or 63) - 1 + spread
        reach = min(reach, 62)
        assert not op[:, h][:, dist > reach].any(), f"head {h} looks beyond {reach}"
        assert op[:, h][:, dist == reach].abs().min() > 0, f"head {h} does not reach {reach}"


def test_num_masked_heads_bounds_and_scope():
    m = layers.build("attention", D, num_heads=4, pos="hard_alibi", num_masked_heads=4)
    assert m.num_masked_heads == 4
    with pytest.raises(ValueError, match="num_masked_heads must be in 0..num_heads=4"):
        layers.build("attention", D, num_heads=4, pos="hard_alibi", num_masked_heads=5)
    with pytest.raises(ValueError, match="num_masked_heads applies only to pos='hard_alibi'"):
        layers.build("ssa", D, pos="rope", num_masked_heads=1)


# swa -----------------------------------------------------------------------------------------
def test_swa_is_attention_with_a_window():
    assert layers.options("swa")["window"] == 64 and layers.options("attention")["window"] is None
    m = layers.build("swa", D)
    assert isinstance(m, layers.Attention) and m.window == 64
    assert m.state_size(10) == 2 * D * 10 and m.state_size(10_000) == 2 * D * 64


def test_swa_step_keeps_only_the_window():
    m = make("swa")
    with torch.no_grad():
        _, state = stepped(m, inputs(30))
    assert state["k"].shape[2] == state["v"].shape[2] == 9 and state["pos"] == 30


# ssa -----------------------------------------------------------------------------------------
def ssa_and_attention(pos: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    attn = make("attention", pos=pos)
    ssa = make("ssa", pos=pos)
    missing, unexpected = ssa.load_state_dict(attn.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("beta_", "w_")) for k in missing)
    return ssa, attn


@pytest.mark.parametrize("pos", POSITIONS)
def test_ssa_starts_as_attention(pos):
    ssa, attn = ssa_and_attention(pos)
    x = inputs(100)
    with torch.no_grad():
        y_attn, y_init = attn(x), ssa(x)
        # at beta = 2 the only difference is tau_pos - 1 = exp(-e^2) log(i + 1) < 3e-3 here
        assert 0 < (y_init - y_attn).norm() / y_attn.norm() < 3e-3
        ssa.beta_q.fill_(30.0)  # c = exp(-e^30) = 0: exactly attention
        ssa.beta_v.fill_(30.0)
        assert_rel_close(ssa(x), y_attn, tol=1e-6, what=f"ssa/{pos} at zero temperatures")


def test_ssa_query_temperature_sharpens_rows_by_absolute_position():
    """softmax(tau s) = p^tau / sum p^tau: row i of SSA's operator is attention's row raised to
    tau_pos(i) = 1 + c log(i + 1), i the absolute position."""
    ssa, attn = ssa_and_attention("rope")
    ssa = layers.build("ssa", D, num_heads=4)  # the position term alone
    ssa.load_state_dict(attn.state_dict(), strict=False)
    with torch.no_grad():
        ssa.beta_q.zero_()
        x = inputs(50)
        p, p_ssa = attn.operator(x).double(), ssa.operator(x).double()
    tau = 1 + torch.exp(torch.tensor(-1.0)).double() * torch.log1p(torch.arange(50.0)).double()
    sharpened = p ** tau[:, None]
    assert_rel_close(p_ssa, sharpened / sharpened.sum(-1, keepdim=True), tol=1e-5)


def test_ssa_value_temperature_uses_absolute_position_in_step():
    """With a one-token window, y_t = W_o (tau_v(t) v_t): the stepped output at position t
    must carry 1 + c log(t + 1) for the absolute t."""
    ssa = layers.build("ssa", D, window=1, value_temp=True)
    attn = layers.build("attention", D, window=1)
    ssa.load_state_dict(attn.state_dict(), strict=False)
    with torch.no_grad():
        ssa.beta_v.zero_()
        x = inputs(40)
        y_steps, _ = stepped(ssa, x)
        y_attn = attn(x)
    tau = 1 + torch.exp(torch.tensor(-1.0)) * torch.log1p(torch.arange(40.0))
    assert_rel_close(y_steps, tau[None, :, None] * y_attn, tol=1e-5)


def test_ssa_temperatures_get_their_own_optimiser_group():
    from zoo.model import param_groups

    m = layers.build("ssa", D, temp_lr=3e-2, token_temp=True, value_temp=True)
    groups = param_groups(m, weight_decay=0.1)
    (temp,) = [g for g in groups if "lr" in g]
    assert temp["lr"] == 3e-2 and temp["weight_decay"] == 0.0
    assert sorted(temp["names"]) == ["beta_q", "beta_v"]
    (no_decay,) = [g for g in groups if "lr" not in g and g["weight_decay"] == 0.0]
    assert {"w_q", "w_v"} <= set(no_decay["names"]), "token weights: base lr, no decay"
    (decayed,) = [g for g in groups if g["weight_decay"] == 0.1]
    assert sorted(decayed["names"]) == ["out.weight", "qkv.weight"]


@pytest.mark.parametrize("temp_weights, per_temperature", [("shared", D), ("full", D * 4)])
def test_ssa_parameter_budget(temp_weights, per_temperature):
    attn = layers.build("attention", D, num_heads=4)
    ssa = layers.build("ssa", D, num_heads=4, token_temp=True, value_temp=True,
                       temp_weights=temp_weights)
    extra = sum(p.numel() for p in ssa.parameters()) - sum(p.numel() for p in attn.parameters())
    assert extra == 2 * per_temperature + 2


@pytest.mark.parametrize("token_temp, value_temp, names", [
    (False, False, ["beta_q"]), (True, False, ["beta_q", "w_q"]), (False, True, ["beta_q", "beta_v"])])
def test_ssa_temperature_switches(token_temp, value_temp, names):
    m = layers.build("ssa", D, token_temp=token_temp, value_temp=value_temp)
    assert sorted(n for n, _ in m.named_parameters() if not n.startswith(("qkv", "out"))) == names


# cat -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos", POSITIONS)
def test_cat_starts_as_attention_with_qk_norm(pos):
    attn = make("attention", pos=pos, qk_norm=True)
    cat = make("cat", pos=pos)
    missing, unexpected = cat.load_state_dict(attn.state_dict(), strict=False)
    assert missing == ["taps"] and not unexpected
    x = inputs(63)
    with torch.no_grad():
        assert_rel_close(cat(x), attn(x), tol=1e-6, what=f"cat/{pos} at identity taps")


@pytest.mark.parametrize("depthwise", (False, True))
def test_cat_filter_is_the_causal_convolution(depthwise):
    """(F * X)_t = sum_{i<W} F_i X_{t-i}, zero before t = 0: a loop over t and i."""
    m = off_init(layers.build("cat", D, kernel_size=4, depthwise=depthwise))
    x = inputs(11)
    with torch.no_grad():
        got = m._filter(x)  # [B, T, 3, D]
    expected = torch.zeros_like(got)
    for t in range(11):
        for i in range(min(4, t + 1)):
            expected[:, t] += m.taps[:, i].detach() * x[:, t - i, None, :]
    assert_rel_close(got, expected, tol=1e-6)
    x2 = x.clone()
    x2[:, 5] += 1.0
    with torch.no_grad():
        changed = (m._filter(x2) - got).abs().amax(dim=(0, 2, 3)) > 0  # [T]
    assert changed.tolist() == [False] * 5 + [True] * 4 + [False] * 2


@pytest.mark.parametrize("opts", [{"depthwise": True}, {"bias": True}])
def test_cat_operator_is_refused_where_no_per_head_matrix_exists(opts):
    m = layers.build("cat", D, **opts)
    x = inputs(9)
    with pytest.raises(NotImplementedError, match="cat: operator needs taps shared"):
        m.operator(x)
    with pytest.raises(NotImplementedError, match="cat: operator needs taps shared"):
        m.apply_operator(x, torch.eye(9).expand(2, 4, 9, 9))


def test_cat_state_holds_the_filter_history():
    m = layers.build("cat", D, kernel_size=4)
    with torch.no_grad():
        _, state = stepped(m, inputs(6))
    assert state["x"].shape == (2, 3, D) and state["k"].shape[2] == 6
    assert m.state_size(6) == 2 * D * 6 + 3 * D


# options and configs -------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts, match", [
    ("attention", {"pos": "sinusoid"}, r"pos='sinusoid' is not one of \('rope', 'nope', 'alibi'"),
    ("swa", {"window": 0}, "window must be a positive int"),
    ("ssa", {"temp_weights": "tied"}, r"temp_weights='tied' is not one of \('shared', 'full'\)"),
    ("ssa", {"token_temp": "yes"}, "token_temp must be True or False"),
    ("ssa", {"temp_lr": 0.0}, "temp_lr must be a positive"),
    ("cat", {"kernel_size": 0}, "kernel_size must be a positive int"),
    ("cat", {"depthwise": 1}, "depthwise must be True or False"),
    ("cat", {"pos": "rope", "num_heads": 64}, "cat: pos='rope' needs an even head dim"),
])
def test_bad_options_name_the_knob(name, opts, match):
    with pytest.raises(ValueError, match=match):
        layers.build(name, D, **opts)


# flash-attn's windowed kernel: the call, not the kernel ---------------------------------------
# flash-attn cannot be installed without CUDA, so these tests check how the layers call it: a
# stand-in module computes, in plain torch, the function flash-attn documents for
# ``flash_attn_func`` (layout [B, T, H, d]; a query at i sees keys i - window_size[0] ..
# i + window_size[1] inclusive, -1 meaning no bound; ``causal`` keeps j <= i; scale 1/sqrt(d)),
# and records the arguments the layer passes. Dispatched on CPU tensors by kernels_on_cpu.


@pytest.fixture
def flash(monkeypatch):
    """The stand-in installed as ``flash_attn``; returns the list its calls are recorded in."""
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                        window_size=(-1, -1)):
        calls.append((q.shape[2], causal, tuple(window_size)))
        T = q.shape[1]
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        keep = (j <= i) if causal else torch.ones(T, T, dtype=torch.bool)
        left, right = window_size
        keep = keep & ((j >= i - left) if left >= 0 else True) \
            & ((j <= i + right) if right >= 0 else True)
        scores = torch.einsum("bihd,bjhd->bhij", q.float(), k.float()) * (
            softmax_scale or q.shape[-1] ** -0.5)
        probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        return torch.einsum("bhij,bjhd->bihd", probs, v.float()).to(q.dtype)

    monkeypatch.setitem(sys.modules, "flash_attn",
                        types.SimpleNamespace(flash_attn_func=flash_attn_func))
    optional_import.cache_clear()  # a None cached before the stand-in existed
    yield calls
    optional_import.cache_clear()


# (variant, options, the calls expected: heads, causal, window_size): swa(9) is one call with
# (8, 0); hard_alibi over 4 heads masks heads 0 and 1 (reach 0 and 1), the others see all the
# past; within a window of 2 the reach caps at 1, so heads 1-3 share a call.
FLASH_CASES = [
    ("swa", {}, [(4, True, (8, 0))]),
    ("attention", {"pos": "hard_alibi"}, [(1, True, (0, 0)), (1, True, (1, 0)),
                                          (2, True, (-1, 0))]),
    ("swa", {"pos": "hard_alibi", "window": 2}, [(1, True, (0, 0)), (3, True, (1, 0))]),
    ("swa", {"pos": "nope", "qk_norm": True}, [(4, True, (8, 0))]),
    ("ssa", {"window": 5}, [(4, True, (4, 0))]),
    ("cat", {"pos": "hard_alibi", "num_masked_heads": 3}, [(1, True, (0, 0)), (1, True, (1, 0)),
                                                          (1, True, (2, 0)), (1, True, (-1, 0))]),
]


@pytest.mark.parametrize("variant,opts,expected", FLASH_CASES,
                         ids=[f"{v}-{i}" for i, (v, _, _) in enumerate(FLASH_CASES)])
@pytest.mark.parametrize("T", [7, 29])
def test_flash_windowed_call_matches_the_reference(flash, monkeypatch, variant, opts, expected,
                                                   T):
    """Through the layer's own forward with the stand-in (fp32 let through the dtype gate, so
    the comparison is tight): the window arguments flash-attn is given, and the output and
    the grads of x and every parameter against ``reference`` (the materialised fp32
    attention, which knows nothing of flash-attn). T 29 > 2 windows: SDPA would have taken
    the blocked path."""
    monkeypatch.setattr(attention, "FLASH_DTYPES", (torch.float32,))
    m = off_init(make(variant, **opts))
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1))
    with kernels_on_cpu():
        assert_matches_reference(m, x, tol=1e-5)
    assert flash == expected  # once: the forward (reference never calls it)


def test_flash_only_where_its_windowed_kernel_serves(flash):
    """fp32 stays on SDPA (flash-attn runs fp16/bf16 only); bf16 calls flash-attn; causal
    attention without a window (SDPA's own flash kernel), soft alibi (a bias, not a window),
    ``use_kernels=False`` and CPU tensors outside kernels_on_cpu do not."""
    x = torch.randn(1, 12, D, generator=torch.Generator().manual_seed(1))
    m = make("swa")
    with kernels_on_cpu():
        m(x)
        assert flash == []
        y = m.to(torch.bfloat16)(x.bfloat16())
        assert flash == [(4, True, (8, 0))]
        assert_rel_close(y, m.float().reference(x).bfloat16(), tol=2e-2, what="bf16 flash")
        for variant, opts in [("attention", {}), ("swa", {"pos": "alibi"}),
                              ("swa", {"use_kernels": False})]:
            make(variant, **opts).to(torch.bfloat16)(x.bfloat16())
    make("swa").to(torch.bfloat16)(x.bfloat16())
    assert len(flash) == 1
