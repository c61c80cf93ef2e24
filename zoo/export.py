"""``python -m zoo.leaderboard --csv FILE``: every readable run record as one CSV row.

Nested fields become dotted columns (``config.layer.num_heads``, ``config.model.mixer_options.
attention.pos``, ``metrics.test/acc@kv=4``), lists and empty mappings JSON text; in front, what
the leaderboard derives: the architecture label, width, suite, the layer sequence, and whether
the record is counted or a duplicate of another (``duplicate_of``, its path).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .labels import label, layer_sequence, width
from .reading import Records
from .selection import flat

LEAD = ("path", "counted", "duplicate_of", "superseded_by", "run_id", "suite", "task", "label", "width",
        "layers", "status", "stop_reason", "seed")


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def table(records: Records) -> list[dict[str, Any]]:
    out = []
    for path, rec in records.entries:
        cfg = rec["config"]
        row = {"path": path, "counted": records.is_counted(path),
               "duplicate_of": records.duplicate_of.get(path, ""),
               "superseded_by": records.superseded.get(path, ""), "suite": cfg.get("suite"),
               "label": label(cfg), "width": width(cfg), "layers": ",".join(layer_sequence(cfg))}
        row.update({k: _cell(v) for k, v in flat(rec).items() if k not in row})
        out.append(row)
    return out


def write_csv(path: str | Path, records: Records) -> int:
    """Write the table; returns its number of rows."""
    rows = table(records)
    rest = sorted({k for r in rows for k in r} - set(LEAD))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*LEAD, *rest], restval="")
        w.writeheader()
        w.writerows(rows)
    return len(rows)
