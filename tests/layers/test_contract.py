"""Registry-wide contract tests: every registered sequence mixer, with its default options,
must pass these without the test file knowing it by name."""

import inspect

import pytest
import torch

import layers
from layers.testing import assert_rel_close

D = 64
LENGTHS = (63, 100)
SEQ = layers.names("sequence")


def make(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return layers.build(name, D).eval()


def inputs(T: int, B: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g)


@pytest.mark.parametrize("name", SEQ)
def test_docstring_names_the_method(name):
    module = inspect.getmodule(layers.get(name))
    assert module.__doc__ and len(module.__doc__.split()) >= 20, f"{name}: document the paper and equations"


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", SEQ)
def test_shape_and_finite_gradients(name, T):
    m = make(name).train()
    x = inputs(T).requires_grad_()
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: missing or non-finite grads"
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", SEQ)
def test_causal(name):
    m = make(name)
    x = inputs(63)
    t0 = 40
    x2 = x.clone()
    x2[:, t0:] += torch.randn_like(x2[:, t0:])
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :t0], y2[:, :t0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y[:, t0:], y2[:, t0:]), f"{name}: output ignores its input"


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", SEQ)
def test_fast_path_matches_reference(name, T):
    m = make(name)
    x = inputs(T).requires_grad_()
    y_fast = m(x)
    g = torch.randn_like(y_fast)
    gx_fast, *gp_fast = torch.autograd.grad(y_fast, [x, *m.parameters()], g, allow_unused=True)
    y_ref = m.reference(x)
    gx_ref, *gp_ref = torch.autograd.grad(y_ref, [x, *m.parameters()], g, allow_unused=True)
    assert_rel_close(y_fast, y_ref, what=f"{name} output")
    assert_rel_close(gx_fast, gx_ref, what=f"{name} input grad")
    for (pname, _), a, b in zip(m.named_parameters(), gp_fast, gp_ref):
        if a is None and b is None:
            continue
        assert_rel_close(a, b, what=f"{name} grad of {pname}")


@pytest.mark.parametrize("name", SEQ)
def test_step_matches_forward(name):
    m = make(name)
    if not type(m).supports("step"):
        pytest.skip(f"{name} has no recurrent step")
    x = inputs(37)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(x.shape[0], x.device, x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
    assert_rel_close(torch.stack(ys, 1), y, tol=1e-4, what=f"{name} step vs forward")


@pytest.mark.parametrize("name", SEQ)
def test_state_size(name):
    m = make(name)
    sizes = [m.state_size(T) for T in (1, 16, 64, 1024)]
    assert all(isinstance(s, int) and s > 0 for s in sizes)
    assert sizes == sorted(sizes), f"{name}: state size must not shrink with length"


@pytest.mark.parametrize("name", SEQ)
def test_operator_reproduces_forward(name):
    m = make(name)
    if not type(m).supports("operator"):
        pytest.skip(f"{name} is not a linear operator")
    x = inputs(63)
    with torch.no_grad():
        op = m.operator(x)
        y = m(x)
        y_op = m.apply_operator(x, op)
    assert op.ndim == 4 and op.shape[0] == x.shape[0] and op.shape[-2:] == (63, 63)
    upper = torch.triu(torch.ones(63, 63, dtype=torch.bool), diagonal=1)
    assert op[..., upper].abs().max() == 0, f"{name}: operator is not causal"
    assert_rel_close(y_op, y, tol=1e-4, what=f"{name} operator vs forward")


@pytest.mark.parametrize("name", layers.names("channel"))
def test_channel_mixer_is_per_token(name):
    torch.manual_seed(0)
    m = layers.build(name, D, kind="channel")
    x = inputs(9)
    x2 = x.clone()
    x2[:, 4] += 1.0
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert y.shape == x.shape
    keep = [t for t in range(9) if t != 4]
    torch.testing.assert_close(y[:, keep], y2[:, keep])
