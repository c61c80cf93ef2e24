"""The leaderboard's PNG plots, drawn from ``zoo.leaderboard.summarise`` (selected runs only).

    accuracy_vs_state_size.png   per task: test accuracy against theoretical state size
    length_generalisation.png    per task with several eval lengths: accuracy against length
    ess_vs_accuracy.png          test accuracy against measured ESS; and, for task=state_size,
                                 accuracy against ESS and TSS per key-value pair

``planned`` says which files a summary yields without drawing (``--check`` uses it); ``draw_all``
draws them. PNGs carry no timestamp or version metadata, so unchanged records redraw the same
bytes on the same matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .leaderboard import FIXED

Summary = dict[str, list[dict[str, Any]]]
PNG_META = {"Software": None}


def _selected(summary: Summary) -> dict[str, list[dict[str, Any]]]:
    return {t: [r for r in rows if "test" in r] for t, rows in summary.items()}


def _length_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if sum(v.startswith("len=") for v in r.get("by_variant", {})) > 1]


def planned(summary: Summary, out_dir: Path) -> list[tuple[str, Path]]:
    sel = _selected(summary)
    out: list[tuple[str, Path]] = []
    if any(sel.values()):
        out.append(("Test accuracy against state size, per task",
                    out_dir / "accuracy_vs_state_size.png"))
    if any(_length_rows(rows) for rows in sel.values()):
        out.append(("Length generalisation: test accuracy against evaluation length",
                    out_dir / "length_generalisation.png"))
    if any(r.get("ess") is not None for rows in sel.values() for r in rows):
        out.append(("Test accuracy against effective state size (and per key-value pair)",
                    out_dir / "ess_vs_accuracy.png"))
    return out


def _grid(n: int, plt: Any, width: float = 4.2, height: float = 3.4) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _colors(names: list[str], plt: Any) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(sorted(set(names)))}


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = round(fig.get_figheight() / 3.4)  # fixed margins: tight_layout costs a full draw
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.09 / rows, bottom=0.2 / rows,
                        wspace=0.3, hspace=0.45)
    fig.savefig(path, dpi=90, metadata=PNG_META)


def _by_layer(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["layer"], []).append(r)
    return out


def draw_all(summary: Summary, out_dir: Path,
             corr: dict[str, Any] | None = None) -> list[tuple[str, Path]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = {t: rows for t, rows in _selected(summary).items() if rows}
    todo = planned(summary, out_dir)
    names = {p.name for _, p in todo}
    colors = _colors([r["layer"] for rows in sel.values() for r in rows], plt)

    if "accuracy_vs_state_size.png" in names:
        fig, axes = _grid(len(sel), plt)
        for ax, (task, rows) in zip(axes, sorted(sel.items())):
            for layer, group in sorted(_by_layer(rows).items()):  # one artist per layer
                ax.errorbar([r["state_size"] for r in group], [r["test"][0] for r in group],
                            yerr=[r["test"][1] for r in group], fmt="o", ms=4, lw=0.8,
                            color=colors[layer])
            ax.set_xscale("log")
            ax.set(title=task, xlabel="state size (floats)", ylabel="test accuracy",
                   ylim=(-0.02, 1.02))
        _finish(fig, colors, plt, out_dir / "accuracy_vs_state_size.png")

    if "length_generalisation.png" in names:
        groups = {t: _length_rows(rows) for t, rows in sel.items() if _length_rows(rows)}
        fig, axes = _grid(len(groups), plt)
        for ax, (task, rows) in zip(axes, sorted(groups.items())):
            for r in rows:
                pts = sorted((int(v[4:]), acc[0]) for v, acc in r["by_variant"].items()
                             if v.startswith("len="))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1,
                        color=colors[r["layer"]], alpha=0.8)
            ax.set(title=task, xlabel="evaluation length", ylabel="test accuracy",
                   ylim=(-0.02, 1.02))
        _finish(fig, colors, plt, out_dir / "length_generalisation.png")

    if "ess_vs_accuracy.png" in names:
        points = [p for rows in sel.values() for r in rows for p in r.get("slices", [])
                  for p in [{**p, "layer": r["layer"], "suite": r.get("suite") or "-",
                             "fixed": r.get("fixed_state")}]]
        suites = sorted({p["suite"] for p in points})
        fig, axes = _grid(3 * (1 + len(suites)) if points else 1, plt)
        with_ess = [r for rows in sel.values() for r in rows if r.get("ess") is not None]
        for layer, group in sorted(_by_layer(with_ess).items()):
            axes[0].scatter([r["ess"] for r in group], [r["test"][0] for r in group],
                            color=colors[layer], s=18)
        axes[0].set_xscale("log")
        axes[0].set(title="all tasks", xlabel="ESS (floats, tolerance)",
                    ylabel="test accuracy", ylim=(-0.02, 1.02))
        # the state_size points pooled (first row), then one row per suite
        groups = (corr or {}).get("groups") or {}
        panels = [("all suites", points, corr or {}, None)] + [
            (f"suite {s}", [p for p in points if p["suite"] == s], groups.get((s, ""), {}),
             groups.get((s, FIXED), {})) for s in suites]
        for row, (title, pts, stats, fixed_stats) in enumerate(panels):
            if row:  # first column: ESS per pair of the suite's fixed-state mixers alone
                rho = [(fixed_stats.get(k) or {}).get("spearman") for k in PER_KV]
                _per_kv_panel(axes[3 * row], [p for p in pts if p["fixed"]], "ess_per_kv",
                              "fixed-state mixers" + (f": ESS {rho[0]:+.2f}, TSS {rho[1]:+.2f}"
                                                      if None not in rho else ""), colors)
            for ax, key in zip(axes[3 * row + 1:3 * row + 3], PER_KV):
                rho = (stats.get(key) or {}).get("spearman")
                _per_kv_panel(ax, pts, key, title + (f": Spearman {rho:+.2f}"
                                                     if rho is not None else ""), colors)
        _finish(fig, colors, plt, out_dir / "ess_vs_accuracy.png")
    return todo


PER_KV = {"ess_per_kv": "ESS per key-value pair", "tss_per_kv": "TSS per key-value pair"}


def _per_kv_panel(ax: Any, pts: list[dict[str, Any]], key: str, title: str,
                  colors: dict[str, Any]) -> None:
    """Slice accuracy against ESS or TSS per key-value pair (log x), a colour per layer."""
    for layer, group in sorted(_by_layer(pts).items()):
        ax.scatter([p[key] for p in group], [p["acc"] for p in group],
                   color=colors[layer], s=18)
    ax.set_xscale("log")
    ax.set(title=title, xlabel=PER_KV[key], ylabel="test accuracy of the slice",
           ylim=(-0.02, 1.02))


def _finish(fig: Any, colors: dict[str, Any], plt: Any, path: Path) -> None:
    """One legend (a colour per layer) below the panels; save; free the figure."""
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=n) for n, c in colors.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False)
    _save(fig, path)
    plt.close(fig)
