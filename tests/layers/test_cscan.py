"""Mamba's S6 scan and short convolution compiled from C (layers/_cscan.py,
layers/csrc/selective_scan.c) against the pure-torch ones and the loop references, on the output
and every gradient (odd lengths, strong decay, channel counts that leave vector tails),
bit-identical for 1 and 2 threads, through the Mamba layer, the fallback to pure torch when
no compiler is available, and the OpenMP build (torch's libgomp) against the pthreads one."""

import os
import warnings

import pytest
import torch

import layers
from layers import _cscan
from layers._recurrence import naive_recurrence
from layers._selective_scan import selective_scan
from layers._shortconv import CausalConv, _CausalConv
from layers.testing import assert_matches_reference, assert_rel_close, rel_rms_error

needs_build = pytest.mark.skipif(_cscan.library() is None, reason="the C code does not build here")
NAMES = ["u", "delta", "A", "B", "C", "D"]


def s6_inputs(B: int, T: int, Di: int, N: int, delta_max: float = 2.0,
              seed: int = 0) -> list[torch.Tensor]:
    """u, delta ``[B, T, Di]``, A ``[Di, N]``, B, C ``[B, T, N]``, D ``[Di]``; per-step log
    decays delta A down to ``-4 delta_max``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, Di, generator=g)
    delta = delta_max * torch.rand(B, T, Di, generator=g)
    A = -4 * torch.rand(Di, N, generator=g)
    Bm, Cm = (torch.randn(B, T, N, generator=g) for _ in range(2))
    D = torch.randn(Di, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, Bm, Cm, D)]


def s6_loop(u, delta, A, Bm, Cm, D):
    """The scan through ``naive_recurrence``, as Mamba's reference calls it, in float64."""
    u, delta, A, Bm, Cm, D = (t.double() for t in (u, delta, A, Bm, Cm, D))
    Di = A.shape[0]
    d = delta.transpose(1, 2)[..., None]  # [B, Di, T, 1]
    q = Cm[:, None].expand(-1, Di, -1, -1)  # [B, Di, T, N]
    o, _ = naive_recurrence(q, d * Bm[:, None], u.transpose(1, 2)[..., None], d * A[:, None])
    return o[..., 0].transpose(1, 2) + D * u  # [B, T, Di]


def output_and_grads(fn, args, seed=1):
    y = fn(*args)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    return [y, *torch.autograd.grad(y, args, gy)]


def compiled(*args):
    return selective_scan(*args, compiled=True)


def torch_scan(*args):
    return selective_scan(*args, compiled=False)


def variant(scan, softplus: bool = False):
    """``scan`` with the gate (its output times silu(z), z a seventh input like u) and, with
    ``softplus``, delta = softplus(delta - 3) (negative inputs too)."""
    def run(u, delta, A, Bm, Cm, D, z):
        if scan is s6_loop:
            delta = torch.nn.functional.softplus(delta.double() - 3) if softplus else delta
            return scan(u, delta, A, Bm, Cm, D) * torch.nn.functional.silu(z.double())
        return selective_scan(u, delta - 3 if softplus else delta, A, Bm, Cm, D, z=z,
                              delta_softplus=softplus, compiled=scan is compiled)
    run.__name__ = f"{scan.__name__} with the gate{' and softplus' if softplus else ''}"
    return run


@needs_build
@pytest.mark.parametrize("options", ["", "gate", "gate+softplus"])
@pytest.mark.parametrize("delta_max", [2.0, 25.0], ids=["decay", "strong-decay"])
@pytest.mark.parametrize("T,B,Di,N", [(63, 3, 8, 5), (100, 2, 20, 16), (1000, 2, 8, 4)])
def test_compiled_matches_torch_scan_and_loop(T, B, Di, N, delta_max, options):
    """Output and the six input gradients (seven with the gate z) against the pure-torch scan
    (fp32) and the loop (float64); Di = 8 and 20 leave partial vectors; strong decay: per-step
    log decays down to -100 (exp(delta A) = 0 in fp32); mamba-ssm's gate and delta softplus."""
    args, names = s6_inputs(B, T, Di, N, delta_max), list(NAMES)
    fast, refs = compiled, (torch_scan, s6_loop)
    if options:
        args.append((3 * torch.randn(B, T, Di, generator=torch.Generator().manual_seed(2)))
                    .requires_grad_())
        names.append("z")
        softplus = options == "gate+softplus"
        fast, refs = variant(fast, softplus), [variant(r, softplus) for r in refs]
    assert "_CompiledScanBackward" in _grad_fns(fast(*args))
    fast = output_and_grads(fast, args)
    for ref in refs:
        for name, a, b in zip(["output", *names], fast, output_and_grads(ref, args)):
            assert_rel_close(a, b, 2e-6, what=f"{name} vs {ref.__name__}")


