"""Quality control on the expert labels themselves: how often does QC flag a correct result?

The anatomical checks of :func:`cardioseg.clinical.qc.assess_quality` must accept what experts
draw. This runs them (no model, no probabilities) on the reference ED/ES label pairs of the given
datasets and writes the status counts and every reason to ``OUT/qc_reference_check.md``.

    python benchmarks/qc_reference_check.py --data ../shared/data -o benchmarks/results
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from cardioseg.clinical.qc import assess_quality
from cardioseg.data.datasets import discover, ed_es_pairs, load_case
from cardioseg.io.nifti import atomic_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--datasets", nargs="+", default=["acdc", "mnms"])
    args = ap.parse_args()
    lines = [
        "# QC on expert labels",
        "",
        "Command: `python benchmarks/qc_reference_check.py --data ../shared/data "
        f"-o {args.output} --datasets {' '.join(args.datasets)}`",
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
    out = args.output / "qc_reference_check.md"
    with atomic_write(out) as tmp:
        tmp.write_text("\n".join(lines))
    print(out)


if __name__ == "__main__":
    main()
