"""``python -m zoo.ess``: effective state-size (ESS, arXiv 2504.19561) of a model, per layer.

    python -m zoo.ess --run-id 20261122-115407-a840fe61 [--results results]
    python -m zoo.ess --fresh --layer gla --d-model 128 --n-layers 2 --seq-len 1024
    ... [--plot ess.png]   # PNG of ESS by position per layer (default: beside the run's outputs)

A trained run is loaded from the checkpoint its record kept (``checkpoint.path``: runs trained
with ``keep_checkpoint=true``; a run that kept none is named in a one-line error) and measured
on sequences of its task's test split; ``--fresh`` measures an initialised model on random
tokens. For every mixer that is a linear operator (``supports("operator")``) the operator is
materialised on that mixer's actual input (``block.norm1`` of the residual stream, captured by
a hook) and ``layers.ess`` gives tolerance- and entropy-ESS at every position, head and
sequence.

Units. ESS counts a rank per head; TSS is ``mixer.state_size(T)`` in floats for the whole
layer. A head's operator mixes ``mixer.operator_channels()`` value channels (``dv`` for
attention, linear attention and GLA, 1 for Mamba's per-channel operators), and a rank ``r``
there means ``r`` floats of state per channel, so the layer's ESS in floats is
``heads * channels * (mean per-head ESS)``: the number compared with TSS (utilisation, at most
1 where TSS is the whole state) and, per key-value pair, with accuracy across families.

What a run measures (``run_ess``, after its test): ``DEFAULTS``, which a run's ``ess`` block
overrides knob by knob (``ess.sequences``, ``ess.positions``, ``ess.max_len``): ``sequences``
test sequences, each on its first ``max_len`` tokens (all of them where ``max_len`` is null or
the sequence no longer), at ``positions`` positions evenly spaced over ``1..L-1`` (every
position where ``L - 1 <= positions``), ``L`` the length measured. A causal model's operator
over the first ``L`` tokens is the top-left ``L x L`` block of the whole sequence's, so the
numbers are the model's ESS (and TSS) at length ``L``: where ``T`` is longer, position ``i`` is
measured on the rows before ``L`` only (``H_i = op[i:L, :i]``), not on all the future the model
sees in training. The cost grows as ``L^3`` per head, and mamba has a head per inner channel:
for a mamba:attention 3:1 model (d 128, expand 1) at ``T`` 1,024, 8 sequences took 533 s whole
and 33 s on their first 256 tokens (one thread, benchmarks/hybrids.md). Every record written
before the cap (all at ``T <= 64``) was measured as ``DEFAULTS`` measure there: 8 sequences,
every position.

What a run records (``record["ess"]``, from ``ess_summary``): ``sequences``, ``seq_len`` (``L``,
the length measured), ``input_len`` (the test sequences' own length ``T``; ``L < T`` means a
prefix was measured), ``positions`` (how many) and ``positions_at`` (which), ``tol``, and

- ``layers[str(i)]``: ``mixer``, ``heads``, ``channels`` (per head), ``tolerance`` and
  ``entropy`` (mean per-head ESS over positions, heads and sequences), ``tss`` (floats),
  ``utilisation`` (``heads * channels * tolerance / tss``); ``None`` for a mixer that is not a
  linear operator.
- ``total``: the model's numbers, as arXiv 2504.19561 aggregates them: ESS averaged over the
  sequence positions, summed over heads, channels and layers. ``tolerance_ess`` =
  ``sum_layers heads * channels * tolerance`` (floats), ``entropy_ess`` likewise, ``tss`` =
  ``sum_layers tss`` (operator layers only); ``None`` when no layer is a linear operator.
- ``slices["<variant>"]`` (runs whose task has test variants, e.g. ``kv=8`` of
  ``task=state_size``): the same ``total`` numbers measured on that variant's own test inputs,
  its ``layers``, where it was measured (``seq_len``, ``input_len``, ``positions``,
  ``positions_at``: a variant may be longer), and for MQAR-like variants (``num_kv_pairs`` =
  ``kv``) ``kv``, ``ess_per_kv`` (= ``tolerance_ess / kv``, the paper's ESS/kv),
  ``entropy_ess_per_kv`` and ``tss_per_kv``. Beside ``metrics["test/acc@<variant>"]`` these
  give accuracy against ESS/kv and TSS/kv per slice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

import tasks
from layers import ess as E

from .config import split_task_config
from .model import Backbone
from .record import checkpoint_path, kept_checkpoint, load_records


def mixer_inputs(model: Backbone, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each block's mixer input ``norm1(h)`` ``[B, T, D]`` for ``tokens`` ``[B, T]`` (or real
    inputs ``[B, T, d_in]``), in the order the blocks are applied (``Backbone.applied``)."""
    seen: list[torch.Tensor] = []
    hooks = [b.norm1.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
             for b in model.blocks]
    try:
        with torch.no_grad():
            model.hidden(tokens)
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_ess(model: Backbone, tokens: torch.Tensor, positions: Sequence[int] | None = None,
              tol: float = E.DEFAULT_TOL) -> list[dict[str, Any] | None]:
    """Per block: ``ESS`` by position ``[B, heads, P]`` and the layer's TSS; None for mixers
    that are not linear operators."""
    T = tokens.shape[1]
    out: list[dict[str, Any] | None] = []
    was_training = model.training
    model.eval()
    try:
        # a looped model applies each block once per loop: every application is measured
        for block, x in zip(model.applied(), mixer_inputs(model, tokens)):
            mixer = block.mixer
            if not type(mixer).supports("operator"):
                out.append(None)
                continue
            # one sequence at a time: an operator is [heads, T, T] per sequence, and a batch
            # of them does not fit at long lengths (mamba at T 1,024, d 128: 4 GB each)
            per_seq = []
            for seq in x.split(1):
                with torch.no_grad():
                    op = mixer.operator(seq)  # [1, heads, T, T]
                per_seq.append(E.ess(op, positions, tol=tol))
                del op
            ess = E.ESS(per_seq[0].positions, torch.cat([r.tolerance for r in per_seq]),
                        torch.cat([r.entropy for r in per_seq]))
            out.append({"mixer": mixer.registry_name, "ess": ess,
                        "heads": ess.tolerance.shape[1], "channels": mixer.operator_channels(),
                        "tss": int(mixer.state_size(T))})
    finally:
        model.train(was_training)
    return out