@needs_build
def test_compiled_max_errors_are_small():
    """Every element, not only the RMS: max |fast - loop| / max |loop| per tensor."""
    args = s6_inputs(2, 100, 20, 16)
    for name, a, b in zip(["output", *NAMES], output_and_grads(compiled, args),
                          output_and_grads(s6_loop, args)):
        a, b = a.detach().double(), b.detach()
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5, name


@needs_build
@pytest.mark.parametrize("T", [1, 63])
def test_compiled_bit_identical_across_threads(T):
    """Threads split the batch rows; A's and D's gradients are summed over rows in a fixed
    order, so 1 and 2 threads agree bit for bit (5 rows: an uneven split)."""
    args = [*s6_inputs(5, T, 24, 16), torch.randn(5, T, 24).requires_grad_()]
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(output_and_grads(variant(compiled, softplus=True), args))
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(["output", *NAMES, "z"], *runs):
        assert torch.equal(a, b), name


@needs_build
def test_compiled_under_bf16_autocast_computes_in_fp32():
    args = [t.detach() for t in s6_inputs(2, 40, 8, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = compiled(*(t.bfloat16() for t in args))
    assert y.dtype == torch.float32
    assert rel_rms_error(y, s6_loop(*(t.bfloat16() for t in args))) < 1e-5


@needs_build
@pytest.mark.parametrize("T", [63, 100, 1000])
def test_mamba_compiled_path_matches_reference(T):
    """The layer's forward (the compiled scan, gate included) against its loop reference and
    against its pure-torch path (use_kernels=False): output, the input's and every parameter's
    gradient."""
    torch.manual_seed(0)
    m = layers.build("mamba", 32).eval()
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1))
    assert {"_CompiledScanBackward", "_CompiledConvBackward"} <= set(_grad_fns(m(x)))
    assert_matches_reference(m, x, tol=1e-5)
    slow = layers.build("mamba", 32, use_kernels=False).eval()
    slow.load_state_dict(m.state_dict())
    assert not {"_CompiledScanBackward", "_CompiledConvBackward"} & set(_grad_fns(slow(x)))
    x = x.requires_grad_()
    grads = [output_and_grads(lambda x, *_: layer(x), [x, *layer.parameters()])
             for layer in (m, slow)]
    names = ["output", "x", *(n for n, _ in m.named_parameters())]
    for name, a, b in zip(names, *grads):
        assert_rel_close(a, b, 1e-5, what=f"{name}: compiled vs pure-torch mamba")


@needs_build
@pytest.mark.parametrize("name,options", [
    ("mamba2", {}), ("deltanet", {}), ("gated_deltanet", {}), ("gla", {"short_conv": 4}),
    ("linear_attn", {"short_conv": 4})], ids=["mamba2", "deltanet", "gated_deltanet",
                                                "gla+conv4", "linear_attn+conv4"])
def test_short_convolutions_take_the_compiled_conv(name, options):
    """Mamba-2's convolution and ShortConv (deltanet, gated_deltanet, gla, linear_attn) run the
    compiled convolution with use_kernels on the CPU, and match the same layer with it off
    (pure torch) on the output and every gradient, at an odd length."""
    torch.manual_seed(0)
    fast = layers.build(name, 32, **options).eval()
    slow = layers.build(name, 32, **options, use_kernels=False).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 63, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
    assert "_CompiledConvBackward" in _grad_fns(fast(x))
    assert "_CompiledConvBackward" not in _grad_fns(slow(x))
    grads = [output_and_grads(lambda x, *_: layer(x), [x, *layer.parameters()])
             for layer in (fast, slow)]
    names = ["output", "x", *(n for n, _ in fast.named_parameters())]
    for what, a, b in zip(names, *grads):
        assert_rel_close(a, b, 1e-5, what=f"{what}: compiled vs pure-torch {name}")


