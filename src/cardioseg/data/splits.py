"""Patient-level, seeded k-fold splits (phases of one subject never straddle folds)."""

from __future__ import annotations

import numpy as np


def kfold_split(
    subjects: list[str], k: int = 5, seed: int = 12345, strata: dict[str, str] | None = None
) -> list[tuple[list[str], list[str]]]:
    """Split unique subjects into ``k`` folds.

    Args:
        subjects: Subject identifiers (duplicates are collapsed).
        k: Number of folds (>= 2).
        seed: Random seed; the same seed always yields the same folds.
        strata: Optional subject -> group; each group is spread evenly over the folds.

    Returns:
        List of ``(train_subjects, val_subjects)`` per fold.

    Example:
        >>> folds = kfold_split([f"p{i}" for i in range(10)], k=5)
        >>> [len(v) for _, v in folds]
        [2, 2, 2, 2, 2]
    """
    uniq = sorted(set(subjects))
    if k < 2 or k > len(uniq):
        raise ValueError(f"k must be in [2, {len(uniq)}], got {k}")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for s in uniq:
        groups.setdefault(strata.get(s, "") if strata else "", []).append(s)
    folds: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for g in sorted(groups):
        members = list(groups[g])
        rng.shuffle(members)
        for i, s in enumerate(members):
            folds[(i + offset) % k].append(s)
        offset += len(members)
    return [
        (sorted(s for j, f in enumerate(folds) if j != i for s in f), sorted(folds[i]))
        for i in range(k)
    ]
