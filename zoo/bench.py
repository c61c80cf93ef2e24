"""``python -m zoo.bench``: benchmarks, printed as markdown tables headed by the machine.

    python -m zoo.bench gen        # task generation: seconds for 100k training examples
    python -m zoo.bench mixers     # every sequence mixer: forward+backward tokens/s, peak memory
    python -m zoo.bench step       # a training step of the recall frontier's model, per mixer
    python -m zoo.bench generate   # recurrent step over N tokens: speed and state growth
    python -m zoo.bench moe        # MoE against the dense MLP of the same active parameters
    python -m zoo.bench ess --lengths 1024  # ESS at every position of a 2-layer attention model
    python -m zoo.bench leaderboard # zoo.leaderboard over 1,000 records, plots included
    python -m zoo.bench mixers --lengths 64 128     # or --quick: a smoke run in seconds

Speed lives here, never in test assertions. Committed tables sit in ``benchmarks/``.

Peak memory (``mixers``) is the high-water mark of tensor bytes allocated during one
forward+backward beyond what was alive before it (parameters and the input are not counted;
activations, saved tensors, temporaries and gradients are). On CUDA it comes from the caching
allocator's statistics; on CPU from the allocation and free events that
``torch.profiler(profile_memory=True)`` records, replayed in time order (a separate, untimed
pass). It counts torch tensors only, not the Python heap or allocator slack.

Allocator: on glibc, ``main`` first asks malloc to keep freed memory for reuse
(``keep_freed_memory``). By default glibc serves every block above 32 MiB with a fresh
``mmap`` and unmaps it on free, so at 16,384 tokens each large temporary is page-faulted and
zeroed by the kernel again on every step: that cost grows with T faster than the arithmetic
and made linear mixers look superlinear (gla, one thread, a loaded machine: 4.50 s per step
at 16,384 by default against 3.91 s with ``keep_freed_memory``). PyTorch's CPU tuning guide recommends an allocator that reuses memory
(jemalloc, tcmalloc) for the same reason. ``--os-malloc`` measures glibc's default instead.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import inspect
import itertools
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import torch

import layers
import tasks
from .record import device_info

MIB = 2 ** 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and keep what is freed there
    (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``), so a tensor freed by
    one step is reused by the next without page faults. Returns False where it cannot (not
    glibc), leaving the allocator as it was."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def machine_line(malloc: str = "") -> str:
    d = device_info()
    gpu = f", GPU: {', '.join(d['cuda'])}" if d.get("cuda") else ", no GPU"
    return (f"Machine: {d['processor'] or platform.machine()}, {d['cpu_count']} cores, "
            f"torch {torch.__version__} ({d['torch_threads']} threads){gpu}{malloc}")


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_gen(n: int = 100_000, names: Sequence[str] | None = None) -> list[str]:
    """Seconds to generate ``n`` training examples per task (default knobs), wall and CPU,
    on one thread as ``tasks.make_split`` runs it. A task over a corpus (lm) loads it once,
    untimed."""
    rows = [f"Load average before: {os.getloadavg()[0]:.1f} (1 min).", "",
            "| task | setting | examples | seconds | CPU seconds | examples/s |",
            "|---|---|---|---|---|---|"]
    for name in names or tasks.names():
        task = tasks.build(name)
        g = torch.Generator().manual_seed(0)
        task.for_split("train").generate(1, g)  # loads lm's corpus; a no-op elsewhere
        wall, cpu = [], []
        for _ in range(3):  # best of 3, like best_of
            w, c = time.perf_counter(), time.process_time()
            with tasks.single_threaded():
                task.generate(n, g)
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        secs, cpu_secs = min(wall), min(cpu)
        knobs = " ".join(f"{k}={v}" for k, v in sorted(vars(task).items()))
        # three significant figures: a fast task's milliseconds never print as 0.000
        rows.append(f"| {name} | {knobs} | {n:,} | {secs:.3g} | {cpu_secs:.3g} "
                    f"| {n / secs:,.0f} |")
    return rows


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes of tensors allocated while ``fn`` runs, above those alive before it
    (see the module docstring); None where the profiler cannot say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # kineto's raw events: one per allocation (+bytes) and free (-bytes)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except AttributeError:
        return None
    return max(itertools.accumulate(b for _, b in events), default=0)


def _train_step(fn: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module,
                x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """One forward+backward of ``fn`` (the mixer's forward or its reference); grads are freed
    first, so every call allocates the same."""
    def run() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        fn(x).backward(grad)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return run


def _measure(module: torch.nn.Module, d_model: int, batch: int, T: int, repeats: int,
             memory: bool, device: torch.device, reference: bool = False
             ) -> tuple[float, int | None]:
    """Best wall seconds of one forward+backward over ``[batch, T, d_model]`` after an untimed
    warm-up, and its peak memory (None when not measured)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, T, d_model, generator=g).to(device).requires_grad_()
    grad = torch.randn(batch, T, d_model, generator=g).to(device)
    step = _train_step(module.reference if reference else module, module, x, grad)
    peak = peak_memory_bytes(step, device) if memory else step()  # doubles as the warm-up
    return best_of(step, repeats), peak


