"""Quality control on the expert labels themselves: how often does QC flag a correct result?

The anatomical checks of :func:`cardioseg.clinical.qc.assess_quality` must accept what experts
draw. This runs them (no model, no probabilities) on the reference ED/ES label pairs of the given
datasets and writes the status counts and every reason to ``OUT/qc_reference_check.md``.

It also measures, on every labelled volume of ``--enclosure-datasets``, how much of the LV
border the experts' myocardium covers per slice (inner and end slices) and how many slices the
post-processing rule :func:`cardioseg.inference.postprocess.drop_open_basal_slices` would remove
from the expert labels (a rule that follows the labelling convention removes none).

    python benchmarks/qc_reference_check.py --data ../shared/data -o benchmarks/results
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from cardioseg.clinical.qc import assess_quality
from cardioseg.data.datasets import discover, ed_es_pairs, load_case
from cardioseg.errors import CardiosegError
from cardioseg.inference.postprocess import drop_open_basal_slices, myocardial_enclosure
from cardioseg.io.nifti import atomic_write
from cardioseg.preprocessing import slice_axis


def enclosure_rows(root: Path) -> tuple[list[float], list[float], int, int]:
    """Per-slice LV border fractions on myocardium (end slices, inner slices) of the expert
    labels, the number of volumes and the slices the basal post-processing rule removes."""
    ends: list[float] = []
    inner: list[float] = []
    n, removed = 0, 0
    for rec in discover(root):
        if not rec.label:
            continue
        try:
            _, ref, props = load_case(rec)
        except CardiosegError:
            continue
        axis = slice_axis(props.spacing, ref.shape)
        moved = np.moveaxis(ref, axis, 0)
        values = [myocardial_enclosure(sl) for sl in moved]
        idx = [i for i, v in enumerate(values) if v is not None]
        if not idx:
            continue
        n += 1
        ends += [values[idx[0]], values[idx[-1]]]
        inner += [values[i] for i in idx[1:-1]]
        after = np.moveaxis(drop_open_basal_slices(ref, axis), axis, 0)
        removed += sum(
            int((moved[z] == 1).any() and not (after[z] == 1).any()) for z in range(len(moved))
        )
    return ends, inner, n, removed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--datasets", nargs="+", default=["acdc", "mnms"])
    ap.add_argument("--enclosure-datasets", nargs="+", default=["acdc", "mnms", "mscmr_lge"])
    args = ap.parse_args()
    lines = [
        "# QC on expert labels",
        "",
        "Command: `python benchmarks/qc_reference_check.py --data ../shared/data "
        f"-o {args.output} --datasets {' '.join(args.datasets)} "
        f"--enclosure-datasets {' '.join(args.enclosure_datasets)}`",
        "",
        "| dataset | pairs | ok | review | fail |",
        "|---|---|---|---|---|",
    ]
    details = []
    for name in args.datasets:
        counts = collections.Counter()
        for (_, subject), ph in ed_es_pairs(discover(args.data / name)).items():
            _, ed, props = load_case(ph["ED"])
            _, es, _ = load_case(ph["ES"])
            qc = assess_quality(ed, es, props.spacing)
            counts[qc.status] += 1
            if qc.status != "ok":
                details.append(f"- {name} {subject}: {qc.status}: {'; '.join(qc.reasons)}")
        n = sum(counts.values())
        lines.append(f"| {name} | {n} | {counts['ok']} | {counts['review']} | {counts['fail']} |")
        print(name, n, dict(counts))
    lines += ["", "Flagged pairs:", "", *(details or ["none"]), ""]
    lines += [
        "## Myocardium around the LV in expert labels",
        "",
        "Fraction of the LV border (4-neighbour ring) on myocardium per labelled slice; end = the "
        "first and last LV slice (base and apex). Removed = LV slices that the basal "
        "post-processing rule (`drop_open_basal_slices`, < 50 % enclosed) takes out of the "
        "expert labels.",
        "",
        "| dataset | volumes | end slices: min / 5th pct | end slices < 0.5 | inner slices: min "
        "/ 1st pct | slices removed by the basal rule |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.enclosure_datasets:
        ends, inner, n, removed = enclosure_rows(args.data / name)
        if not n:
            continue
        e, i = np.array(ends), np.array(inner)
        lines.append(
            f"| {name} | {n} | {e.min():.2f} / {np.percentile(e, 5):.2f} | {int((e < 0.5).sum())} "
            f"of {e.size} | {i.min():.2f} / {np.percentile(i, 1):.2f} | {removed} |"
        )
        print(name, n, "removed", removed)
    lines.append("")
    out = args.output / "qc_reference_check.md"
    with atomic_write(out) as tmp:
        tmp.write_text("\n".join(lines))
    print(out)


if __name__ == "__main__":
    main()
