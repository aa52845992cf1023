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

__all__ = [
    "CaseRecord",
    "discover",
    "kfold_split",
    "load_case",
    "read_acdc",
    "read_folder_pairs",
    "read_index",
    "read_mnms",
    "read_mnms2",
    "read_mscmr",
    "write_index",
]