def _layer_calls(module: torch.nn.Module, method: str, x: torch.Tensor
                 ) -> dict[Callable[..., Any], tuple[float, tuple, dict]]:
    """The functions of the ``layers`` package that ``module.<method>(x)`` calls directly (from
    the module defining that method), each with the wall seconds and arguments of its call."""
    home = sys.modules[getattr(type(module), method).__module__]
    found = {name: f for name, f in vars(home).items()
             if inspect.isfunction(f) and f.__module__.split(".")[0] == "layers"}
    calls: dict[Callable[..., Any], tuple[float, tuple, dict]] = {}

    def recorded(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = f(*args, **kwargs)
            calls[f] = (time.perf_counter() - start, args, kwargs)
            return out
        return call

    try:
        for name, f in found.items():
            setattr(home, name, recorded(f))
        with torch.no_grad():
            getattr(module, method)(x)
    finally:
        for name, f in found.items():
            setattr(home, name, f)
    return calls


def _kernel_pair(module: torch.nn.Module, x: torch.Tensor
                 ) -> tuple[tuple[Callable[..., Any], tuple, dict], ...] | None:
    """The recurrence kernel of ``module`` on its own, found through the contract rather than
    by name: the costliest ``layers`` function that ``forward`` calls and ``reference`` does
    not, against the costliest one ``reference`` calls and ``forward`` does not (gla:
    ``chunked_linear_attention`` and ``naive_recurrence``; phalanx: ``swr`` and
    ``swr_reference``), each with the arguments the layer gave it on ``x``. None where the two
    paths share their functions (attention's). It isolates the chunked form's speed-up from
    the projections around it."""
    fast, ref = _layer_calls(module, "forward", x), _layer_calls(module, "reference", x)
    fast_only = [(t, f, a, k) for f, (t, a, k) in fast.items() if f not in ref]
    ref_only = [(t, f, a, k) for f, (t, a, k) in ref.items() if f not in fast]
    if not fast_only or not ref_only:
        return None
    return tuple(max(found, key=lambda c: c[0])[1:] for found in (fast_only, ref_only))


def _time_kernel(fn: Callable[..., Any], args: tuple, kwargs: dict, repeats: int) -> float:
    """Best wall seconds of ``fn(*args, **kwargs)`` forward+backward (gradients for every
    floating-point tensor argument), after a warm-up; a tuple result's first element is the
    output (the kernels return ``(output, state)``)."""
    args = tuple(a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point()
                 else a for a in args)
    inputs = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.requires_grad]

    def output() -> torch.Tensor:
        out = fn(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    grad = torch.randn_like(output())

    def run() -> None:
        torch.autograd.grad(output(), inputs, grad, allow_unused=True)
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)
    run()
    return best_of(run, repeats)


