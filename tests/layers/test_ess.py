import pytest
import torch

import layers
from layers import ess as E

TINY = 1e-6  # a tolerance below every genuine singular value here, above rounding noise


def brute(op, i):
    return torch.linalg.svdvals(op.double()[..., i:, :i])  # [..., min(i, T - i)]


def fir(taps, T):
    """Causal FIR filter: op[i, j] = taps[i - j] for 0 <= i - j < k (Toeplitz)."""
    d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    op = torch.zeros(T, T, dtype=torch.float64)
    ok = (d >= 0) & (d < len(taps))
    op[ok] = taps[d[ok]]
    return op


def mixer_operator(name, T=64, d_model=64, batch=1, seed=0, **opts):
    torch.manual_seed(seed)
    m = layers.build(name, d_model, **opts)
    with torch.no_grad():
        return m.operator(torch.randn(batch, T, d_model))


@pytest.mark.parametrize("k", [2, 3, 5, 8], ids=lambda k: f"taps={k}")
def test_fir_filter_has_ess_k_minus_1_away_from_edges(k):
    T = 63
    taps = 1 + 0.5 * torch.rand(k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    r = E.ess(fir(taps, T), tol=TINY)
    inner = (r.positions >= k - 1) & (r.positions <= T - k + 1)
    assert (r.tolerance[inner] == k - 1).all()
    assert (r.tolerance <= k - 1).all()


def test_scalar_decay_recurrence_has_ess_1():
    T, a = 100, 0.9
    d = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).double()
    op = torch.where(d >= 0, a ** d.clamp_min(0), torch.zeros(()))
    r = E.ess(op, tol=TINY)
    assert (r.tolerance == 1).all()
    assert torch.allclose(r.entropy, torch.ones_like(r.entropy))


def test_linear_attention_ess_is_at_most_dk():
    T, dk = 100, 6
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, T, dk, generator=g), torch.randn(3, T, dk, generator=g)
    op = (q @ k.mT).tril()  # [3, T, T]
    r = E.ess(op, tol=TINY)
    assert (r.tolerance <= dk).all()
    full = (r.positions >= dk) & (r.positions <= T - dk)
    assert (r.tolerance[:, full] == dk).all()


@pytest.mark.parametrize("w", [4, 9])
def test_sliding_window_attention_ess_is_at_most_w_minus_1(w):
    op = mixer_operator("swa", window=w)
    r = E.ess(op, tol=TINY)
    assert (r.tolerance <= w - 1).all()
    assert (r.tolerance[..., w:-w] == w - 1).all()


def test_linear_attn_mixer_ess_is_at_most_its_head_dim():
    op = mixer_operator("linear_attn", d_model=32, num_heads=4)  # head dim 8
    assert (E.ess(op, tol=TINY).tolerance <= 8).all()


def test_phalanx_ess_is_at_most_2_per_head():
    op = mixer_operator("phalanx", T=70)
    r = E.ess(op, tol=TINY)
    assert (r.tolerance <= 2).all() and (r.tolerance == 2).any()


OPERATORS = [n for n in layers.names("sequence") if layers.get(n).supports("operator")]


@pytest.mark.parametrize("name", OPERATORS)
def test_ess_in_floats_is_at_most_the_state_size(name):
    """A head's rank times the value channels it mixes is state the layer must hold, so no
    layer's ESS in floats (zoo.ess's units) exceeds its theoretical state size."""
    T, torch_seed = 48, 0
    torch.manual_seed(torch_seed)
    m = layers.build(name, 32).eval()
    with torch.no_grad():
        op = m.operator(torch.randn(2, T, 32))
    floats = m.operator_channels() * E.ess(op, tol=TINY).tolerance.sum(-2)
    assert (floats <= m.state_size(T)).all(), f"{name}: ESS {floats.max()} > TSS"


@pytest.mark.parametrize("name,opts", [("linear_attn", {}), ("linear_attn", {"short_conv": 4}),
                                       ("gla", {}), ("gla", {"short_conv": 4})], ids=str)