def conv_inputs(T: int, B: int = 3, C: int = 20, k: int = 4, bias: bool = True,
                batch_major: bool = False):
    """u: the first half of a ``[T, B, 2C]`` tensor (a strided view, as Mamba's input projection
    gives it; ``batch_major``: of a ``[B, T, 2C]`` one, transposed, as ShortConv and Mamba-2
    pass theirs), taps ``w [C, k]``, bias ``[C]`` or None."""
    g = torch.Generator().manual_seed(T)
    if batch_major:
        u = torch.randn(B, T, 2 * C, generator=g).requires_grad_().transpose(0, 1)
    else:
        u = torch.randn(T, B, 2 * C, generator=g).requires_grad_()
    w = torch.randn(C, k, generator=g).requires_grad_()
    b = torch.randn(C, generator=g).requires_grad_() if bias else None
    return u, w, b


def conv_loop(u, w, b):
    """silu(causal depthwise conv) through F.conv1d, in float64: the reference."""
    T, k = u.shape[0], w.shape[1]
    x = u.double().permute(1, 2, 0)  # [B, C, T]
    y = torch.nn.functional.conv1d(x, w.double()[:, None], None if b is None else b.double(),
                                   padding=k - 1, groups=w.shape[0])[..., :T]
    return torch.nn.functional.silu(y).permute(2, 0, 1)  # [T, B, C]


@needs_build
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("T", [1, 3, 63, 100])
def test_compiled_conv_matches_causal_conv_and_loop(T, bias, batch_major):
    """The compiled short convolution against _CausalConv and F.conv1d (float64): output and
    the gradients of u, the taps and the bias; T = 1, 3 are shorter than the 4 taps; u is a
    strided view (of a time-major or a batch-major tensor), C = 20 leaves a partial vector; the
    output has u's layout, as _CausalConv's."""
    u, w, b = conv_inputs(T, bias=bias, batch_major=batch_major)
    wrt = [t for t in (u, w, b) if t is not None]

    def run(conv):
        return lambda *_: conv(u[..., :20], w, b)
    y = CausalConv.apply(u[..., :20], w, b)
    assert "_CompiledConvBackward" in _grad_fns(y)
    assert y.stride() == _CausalConv.apply(u[..., :20], w, b).stride()
    fast = output_and_grads(run(CausalConv.apply), wrt)
    for name, ref in (("_CausalConv", run(_CausalConv.apply)), ("F.conv1d", run(conv_loop))):
        for what, a, e in zip(["output", "u", "w", "b"], fast, output_and_grads(ref, wrt)):
            assert_rel_close(a, e, 2e-6, what=f"{what} vs {name}")


@needs_build
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
def test_compiled_conv_bit_identical_across_threads(batch_major):
    u, w, b = conv_inputs(63, B=5, batch_major=batch_major)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(output_and_grads(lambda *_: CausalConv.apply(u[..., :20], w, b),
                                         [u, w, b]))
    finally:
        torch.set_num_threads(before)
    for what, a, e in zip(["output", "u", "w", "b"], *runs):
        assert torch.equal(a, e), what


def test_conv_falls_back_to_causal_conv_off_fp32():
    """bf16 (autocast's input projection) runs _CausalConv, as before."""
    u, w, b = (t.detach().bfloat16() for t in conv_inputs(10))
    y = CausalConv.apply(u[..., :20], w, b)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, _CausalConv.apply(u[..., :20], w, b))


def _grad_fns(y: torch.Tensor) -> list[str]:
    """The names of every autograd node behind ``y``."""
    seen, todo, names = set(), [y.grad_fn], []
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.append(f.name())
        todo.extend(g for g, _ in f.next_functions)
    return names


@pytest.fixture
def no_library(monkeypatch, tmp_path):
    """No cached build and a compiler that does not exist: ``library()`` rebuilt from scratch."""
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("ZOO_CC", str(tmp_path / "no-such-cc"))
    _cscan.library.cache_clear()
    yield
    _cscan.library.cache_clear()