def _layer_row(entry: dict[str, Any]) -> dict[str, Any]:
    s = E.summary(entry["ess"])
    row = {"mixer": entry["mixer"], "heads": entry["heads"], "channels": entry["channels"],
           "tolerance": s["tolerance"], "entropy": s["entropy"], "tss": entry["tss"]}
    return {**row, "utilisation": layer_floats(row) / row["tss"] if row["tss"] else None}


def layer_floats(row: dict[str, Any], kind: str = "tolerance") -> float:
    """A recorded layer's ESS in floats: ``heads * channels * ESS`` (see Units)."""
    return row["heads"] * row["channels"] * row[kind]


# What a run measures at its end (see the module docstring): test sequences, positions per
# sequence, and the length measured (the first max_len tokens; None: the whole sequence).
DEFAULTS: dict[str, int | None] = {"sequences": 8, "positions": 64, "max_len": 256}


def settings(given: dict[str, Any] | None) -> dict[str, int | None]:
    """``DEFAULTS`` with a run's ``ess`` block over them; a bad knob raises ``ConfigError``."""
    from .validate import ConfigError, is_int

    if given is not None and not isinstance(given, dict):
        raise ConfigError("ess", given, f"must be a mapping of {', '.join(DEFAULTS)}")
    out = dict(DEFAULTS)
    for k, v in (given or {}).items():
        if k not in DEFAULTS:
            raise ConfigError(f"ess.{k}", v, f"unknown; the ess knobs are {', '.join(DEFAULTS)}")
        out[k] = v
    for k, lo in (("sequences", 1), ("positions", 1), ("max_len", 2)):
        v = out[k]
        if not (is_int(v) and v >= lo) and not (k == "max_len" and v is None):
            raise ConfigError(f"ess.{k}", v, f"must be an int >= {lo}"
                              + (" or null (the whole sequence)" if k == "max_len" else ""))
    return out


# What ess_summary records of where it measured, repeated in each slice's entry.
MEASURED = ("seq_len", "input_len", "positions", "positions_at")


