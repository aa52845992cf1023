"""The dataset index: one CSV row per case, used by training, evaluation and benchmarks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cardioseg.data.datasets import CaseRecord
from cardioseg.io.nifti import atomic_write


def write_index(records: list[CaseRecord], path: str | Path) -> Path:
    """Write records as CSV (atomic)."""
    rows = [r.to_row() for r in records]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return Path(path)


def read_index(path: str | Path) -> list[CaseRecord]:
    """Read an index written by :func:`write_index`."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            extra = {k[6:]: v for k, v in row.items() if k.startswith("extra_")}
            out.append(
                CaseRecord(
                    row["dataset"],
                    row["subject"],
                    row["phase"],
                    row["image"],
                    row["label"],
                    row["label_map"],
                    int(row["frame"]),
                    row["vendor"],
                    row["centre"],
                    row["group"],
                    tuple(float(s) for s in row["spacing"].split("x"))
                    if row["spacing"]
                    else (0, 0, 0),
                    tuple(int(s) for s in row["shape"].split("x")) if row["shape"] else (),
                    json.loads(json.dumps(extra)),
                )
            )
    return out