def test_fallback_without_compiler_warns_once_and_matches(no_library):
    args = s6_inputs(2, 63, 8, 5)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        fast = output_and_grads(compiled, args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call is silent
        again = output_and_grads(compiled, args)
    for name, a, b, c in zip(["output", *NAMES], fast, again, output_and_grads(torch_scan, args)):
        assert torch.equal(a, c) and torch.equal(b, c), name
    torch.manual_seed(0)
    m = layers.build("mamba", 32).eval()
    x = torch.randn(2, 63, 32, generator=torch.Generator().manual_seed(1))
    assert not {"_CompiledScanBackward", "_CompiledConvBackward"} & set(_grad_fns(m(x)))
    assert_matches_reference(m, x, tol=1e-5)


@pytest.mark.parametrize("cc,reason", [("false", "false failed"), ("none", "turns the compiled")])
def test_fallback_when_the_build_fails_or_is_off(no_library, monkeypatch, cc, reason):
    monkeypatch.setenv("ZOO_CC", cc)
    with pytest.warns(RuntimeWarning, match=reason):
        assert _cscan.library() is None
    assert not _cscan.usable(torch.zeros(1))


@needs_build
def test_build_is_cached_under_a_hash(monkeypatch, tmp_path):
    """A fresh cache builds one shared object (no temporary left), named by the hash of the
    source, compiler and flags; a second process would find it there."""
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path))
    _cscan.library.cache_clear()
    try:
        assert _cscan.library() is not None
        built = sorted(p.name for p in tmp_path.iterdir())
        assert len(built) == 1
        assert built[0].startswith("selective_scan-") and built[0].endswith(".so")
        assert _cscan._build().name == built[0]  # found, not rebuilt
    finally:
        _cscan.library.cache_clear()


def _libgomp_paths() -> set[str]:
    try:
        maps = open("/proc/self/maps").read().splitlines()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps if "libgomp" in line}


@needs_build
@pytest.mark.skipif(not _libgomp_paths(), reason="torch does not run on libgomp here")
def test_openmp_build_runs_on_torchs_own_libgomp():
    """Where torch runs on libgomp and the compiler builds OpenMP, the library is the -fopenmp
    build, and loading it maps no second OpenMP runtime: its threads are torch's workers."""
    before = _libgomp_paths()
    assert "-fopenmp" in _cscan._openmp_flags()
    try:
        omp = _cscan._compile(os.environ.get("ZOO_CC", "cc"),
                              _cscan.FLAGS + _cscan._isa_flags() + ["-fopenmp"])
    except RuntimeError as e:
        pytest.skip(f"the compiler does not build OpenMP here ({e})")
    assert _cscan._build() == omp
    assert _cscan.library() is not None and b"GOMP_parallel" in omp.read_bytes()
    assert _libgomp_paths() == before and len(before) == 1


@needs_build
def test_pthreads_build_when_openmp_does_not_compile_gives_the_same_bits(monkeypatch, tmp_path):
    """A compiler that rejects the OpenMP flag: the library is built again without it
    (pthreads), and its scan and convolution on 2 threads give the OpenMP build's bits."""
    args = [*s6_inputs(5, 63, 24, 7, seed=3), torch.randn(5, 63, 24).requires_grad_()]
    u, w, b = conv_inputs(11)
    before = torch.get_num_threads()

    def run() -> list[torch.Tensor]:
        torch.set_num_threads(2)
        try:
            return (output_and_grads(variant(compiled, softplus=True), args)
                    + output_and_grads(lambda *_: CausalConv.apply(u[..., :20], w, b),
                                       [u, w, b]))
        finally:
            torch.set_num_threads(before)

    default = run()
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(_cscan, "_openmp_flags", lambda: ["-fno-such-openmp-flag"])
    _cscan.library.cache_clear()
    try:
        lib = _cscan.library()
        assert lib is not None and b"GOMP_parallel" not in open(lib._name, "rb").read()
        assert len(list(tmp_path.glob("selective_scan-*.so"))) == 1
        for i, (a, e) in enumerate(zip(run(), default)):
            assert torch.equal(a, e), i
    finally:
        _cscan.library.cache_clear()