def summary_kwargs(opts: dict[str, int | None]) -> dict[str, int | None]:
    """``settings`` as ``ess_summary``'s keyword arguments."""
    return {"max_sequences": opts["sequences"], "max_positions": opts["positions"],
            "max_len": opts["max_len"]}


def sampled_positions(L: int, max_positions: int) -> list[int]:
    """``max_positions`` positions evenly spaced over ``1..L-1``, or all of them."""
    if L - 1 <= max_positions:
        return list(range(1, L))
    return torch.linspace(1, L - 1, max_positions).round().long().unique().tolist()


def ess_summary(model: Backbone, tokens: torch.Tensor, max_sequences: int = 8,
                max_positions: int = 64, tol: float = E.DEFAULT_TOL,
                max_len: int | None = None) -> dict[str, Any]:
    """What a run records: per layer, mean tolerance- and entropy-ESS per head (over positions,
    heads and sequences), TSS and utilisation. Kept cheap: at most ``max_sequences`` sequences,
    each on its first ``max_len`` tokens (None: all), at ``max_positions`` positions evenly
    spaced over ``1..L-1`` (all of them when ``L`` is small), so the means are estimates at
    long lengths; the record says which (``seq_len``, ``input_len``, ``positions_at``)."""
    T = tokens.shape[1]
    tokens = tokens[:max_sequences, :max_len]
    L = tokens.shape[1]
    at = sampled_positions(L, max_positions)
    layers_out = {str(i): None if e is None else _layer_row(e)
                  for i, e in enumerate(layer_ess(model, tokens, at, tol))}
    return {"tol": tol, "sequences": len(tokens), "seq_len": L, "input_len": T,
            "positions": len(at), "positions_at": at, "layers": layers_out,
            "total": _total(layers_out)}


def _total(layers_out: dict[str, dict[str, Any] | None]) -> dict[str, float] | None:
    """The model's ESS and TSS: per-layer ESS in floats summed over layers."""
    rows = [r for r in layers_out.values() if r is not None]
    if not rows:
        return None
    return {"tolerance_ess": sum(layer_floats(r) for r in rows),
            "entropy_ess": sum(layer_floats(r, "entropy") for r in rows),
            "tss": sum(r["tss"] for r in rows)}


def slice_summaries(model: Backbone, variants: dict[str, tasks.Task], seed: int,
                    max_sequences: int = 8, **kw: Any) -> dict[str, dict[str, Any] | None]:
    """Per test variant: ``ess_summary`` on ``max_sequences`` of that variant's test inputs,
    flattened to its ``total`` plus ``layers`` and what was measured (``MEASURED``), with
    per-pair figures where the variant has
    ``num_kv_pairs`` (see the module docstring)."""
    device = next(model.parameters()).device
    out: dict[str, dict[str, Any] | None] = {}
    for name, task in variants.items():
        tokens = tasks.make_split(task, max_sequences, seed, "test")[0].to(device)
        summary = ess_summary(model, tokens, max_sequences, **kw)
        total = summary["total"]
        if total is None:
            out[name] = None
            continue
        entry: dict[str, Any] = {**total, "layers": summary["layers"],
                                 **{k: summary[k] for k in MEASURED}}
        kv = getattr(task, "num_kv_pairs", None)
        if kv:
            entry.update(kv=kv, ess_per_kv=total["tolerance_ess"] / kv,
                         entropy_ess_per_kv=total["entropy_ess"] / kv,
                         tss_per_kv=total["tss"] / kv)
        out[name] = entry
    return out


