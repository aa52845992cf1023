"""Dataset readers, the dataset index, splits and the synthetic phantom."""

from cardioseg.data.datasets import (
    CaseRecord,
    discover,
    load_case,
    read_acdc,
    read_folder_pairs,
    read_mnms,
    read_mnms2,
    read_mscmr,
)
from cardioseg.data.index import read_index, write_index
from cardioseg.data.splits import kfold_split
from cardioseg.data.synthetic import Cine, Phantom, PhantomConfig, make_cine, make_phantom

__all__ = [
    "CaseRecord",
    "Cine",
    "Phantom",
    "PhantomConfig",
    "discover",
    "kfold_split",
    "load_case",
    "make_cine",
    "make_phantom",
    "read_acdc",
    "read_folder_pairs",
    "read_index",
    "read_mnms",
    "read_mnms2",
    "read_mscmr",
    "write_index",
]