def _memory_limit(device: torch.device) -> int:
    """Half the machine's RAM (or the GPU's memory): lengths predicted to need more are skipped
    rather than left to the out-of-memory killer."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def bench_mixers(lengths: Sequence[int] = (256, 1024, 4096, 16384), d_model: int = 128,
                 batch: int = 8, names: Sequence[str] | None = None, repeats: int = 2,
                 budget: float = 60.0, naive: Sequence[str] | None = None,
                 memory: bool = True, device: str = "cpu") -> list[str]:
    """Forward+backward throughput and peak memory of every sequence mixer (default options)
    over ``lengths``. A mixer's next length is skipped when, scaled linearly in T from the
    last one, it would take more than ``budget`` seconds a step or more than half the memory.
    Then the loop reference against the fast path for each ``name:T`` in ``naive`` (default:
    every mixer measured, at T = 1,024)."""
    dev = torch.device(device)
    limit = _memory_limit(dev)
    rows = [f"d_model={d_model}, batch={batch}, default options, best of {repeats}; "
            f"skip beyond {budget:g} s/step or {limit / 2**30:.0f} GiB (linear extrapolation).", "",
            "| mixer | T | tokens/s (fwd+bwd) | ms / step | peak MiB |", "|---|---|---|---|---|"]
    times: dict[str, dict[int, float]] = {}
    for name in names or layers.names():
        torch.manual_seed(0)
        module = layers.build(name, d_model).to(dev)
        last: tuple[int, float, int | None] | None = None  # T, seconds, peak bytes
        for T in sorted(lengths):
            if last is not None:
                scale = T / last[0]
                if last[1] * scale > budget or (last[2] or 0) * scale > limit:
                    rows.append(f"| {name} | {T:,} | skipped: predicted over budget | | |")
                    continue
            try:
                secs, peak = _measure(module, d_model, batch, T, repeats, memory, dev)
            except RuntimeError as e:  # torch's allocators raise this when memory runs out
                if "memory" not in str(e).lower():
                    raise
                rows.append(f"| {name} | {T:,} | out of memory | | |")
                last = (T, float("inf"), None)
                continue
            last = (T, secs, peak)
            times.setdefault(name, {})[T] = secs
            rows.append(f"| {name} | {T:,} | {batch * T / secs:,.0f} | {secs * 1e3:,.1f} "
                        f"| {'n/a' if peak is None else f'{peak / MIB:,.1f}'} |")
    rows += _scaling_rows(times)
    if naive is None:
        naive = [f"{name}:1024" for name in names or layers.names()]
    if naive:
        rows += ["", "Loop reference (fp32, the tests' oracle) against the fast path, fwd+bwd: "
                 "the whole layer (`forward` / `reference`), and its recurrence kernel alone "
                 "(the `layers` function only `forward` calls / the one only `reference` calls, "
                 "on the arguments the layer gave them).", "",
                 "| mixer | T | part | fast / reference | reference ms | fast ms | speed-up |",
                 "|---|---|---|---|---|---|---|"]
    for spec in naive:
        name, T = spec.split(":")[0], int(spec.split(":")[1])
        torch.manual_seed(0)
        module = layers.build(name, d_model).to(dev)
        ref, _ = _measure(module, d_model, batch, T, 1, False, dev, reference=True)
        fast, _ = _measure(module, d_model, batch, T, repeats, False, dev)
        pairs = [("layer", "forward / reference", ref, fast)]
        x = torch.randn(batch, T, d_model, generator=torch.Generator().manual_seed(0)).to(dev)
        kernel = _kernel_pair(module, x)
        if kernel is not None:
            (fast_fn, *fast_call), (ref_fn, *ref_call) = kernel
            pairs.append(("kernel", f"`{fast_fn.__name__}` / `{ref_fn.__name__}`",
                          _time_kernel(ref_fn, *ref_call, 1),
                          _time_kernel(fast_fn, *fast_call, repeats)))
        rows += [f"| {name} | {T:,} | {part} | {fns} | {r * 1e3:,.1f} | {f * 1e3:,.1f} "
                 f"| {r / f:,.1f}x |" for part, fns, r, f in pairs]
    return rows


def _scaling_rows(times: dict[str, dict[int, float]], base: int = 1024) -> list[str]:
    """time(T) / time(base) for every mixer measured at ``base`` and a longer T: about
    T / base for a linear-time mixer, (T / base)^2 for a quadratic one."""
    longer = sorted({T for by_T in times.values() for T in by_T if T > base})
    if not longer or not any(base in by_T for by_T in times.values()):
        return []
    rows = ["", f"Scaling: time(T) / time({base:,}) (linear: T / {base:,}).", "",
            "| mixer | " + " | ".join(f"{T:,}" for T in longer) + " |",
            "|---|" + "---|" * len(longer)]
    for name, by_T in times.items():
        if base in by_T:
            cells = [f"{by_T[T] / by_T[base]:,.1f}" if T in by_T else "" for T in longer]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _config(rel: str) -> dict[str, Any]:
    """A file of ``configs/`` as a dict."""
    from omegaconf import OmegaConf

    from .labels import CONFIG_DIR
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / rel))


def frontier_setting() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The recall frontier's training setting, as its configs give it (so the two cannot drift):
    the task's knobs and data sizes (``configs/experiment/frontier/_common.yaml`` over the task
    file it selects) and its model options."""
    from .config import split_task_config

    exp = _config("experiment/frontier/_common.yaml")
    task = next(d["override /task"] for d in exp["defaults"]
                if isinstance(d, dict) and "override /task" in d)
    _, knobs, sizes = split_task_config({**_config(f"task/{task}.yaml"), **exp["task"]})
    return {"name": task, **knobs}, sizes, exp["model"]


