"""The real accelerated kernels without a GPU: fla's ``chunk_gla``, ``chunk_linear_attn`` and
``chunk_simple_gla`` (Mamba-2) and Phalanx's Triton kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, set by tests/conftest.py) on CPU tensors, through the layers' own
dispatch (``kernels_on_cpu``): outputs and gradients against the references, at tiny shapes
and odd lengths. The adapter tests in test_recurrent.py run on a fake of fla that carries our
own reading of its layout and scaling; these hold that reading to fla itself.

triton and fla (fla-core, flash-linear-attention's kernels) come with the test extra
(pyproject.toml), pinned to releases whose kernels run interpreted. fla's delta-rule kernels
(DeltaNet, Gated DeltaNet) do not run in the interpreter of those releases (a loop index used
as a tensor), so they are checked only on CUDA (test_delta.py)."""

import importlib
import importlib.util
import os

import pytest
import torch

import layers
from layers._dispatch import kernels_on_cpu
from layers.phalanx import swr_reference
from layers.testing import assert_matches_reference, assert_same_function

pytestmark = pytest.mark.slow

KERNELS = {"gla": ("fla.ops.gla", "chunk_gla"),
           "linear_attn": ("fla.ops.linear_attn", "chunk_linear_attn"),
           "mamba2": ("fla.ops.simple_gla", "chunk_simple_gla"),
           "phalanx": ("layers._phalanx_triton", "swr")}


@pytest.fixture(scope="module")
def interpreted():
    """Triton's interpreter, with autotuning that takes a kernel's first configuration: the
    interpreter has no device to time configurations on, and every configuration computes the
    same function."""
    if torch.cuda.is_available():
        pytest.skip("with CUDA the kernels run compiled (the gpu-marked tests)")
    for package in ("triton", "fla"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1")
    from triton.runtime.autotuner import Autotuner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Autotuner, "do_bench",
                   property(lambda self: lambda fn, quantiles: [0.0] * len(quantiles)))
        yield


@pytest.fixture
def kernel_calls(monkeypatch):
    """``watch(name)`` counts the calls of that layer's kernel into the dict returned beside
    it, so a test knows the kernel, not the pure-torch path, ran."""
    calls = {}

    def watch(name):
        module_name, fn_name = KERNELS[name]
        module = importlib.import_module(module_name)
        kernel = getattr(module, fn_name)

        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return kernel(*args, **kwargs)
        monkeypatch.setattr(module, fn_name, counted)
    return watch, calls


# Heads of 16 channels, one head or two (GLA: keys 16, values 32 a head; linear attention
# with the normaliser: values 16 and the ones column); B 1 or 2.
CASES = [
    ("gla", 32, {"num_heads": 1}, 1, 17),
    ("gla", 32, {"num_heads": 1, "gate": "scalar"}, 1, 33),
    ("gla", 64, {"num_heads": 2}, 2, 29),
    ("linear_attn", 16, {"num_heads": 1}, 1, 17),
    ("linear_attn", 16, {"num_heads": 1, "feature_map": "elu+1", "normalize": True}, 1, 33),
    ("linear_attn", 32, {"num_heads": 2}, 2, 29),
    ("mamba2", 16, {}, 1, 17),
    ("phalanx", 16, {}, 1, 17),
    ("phalanx", 32, {}, 2, 33),
]


def case_id(value):
    if isinstance(value, dict):
        return "-".join(f"{k}={v}" for k, v in value.items()) or "defaults"
    return str(value)


@pytest.mark.parametrize("name,d_model,opts,B,T", CASES, ids=case_id)
def test_kernel_through_dispatch_matches_reference(name, d_model, opts, B, T, interpreted,
                                                   kernel_calls):
    watch, calls = kernel_calls
    watch(name)
    torch.manual_seed(0)
    m = layers.build(name, d_model, **opts)
    x = torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(1))
    with kernels_on_cpu():
        assert_matches_reference(m, x, 1e-4)
    assert calls == {name: 1}, f"{name} did not dispatch to its kernel"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_phalanx_kernel_ragged_block_and_masked_channels(device, request):
    """Phalanx's ``swr`` itself, output and the grads of log_a and u: T = 37 leaves a ragged
    last block; 5 channels mask part of the power-of-two channel tile."""
    if device == "cpu":
        request.getfixturevalue("interpreted")
    pytest.importorskip("triton")
    from layers._phalanx_triton import swr

    g = torch.Generator().manual_seed(0)
    log_a = (-3 * torch.rand(2, 3, 37, generator=g)).to(device).requires_grad_()
    u = torch.randn(2, 3, 37, 5, generator=g).to(device).requires_grad_()
    assert_same_function(swr, swr_reference, (log_a, u), 1e-5, names=("log_a", "u"))
