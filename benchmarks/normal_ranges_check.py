"""How often the report's normal-range flags call the ACDC groups abnormal, on the experts' labels.

A sanity check of the published ranges the reports compare with
(:func:`cardioseg.clinical.indices.normal_ranges`) against the convention of our masks
(papillary muscles and trabeculae in the blood pool, as in the ACDC and M&Ms labels). For
every ACDC patient it computes the indices from the reference labels (ED and ES frames, height
and weight from ``Info.cfg``; ACDC records no sex, so the sex-pooled ranges apply, as in a
report without ``--sex``) and counts, per group and index, the patients flagged "low" or
"high". The NOR group (normal cardiac function) should be flagged rarely; the pathological
groups should be flagged on the indices their disease changes.

    python benchmarks/normal_ranges_check.py -o benchmarks/results --tag current
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from commands import command_line, write_lines

from cardioseg.clinical.indices import (
    NORMAL_RANGE_SOURCES,
    compare_to_normal,
    compute_indices,
    normal_ranges,
)
from cardioseg.data.datasets import ed_es_pairs, load_case, read_acdc

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "acdc" / "training"
GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")
INDICES = (
    "lv_ef_pct",
    "lvedv_index_ml_m2",
    "lvesv_index_ml_m2",
    "lvsv_index_ml_m2",
    "lv_mass_index_g_m2",
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_mass_g",
    "rv_ef_pct",
    "rv_edv_ml",
    "rvedv_index_ml_m2",
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ACDC training folder")
    ap.add_argument("-o", "--output", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--tag", default="current", help="suffix of the result file")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data}: not found (the ACDC training folder of ../shared/data)")
    command = command_line("normal_ranges_check.py", argv)
    ranges = normal_ranges()
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    n_group: dict[str, int] = defaultdict(int)
    for (_, _subject), phases in sorted(ed_es_pairs(read_acdc(data)).items()):
        _, ed, props = load_case(phases["ED"])
        _, es, _ = load_case(phases["ES"])
        extra = phases["ED"].extra
        indices = compute_indices(
            ed, es, props.spacing, float(extra["height"]), float(extra["weight"])
        )
        group = phases["ED"].group
        n_group[group] += 1
        for name, flag in compare_to_normal(indices, ranges).items():
            counts[(group, name)][flag] += 1

    lines = [
        f"# Normal-range flags on the ACDC experts' labels ({args.tag})",
        "",
        f"Command: `{command}`",
        "",
        "Sex-pooled adult ranges (ACDC records no sex), as a report without `--sex` uses them. "
        "Each cell: patients flagged low / high of the group.",
        "",
        "| index | range | source | " + " | ".join(f"{g} (n={n_group[g]})" for g in GROUPS) + " |",
        "|---|---|---|" + "---|" * len(GROUPS),
    ]
    for name in INDICES:
        if name not in ranges:
            continue
        cells = [f"{counts[(g, name)]['low']} / {counts[(g, name)]['high']}" for g in GROUPS]
        lo, hi = ranges[name]
        lines.append(
            f"| {name} | {lo:g}–{hi:g} | {NORMAL_RANGE_SOURCES.get(name, '')} | "
            + " | ".join(cells)
            + " |"
        )
    nor = n_group["NOR"]
    any_flag = sum(
        1
        for name in INDICES
        if name in ranges and counts[("NOR", name)]["low"] + counts[("NOR", name)]["high"]
    )
    lines += ["", f"NOR: {any_flag} of the listed indices flag at least one of {nor} patients."]
    path = write_lines(Path(args.output) / f"normal_ranges_check_{args.tag}.md", lines)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