def bench_step(names: Sequence[str] | None = None, d_model: int = 64, repeats: int = 10,
               device: str = "cpu", base: str = "attention") -> list[str]:
    """One training step of the recall frontier per mixer, where its sweeps spend their time:
    a ``Backbone`` with the frontier's model options (2 layers, no channel mixer) and the
    mixer's ``configs/layer`` options, one batch of its task (MQAR, vocabulary 8,192, T = 64,
    batch 64), forward, cross-entropy at the supervised positions, backward, AdamW step (the
    optimiser settings of ``configs/optim/adamw.yaml``). Best of ``repeats`` after three
    warm-up steps, and each mixer's time over ``base``'s, measured in the same run."""
    from .labels import layer_defaults
    from .model import Backbone, param_groups

    task_cfg, sizes, model_cfg = frontier_setting()
    task = tasks.build(**task_cfg)
    dev = torch.device(device)
    x, y = (t.to(dev) for t in task.generate(sizes["batch_size"], torch.Generator().manual_seed(0)))
    sel = y != tasks.IGNORE
    optim = _config("optim/adamw.yaml")
    knobs = ", ".join(f"{k}={v}" for k, v in sorted(task_cfg.items()) if k != "name")
    rows = [f"{task_cfg['name']} ({knobs}), batch {sizes['batch_size']}, d_model={d_model}, "
            f"model {model_cfg}; best of {repeats} steps after 3 warm-up steps.", "",
            f"| mixer | ms / step | / {base} |", "|---|---|---|"]
    names = list(names or layers.names())
    times: dict[str, float] = {}
    for name in ([base] if base not in names else []) + names:
        torch.manual_seed(0)
        model = Backbone(task.vocab_size, d_model=d_model, pattern=name,
                         mixer_options={name: layer_defaults(name) or {}}, **model_cfg).to(dev)
        opt = torch.optim.AdamW(param_groups(model, optim["weight_decay"]), lr=optim["lr"],
                                betas=tuple(optim["betas"]), eps=optim["eps"])

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            logits = model.head(model.hidden(x)[sel])  # supervised positions only, as zoo.module
            torch.nn.functional.cross_entropy(logits.float(), y[sel]).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        for _ in range(3):
            step()
        times[name] = best_of(step, repeats)
    rows += [f"| {name} | {times[name] * 1e3:,.1f} | {times[name] / times[base]:.2f} |"
             for name in names]
    return rows


def _tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def bench_generate(tokens: int = 2048, d_model: int = 128, batch: int = 1,
                   names: Sequence[str] | None = None, device: str = "cpu") -> list[str]:
    """Recurrent inference: ``step`` over ``tokens`` tokens from an empty state. Memory growth
    is the state's tensor bytes after the last token against after the first."""
    dev = torch.device(device)
    rows = [f"d_model={d_model}, batch={batch}, {tokens:,} tokens, default options.", "",
            "| mixer | tokens/s | state MiB after 1 | state MiB after N | growth | "
            "state_size(N) floats |", "|---|---|---|---|---|---|"]
    for name in names or layers.names():
        torch.manual_seed(0)
        module = layers.build(name, d_model).to(dev).eval()
        if not type(module).supports("step"):
            rows.append(f"| {name} | no recurrent step | | | | |")
            continue
        xs = torch.randn(tokens, batch, d_model, generator=torch.Generator().manual_seed(0)).to(dev)
        with torch.no_grad():
            state = module.init_state(batch, dev, xs.dtype)
            _, state = module.step(xs[0], state)
            first = _tensor_bytes(state)
            start = time.perf_counter()
            for x_t in xs[1:]:
                _, state = module.step(x_t, state)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            secs = time.perf_counter() - start
        last = _tensor_bytes(state)
        rows.append(f"| {name} | {(tokens - 1) / secs:,.0f} | {first / MIB:,.3f} "
                    f"| {last / MIB:,.3f} | {last / first:,.1f}x | {module.state_size(tokens):,} |")
    return rows


