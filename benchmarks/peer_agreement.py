"""Clinical indices of the peer (myopari) against the reference labels, for a side by side.

Segments every ED/ES volume of a dataset with the peer's own code (see ``peers.py``), writes the
label maps named like the images, and runs the same agreement analysis as
``cardioseg agreement --predictions``. Compare with cardioseg's reported indices with
``paired_cases.py --indices``.

Usage (from the repository root):

    pip download --no-deps myopari -d benchmarks/peers
    python benchmarks/peer_agreement.py --dataset ../shared/data/mnms --layout mnms \\
        -o benchmarks/results/agreement_mnms_myopari
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from peers import MyopariPeer, find_myopari

from cardioseg.data.datasets import discover, load_case
from cardioseg.evaluation.agreement import paired_indices, write_agreement
from cardioseg.io.nifti import ImageProperties, write_label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--layout", default="auto")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--peers-dir", default="benchmarks/peers")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pkg = find_myopari(args.peers_dir)
    if pkg is None:
        sys.exit(f"error: {args.peers_dir}: no myopari wheel (pip download --no-deps myopari)")
    peer = MyopariPeer(pkg, threads=args.threads)
    records = [r for r in discover(args.dataset, args.layout) if r.phase in ("ED", "ES")]
    pred_dir = args.output / "predictions"
    for r in records:
        image, _, props = load_case(r)
        labels = peer.predict_volume(image, props.spacing)
        geometry = ImageProperties(props.affine, props.spacing, labels.shape, r.image)
        write_label(pred_dir / Path(r.image).name, labels, geometry)
        print(f"{r.case_id}: segmented", flush=True)
    rows = paired_indices(records, pred_dir=pred_dir)
    md = write_agreement(rows, args.output, title=f"Agreement of myopari on {args.dataset.name}")
    print(md.read_text())


if __name__ == "__main__":
    main()