def test_full_rank_linear_attention_uses_all_of_its_state(name, opts):
    """At initialisation (random q, k) every head has rank dk away from the edges, so the ESS in
    floats is exactly the state the layer holds (the short conv's inputs aside)."""
    torch.manual_seed(0)
    m = layers.build(name, 32, **opts).eval()
    with torch.no_grad():
        op = m.operator(torch.randn(1, 64, 32))
    floats = m.operator_channels() * E.ess(op, range(16, 49)).tolerance.sum(-2)
    conv = max(opts.get("short_conv", 0) - 1, 0) * 32
    assert (floats == m.state_size(64) - conv).all()


def test_softmax_attention_ess_grows_with_position():
    op = mixer_operator("attention", T=128)  # head dim 16
    r = E.ess(op)
    early, middle = r.tolerance[..., 3], r.tolerance[..., 63]  # positions 4 and 64
    assert (early <= 4).all()
    assert (middle > 2 * 16).all(), "beyond what a head-dim-sized state could hold"
    assert (r.entropy[..., 63] > r.entropy[..., 3]).all()


def test_entropy_ess_counts_equal_singular_values():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0], [0.0] * 7], dtype=torch.float64)
    assert E.entropy_ess(s).tolist() == pytest.approx([5.0, 0.0])
    assert E.tolerance_ess(s).tolist() == [5.0, 0.0]
    two = torch.tensor([1.0, 1.0, 0.01], dtype=torch.float64)
    assert 2.0 < float(E.entropy_ess(two)) < 2.2
    assert float(E.tolerance_ess(two, tol=0.1)) == 2.0
    assert float(E.tolerance_ess(two * 100, tol=0.5, absolute=True)) == 3.0


@pytest.mark.parametrize("name", ["attention", "gla", "mamba", "phalanx", "dense"])
@pytest.mark.parametrize("T", [63, 100])
def test_singular_values_match_brute_force_svd(name, T):
    if name == "dense":
        op = torch.randn(2, T, T, generator=torch.Generator().manual_seed(T)).tril()
    else:
        op = mixer_operator(name, T=T, d_model=32, batch=2)
        if name == "mamba":
            op = op[:, :8]  # 64 channels: a few are enough
    sampled = [1, 2, 17, T // 2, T // 2 + 1, T - 9, T - 1]
    for low_rank in (True, False):
        pos, s = E.singular_values(op, low_rank=low_rank)
        assert pos.tolist() == list(range(1, T))
        for i in sampled:
            ref = brute(op, i)
            got = s[..., i - 1, :]
            n = ref.shape[-1]
            err = (got[..., :n] - ref).abs().amax(-1) / ref[..., 0]
            assert float(err.max()) < 1e-6, (i, low_rank)
            assert (got[..., n:] == 0).all()


def test_subset_of_positions_and_shapes():
    op = mixer_operator("gla", T=40, batch=2)  # [2, 4, 40, 40]
    r = E.ess(op, positions=[30, 5, 20])
    assert r.positions.tolist() == [5, 20, 30]
    assert r.tolerance.shape == r.entropy.shape == (2, 4, 3)
    full = E.ess(op)
    assert torch.equal(r.tolerance, full.tolerance[..., [4, 19, 29]])
    summary = E.summary(full)
    assert summary["tolerance"] == pytest.approx(float(full.tolerance.mean()))
    with pytest.raises(ValueError, match="positions must lie in"):
        E.ess(op, positions=[0])
    with pytest.raises(ValueError, match=r"\[\.\.\., T, T\]"):
        E.ess(torch.zeros(3, 4))


def test_result_does_not_depend_on_threads_and_thread_count_is_restored():
    op = mixer_operator("gla", T=80, batch=2)  # low rank: the randomised path runs too
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = E.ess(op)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    two = E.ess(op)
    assert torch.get_num_threads() == before
    assert torch.equal(one.tolerance, two.tolerance) and torch.equal(one.entropy, two.entropy)
