"""The hybrids' ratio axis (``recall_vs_ratio.png``, experiment=hybrid_recall): which
leaderboard rows are hybrids of attention and one other mixer, at what ratio of that mixer's
blocks to attention's, on which line, and which suite the figure is drawn from. Selection only;
``zoo.plots`` draws it.
"""

from __future__ import annotations

from .labels import mixers
from .selection import Row, by_suite, selection_stages

FULL = "attention"  # the full-attention mixer a hybrid's ratio counts against


def ratio_of(row: Row) -> tuple[str, int] | None:
    """A row's place on the hybrids' ratio axis: the other mixer's words (as in the label)
    and its blocks per attention block, ``("swa(16)", 3)`` for ``swa(16):attention 3:1 x8``;
    ``("", 0)`` for attention alone; None for anything else (no attention, two other mixers,
    a ratio that is not whole)."""
    counts = mixers(row.cfg)
    full = [c for name, _, c in counts if name == FULL]
    others = [(words, c) for name, words, c in counts if name != FULL]
    if not full or len(others) > 1 or (others and others[0][1] % full[0]):
        return None
    return (others[0][0], others[0][1] // full[0]) if others else ("", 0)


def ratio_lines(rows: list[Row]) -> dict[tuple[str, int | None, int], dict[int, Row]]:
    """The hybrids among key-value-sliced rows, by line (the other mixer's words, the width
    and the number of blocks), then ratio to attention; attention alone is the line
    ``("", width, blocks)`` at 0."""
    out: dict[tuple[str, int | None, int], dict[int, Row]] = {}
    for r in rows:
        where = ratio_of(r) if r.test and r.variants("kv=") else None
        if where is not None:
            blocks = sum(c for _, _, c in mixers(r.cfg))
            out.setdefault((where[0], r.width, blocks), {})[where[1]] = r
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items(), key=str)}


def ratio_suite(rows: list[Row]) -> str | None:
    """The suite of the ratio figure: the one whose hybrids span the most ratios (then rows,
    then name), where some mixer is at two ratios or more; stage-1 suites (``lr_from``)
    never."""
    stages, found = selection_stages(), []
    for suite, rs in by_suite(rows).items():
        lines = ratio_lines(rs)
        if suite is None or suite in stages or not any(
                words and len(v) > 1 for (words, _, _), v in lines.items()):
            continue
        found.append((-len({x for v in lines.values() for x in v}),
                      -sum(map(len, lines.values())), suite))
    return min(found)[2] if found else None
