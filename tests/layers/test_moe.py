import math

import pytest
import torch

import layers
from layers.testing import assert_rel_close
from zoo.model import Backbone


def make(**kw):
    torch.manual_seed(0)
    return layers.build("moe", 32, kind="channel", **kw)


@pytest.mark.parametrize("kw", [{}, {"num_experts": 4, "top_k": 1}, {"num_experts": 1, "top_k": 1},
                                {"num_experts": 16, "top_k": 4, "expert_hidden": 24}])
def test_sorted_dispatch_equals_dense_token_loop(kw):
    m = make(**kw)
    x = torch.randn(3, 21, 32, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], g)
    y_ref = m.reference(x)
    grads_ref = torch.autograd.grad(y_ref, [x, *m.parameters()], g, allow_unused=True)
    assert_rel_close(y, y_ref, tol=1e-5, what="moe output")
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], grads, grads_ref):
        assert_rel_close(a, b, tol=1e-5, what=f"moe grad {name}")


def test_router_gets_gradient_through_the_weights():
    m = make()
    m(torch.randn(2, 9, 32)).sum().backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0


def test_balance_loss_hand_checked():
    m = make(num_experts=2, top_k=1, balance_coef=1.0)
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[0, 0] = 1.0  # logit of expert 0 = x[0]; expert 1 = 0
    x = torch.zeros(4, 32)
    x[:, 0] = torch.tensor([2.0, 1.0, -1.0, -3.0])  # tokens 0, 1 -> expert 0; 2, 3 -> expert 1
    m(x[None])
    p0 = torch.sigmoid(x[:, 0])  # softmax over (x0, 0) for expert 0
    P = torch.stack([p0.mean(), (1 - p0).mean()])
    f = torch.tensor([0.5, 0.5])
    expected = 2 * (f * P).sum()
    assert m.aux_losses()["moe_balance"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert m.stats()["moe_max_load"] == pytest.approx(1.0)


def test_z_loss_formula():
    m = make(z_coef=0.5)
    x = torch.randn(2, 5, 32)
    m(x)
    logits = m.router(x.reshape(-1, 32))
    expected = 0.5 * torch.logsumexp(logits, -1).square().mean()
    assert m.aux_losses()["moe_z"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_capacity_drops_overflow_and_counts_it():
    m = make(num_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[0, 0] = 10.0  # every token with x0 > 0 prefers expert 0
    x = torch.randn(1, 40, 32)
    x[..., 0] = 1.0
    y = m(x)
    capacity = math.ceil(1.0 * 40 / 4)
    assert (y[0].abs().sum(-1) > 0).sum() == capacity, "tokens past capacity get zero output"
    assert m.stats()["moe_dropped_fraction"] == pytest.approx(30 / 40)


def test_active_hidden_fixes_active_parameters():
    sizes = {}
    for e in (1, 4, 16):
        m = layers.build("moe", 32, kind="channel", num_experts=e, top_k=1, active_hidden=64)
        sizes[e] = (m.hidden * m.top_k, sum(p.numel() for p in m.parameters()))
    assert {a for a, _ in sizes.values()} == {64}
    assert sizes[1][1] < sizes[4][1] < sizes[16][1]


@pytest.mark.parametrize("kw,knob", [({"top_k": 9}, "top_k"), ({"num_experts": 0}, "num_experts"),
                                     ({"capacity_factor": 0}, "capacity_factor"),
                                     ({"active_hidden": 65}, "active_hidden")])
def test_bad_options_name_the_knob(kw, knob):
    with pytest.raises(ValueError, match=knob):
        layers.build("moe", 32, kind="channel", **kw)


def test_model_collects_aux_losses_and_stats():
    model = Backbone(vocab_size=50, d_model=32, n_layers=2, pattern="attention",
                     channel="moe", channel_options={"num_experts": 4})
    model(torch.randint(0, 50, (2, 11)))
    aux = model.aux_losses()
    assert set(aux) == {"moe_balance"} and aux["moe_balance"].requires_grad
    stats = model.stats()
    assert {"moe_dropped_fraction", "moe_max_load", "moe_balance_loss"} <= set(stats)
    loads = [stats[f"moe_load_e{e}"] for e in range(4)]
    assert abs(sum(loads) - 1) < 1e-6, "tokens per expert as fractions of routed pairs"
