"""``python -m zoo.leaderboard``: rebuild ``leaderboard.md`` and its figures from run records.

    python -m zoo.leaderboard                               # results/ -> leaderboard.md, plots/
    python -m zoo.leaderboard --check                       # exit 1 if leaderboard.md is stale
    python -m zoo.leaderboard --results runs --out mine.md  # your own runs (figures: mine_plots/)
    python -m zoo.leaderboard --suite frontier              # one suite: leaderboard-frontier.md
    python -m zoo.leaderboard --csv records.csv             # every readable record, a row each
    python -m zoo.leaderboard --unfinished                  # records to extend, not to publish

Honest selection (``zoo.selection``): within each row (task setting x architecture x width x
suite) the hyper-parameters are chosen on the mean validation metric over seeds, and the row
reports the test metrics of that choice over its seeds. The output is a pure function of the
records (sorted, fixed formatting, no timestamps): rebuilding without new records changes no
byte. Files skipped and duplicates ignored are listed in the file and on stderr.

Only the published records (``results/``) build ``leaderboard.md``: with another ``--results``
or a ``--suite`` the default output is elsewhere (``<results>/leaderboard.md``,
``leaderboard-<suite>.md``), so no user run can change the committed file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import ess_study, plots
from .export import write_csv
from .render import render
from .labels import label
from .reading import read
from .selection import Board, matrix, matrix_suite, recall_suite, summarise
from .two_stage import unfinished

RESULTS, OUT = "results", "leaderboard.md"


def board(results_dir: str | Path, suite: str | None = None) -> Board:
    """Everything the leaderboard shows, from the records under ``results_dir``."""
    records = read(results_dir)
    if suite is not None:
        records = records.of_suite(suite)
    rows = summarise(records.counted)
    main_suite = matrix_suite(rows)
    points = ess_study.points(rows)
    return Board(Path(results_dir).name or str(results_dir), records, rows,
                 matrix(rows, main_suite) if main_suite else None, recall_suite(rows), points,
                 ess_study.study(points))


def build(results_dir: str | Path, plots_dir: str | Path | None = None,
          relative_to: str | Path = ".", draw: bool = True, suite: str | None = None,
          the_board: Board | None = None) -> str:
    """The leaderboard text; with ``plots_dir`` the PNGs are linked and, if ``draw``, (re)drawn
    there. The links are a pure function of the records, so ``--check`` (``draw=False``)
    compares the text while touching no file."""
    b = the_board or board(results_dir, suite)
    links: list[tuple[str, str]] = []
    if plots_dir is not None:
        todo = plots.draw_all(b, Path(plots_dir)) if draw else plots.planned(b, Path(plots_dir))
        links = [(title, Path(os.path.relpath(path, relative_to)).as_posix())
                 for title, path in todo]
    return render(b, links)


def report(b: Board) -> None:
    """What was not counted, on the terminal."""
    recs = b.records
    if recs.problems:
        print(f"skipped {len(recs.problems)} files:", *recs.problems, sep="\n  ",
              file=sys.stderr)
    if recs.duplicate_of:
        print(f"ignored {len(recs.duplicate_of)} duplicate records:",
              *(f"{d} (counted: {k})" for d, k in sorted(recs.duplicate_of.items())),
              sep="\n  ", file=sys.stderr)
    if recs.superseded:
        print(f"{len(recs.superseded)} records superseded by a longer run of the same config:",
              *(f"{d} (counted: {k})" for d, k in sorted(recs.superseded.items())),
              sep="\n  ", file=sys.stderr)


def default_out(results: str, suite: str | None) -> Path:
    if suite is not None:
        return Path(f"leaderboard-{suite}.md")
    return Path(OUT) if Path(results) == Path(RESULTS) else Path(results) / OUT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=RESULTS, help="directory of run records (results)")
    ap.add_argument("--out", help="markdown file to write (leaderboard.md for results/, else "
                                  "<results>/leaderboard.md; leaderboard-<suite>.md with --suite)")
    ap.add_argument("--plots", help="directory for the PNG figures, relative to --out's "
                                    "directory (plots beside leaderboard.md, else <out stem>_plots;"
                                    " '' for none)")
    ap.add_argument("--suite", help="only the records of this suite")
    ap.add_argument("--csv", metavar="FILE", help="write every readable record as a CSV row "
                                                  "to FILE instead of the markdown")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out is stale, write nothing")
    ap.add_argument("--unfinished", action="store_true",
                    help="list the second-stage records that stopped at their step cap while still "
                         "improving (path, label, width), one per line, and write nothing: commit "
                         "the other records; the budget ladder (extend=true) trains these longer")
    args = ap.parse_args(argv)
    if args.unfinished:
        recs = read(args.results)
        for path, rec in unfinished(recs.of_suite(args.suite) if args.suite else recs):
            print(f"{Path(args.results) / path}\t{label(rec['config'])}\t"
                  f"d={rec['config']['model']['d_model']}\t{rec['config'].get('suite')}")
        return 0
    b = board(args.results, args.suite)
    report(b)
    if args.csv:
        n = write_csv(args.csv, b.records)
        print(f"wrote {args.csv} ({n} records)")
        return 0
    out = Path(args.out) if args.out else default_out(args.results, args.suite)
    plots_name = args.plots if args.plots is not None else (
        "plots" if out.name == OUT else f"{out.stem}_plots")
    plots_dir = (out.parent / plots_name) if plots_name else None
    text = build(args.results, plots_dir, out.parent, draw=not args.check, the_board=b)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is stale: run `python -m zoo.leaderboard`", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    print(f"wrote {out} ({len(b.records.counted)} records, {len(b.rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