def bench_moe(d_model: int = 128, batch: int = 8, lengths: Sequence[int] = (1024,),
              experts: Sequence[int] = (8,), top_k: int = 2, repeats: int = 3,
              device: str = "cpu") -> list[str]:
    """MoE forward+backward against the dense SwiGLU MLP with the same active parameters
    (hidden = top_k x expert hidden)."""
    dev = torch.device(device)
    rows = [f"d_model={d_model}, batch={batch}, top-{top_k}, expert hidden = SwiGLU's 8/3 d; "
            "dense MLP hidden = top_k x expert hidden (same active parameters).", "",
            "| experts | T | MoE ms / step | dense ms / step | MoE / dense |", "|---|---|---|---|---|"]
    for E in experts:
        for T in lengths:
            torch.manual_seed(0)
            moe = layers.build("moe", d_model, kind="channel", num_experts=E, top_k=top_k).to(dev)
            dense = layers.build("mlp", d_model, kind="channel", hidden=top_k * moe.hidden).to(dev)
            t_moe, _ = _measure(moe, d_model, batch, T, repeats, False, dev)
            t_dense, _ = _measure(dense, d_model, batch, T, repeats, False, dev)
            rows.append(f"| {E} | {T:,} | {t_moe * 1e3:,.1f} | {t_dense * 1e3:,.1f} "
                        f"| {t_moe / t_dense:.2f}x |")
    return rows


def bench_ess(lengths: Sequence[int] = (1024,), d_model: int = 128, samples: int = 5) -> list[str]:
    """``layers.ess`` at every position, head and layer of a fresh 2-layer attention model
    (4 heads, full rank: the worst case) on one random sequence, wall and CPU seconds (on a
    shared machine wall time depends on the load, noted above the table), and its largest
    error against a float64 SVD of ``H_i`` at ``samples`` positions, relative to each
    ``s_max``."""
    from layers import ess as E
    from .ess import mixer_inputs
    from .model import Backbone

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [f"d_model={d_model}, 2 layers of attention (4 heads), 1 sequence; "
            f"load average (1, 5, 15 min) at the start: {load}.", "",
            "| T | seconds (all positions, heads, layers) | CPU seconds | "
            "max error vs SVD (rel. s_max) |", "|---|---|---|---|"]
    for T in lengths:
        torch.manual_seed(0)
        model = Backbone(64, d_model=d_model, n_layers=2, pattern="attention",
                         mixer_options={"attention": {"num_heads": 4}}).eval()
        tokens = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ops = [b.mixer.operator(x) for b, x in zip(model.blocks, mixer_inputs(model, tokens))]
        start, cpu = time.perf_counter(), time.process_time()
        for op in ops:
            E.ess(op)
        secs, cpu = time.perf_counter() - start, time.process_time() - cpu
        sampled = torch.linspace(1, T - 1, samples).round().long().unique().tolist()
        err = 0.0
        for op in ops:
            _, s = E.singular_values(op, sampled)
            for j, i in enumerate(sampled):
                ref = torch.linalg.svdvals(op.double()[..., i:, :i])  # [B, H, min(i, T - i)]
                diff = (s[..., j, : ref.shape[-1]] - ref).abs().amax(-1) / ref[..., 0]
                err = max(err, float(diff.max()))
        rows.append(f"| {T:,} | {secs:.2f} | {cpu:.2f} | {err:.1e} |")
    return rows