def run_ess(model: Backbone, task: tasks.Task, variants: dict[str, tasks.Task], seed: int,
            given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's ``record["ess"]``: ``ess_summary`` on its task's test split with ``settings``
    (``given``: the run's ``ess`` block), and per test variant (``slice_summaries``)."""
    opts = settings(given)
    kw = summary_kwargs(opts)
    device = next(model.parameters()).device
    tokens = tasks.make_split(task, opts["sequences"], seed, "test")[0].to(device)
    out = ess_summary(model, tokens, **kw)
    if variants:  # e.g. state_size's kv=<k> slices, each on its own inputs
        out["slices"] = slice_summaries(model, variants, seed, **kw)
    return out


def _find_record(results: str, run_id: str) -> dict[str, Any]:
    records, _ = load_records(results)
    found = [r for r in records if r["run_id"] == run_id and r.get("kind") != "eval"]
    if not found:
        raise SystemExit(f"zoo.ess: no record with run_id {run_id!r} under {results}/")
    return found[0]


def _load_run(record: dict[str, Any], n: int) -> tuple[Backbone, torch.Tensor]:
    from .module import ZooModule  # Lightning is only needed for trained runs

    try:
        ckpt = kept_checkpoint(record)
    except LookupError as e:
        raise SystemExit(f"zoo.ess: {e}, or use --fresh") from None
    model = ZooModule.load_from_checkpoint(ckpt, map_location="cpu").model
    name, knobs, _ = split_task_config(record["config"]["task"])
    inputs, _ = tasks.make_split(tasks.build(name, **knobs), n, record["seed"], "test")
    return model, inputs


def _fresh(args: argparse.Namespace) -> tuple[Backbone, torch.Tensor]:
    torch.manual_seed(args.seed)
    model = Backbone(args.vocab, d_model=args.d_model, n_layers=args.n_layers, pattern=args.layer)
    g = torch.Generator().manual_seed(args.seed)
    return model, torch.randint(0, args.vocab, (args.sequences, args.seq_len), generator=g)


def table(per_layer: list[dict[str, Any] | None]) -> list[str]:
    rows = ["| layer | mixer | head | tolerance-ESS | entropy-ESS | max tol-ESS | TSS | "
            "utilisation |", "|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(per_layer):
        if e is None:
            rows.append(f"| {i} | not a linear operator | | | | | | |")
            continue
        r, res = _layer_row(e), e["ess"]
        for h in range(e["heads"]):
            t, en = res.tolerance[:, h], res.entropy[:, h]  # [B, P]
            rows.append(f"| {i} | {r['mixer']} | {h} | {float(t.mean()):.2f} "
                        f"| {float(en.mean()):.2f} | {float(t.mean(0).max()):.1f} | | |")
        util = "n/a" if r["utilisation"] is None else f"{r['utilisation']:.3f}"
        rows.append(f"| {i} | {r['mixer']} | all | {r['tolerance']:.2f} | {r['entropy']:.2f} "
                    f"| | {r['tss']:,} | {util} |")
    return rows


def default_plot_path(args: argparse.Namespace, record: dict[str, Any] | None) -> Path:
    """Beside the run's outputs (the directory holding ``checkpoints/``) for ``--run-id``;
    ``ess-fresh-<layer>-T<len>.png`` in the working directory for ``--fresh``."""
    if record is not None:
        return Path(checkpoint_path(record)).parent.parent / f"ess-{record['run_id']}.png"
    return Path(f"ess-fresh-{args.layer}-T{args.seq_len}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-id", help="measure this run's best checkpoint")
    ap.add_argument("--results", default="results", help="where the run records live")
    ap.add_argument("--fresh", action="store_true", help="measure an initialised model instead")
    ap.add_argument("--layer", default="attention", help="--fresh: the sequence mixer")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sequences", type=int, default=1, help="sequences to average over")
    ap.add_argument("--tol", type=float, default=E.DEFAULT_TOL, help="relative tolerance")
    ap.add_argument("--plot", "--png", dest="plot", help="PNG of ESS by position (default: "
                    "beside the run's outputs, or ess-fresh-<layer>-T<len>.png for --fresh)")
    args = ap.parse_args(argv)
    if bool(args.run_id) == args.fresh:
        ap.error("give exactly one of --run-id or --fresh")
    record = _find_record(args.results, args.run_id) if args.run_id else None
    model, tokens = _load_run(record, args.sequences) if record else _fresh(args)
    tokens = tokens[: args.sequences]
    per_layer = layer_ess(model, tokens, tol=args.tol)
    print(f"ESS (tol {args.tol:g} relative), {len(tokens)} sequence(s) of length "
          f"{tokens.shape[1]}, means over positions 1..{tokens.shape[1] - 1}:\n")
    print("\n".join(table(per_layer)))
    what = f"run {args.run_id}" if record else f"fresh {args.layer}"
    from .plots import ess_by_position  # matplotlib and the leaderboard's modules: CLI only

    path = Path(args.plot) if args.plot else default_plot_path(args, record)
    print("\n" + ess_by_position(per_layer, path,
                                  f"{what}, {len(tokens)} sequence(s) of length {tokens.shape[1]}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