def bench_leaderboard(records: int = 1000) -> list[str]:
    """``python -m zoo.leaderboard`` over ``records`` synthetic run records (5 tasks x 8 mixers
    x lr and seed grids, with per-length metrics and ESS), plots included, and ``--check``."""
    import tempfile
    from . import leaderboard
    from .record import SCHEMA_VERSION, write_record

    g = torch.Generator().manual_seed(0)
    mixers = ["attention", "swa", "ssa", "cat", "linear_attn", "gla", "phalanx", "mamba"]
    with tempfile.TemporaryDirectory() as d:
        for i in range(records):
            task, layer = f"task{i % 5}", mixers[(i // 5) % 8]
            acc = float(torch.rand((), generator=g))
            metrics = {"val/acc": acc, "test/acc": acc, "test/exact_match": acc / 2,
                       **{f"test/acc@len={L}": acc / (k + 1) for k, L in enumerate((64, 128))}}
            cfg = {"task": {"name": task, "seq_len": 64}, "layer": {"name": layer},
                   "model": {"d_model": 64, "n_layers": 2}, "optim": {"lr": [1e-3, 3e-3][i % 2]},
                   "seed": i, "suite": "bench"}
            write_record(d, {"schema_version": SCHEMA_VERSION, "run_id": f"r{i:05d}",
                             "status": "completed", "time": "t", "task": task, "layer": layer,
                             "config": cfg, "seed": i, "metrics": metrics, "params": 1000 + i,
                             "state_size": 64 * (1 + i % 8), "throughput_tokens_per_s": 1.0,
                             "wall_time_s": 1.0, "ess": {"layers": {"0": {
                                 "tolerance": 1.0 + acc, "heads": 1}}}})
        out = os.path.join(d, "site", "leaderboard.md")
        os.makedirs(os.path.dirname(out))
        build = best_of(lambda: leaderboard.main(["--results", d, "--out", out]), 1)
        check = best_of(lambda: leaderboard.main(["--results", d, "--out", out, "--check"]), 1)
        size = os.path.getsize(out)
    return ["| records | build with plots (s) | --check (s) | leaderboard.md bytes |",
            "|---|---|---|---|", f"| {records:,} | {build:.2f} | {check:.2f} | {size:,} |"]


SUITES: dict[str, Callable[..., list[str]]] = {
    "gen": bench_gen, "mixers": bench_mixers, "step": bench_step, "generate": bench_generate,
    "moe": bench_moe, "ess": bench_ess, "leaderboard": bench_leaderboard}
QUICK = {"lengths": [64, 256], "batch": 2, "repeats": 1, "naive": ["gla:256", "phalanx:256"],
         "tokens": 128}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # choices= would reject an empty list (argparse checks [] against them), so check here
    ap.add_argument("suite", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: a smoke run in seconds")
    ap.add_argument("--lengths", type=int, nargs="+", help="mixers, ess: sequence lengths")
    ap.add_argument("--d-model", type=int, help="mixers, step, generate, ess: model width")
    ap.add_argument("--batch", type=int, help="mixers, generate: batch size")
    ap.add_argument("--names", nargs="+",
                    help="mixers, step, generate: only these mixers; gen: tasks")
    ap.add_argument("--repeats", type=int, help="mixers, step: timed repeats (best is kept)")
    ap.add_argument("--budget", type=float, help="mixers: seconds per step beyond which a "
                                                  "mixer's longer lengths are skipped")
    ap.add_argument("--naive", nargs="*", help="mixers: NAME:T pairs timing the loop reference "
                                               "against the fast path")
    ap.add_argument("--no-memory", dest="memory", action="store_false", default=None,
                    help="mixers: skip the peak-memory pass")
    ap.add_argument("--tokens", type=int, help="generate: tokens to step through")
    ap.add_argument("--device", help="mixers, step, generate: torch device (default cpu)")
    ap.add_argument("--os-malloc", action="store_true",
                    help="leave glibc's allocator as it is (see the module docstring)")
    args = ap.parse_args(argv)
    unknown = [x for x in args.suite if x not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("suite", "quick", "os_malloc")}
    opts = {**(QUICK if args.quick else {}), **given}
    kept = not args.os_malloc and keep_freed_memory()
    print(machine_line("; malloc keeps freed memory (mallopt)" if kept else "; default malloc"))
    for suite in args.suite or list(SUITES):
        fn = SUITES[suite]
        accepted = inspect.signature(fn).parameters
        print(f"\n### {suite}\n")
        print("\n".join(fn(**{k: v for k, v in opts.items() if k in accepted})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
