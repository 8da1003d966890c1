"""Cross-validation folds: stratified by the study label, grouped by patient.

All of a patient's studies are in one fold, so a model is never validated on a patient
it was trained on. The assignment is saved with the bundle so it can be audited and
reused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def assign_folds(
    keys: Sequence[str],
    labels: Sequence[bool],
    groups: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, int]:
    """Fold index (0..n_folds-1) of each key (a Series Instance UID).

    Raises
    ------
    ValueError
        If there are fewer patients than folds, or a class has fewer patients than folds.
    """
    if not len(keys) == len(labels) == len(groups):
        raise ValueError("keys, labels and groups must have the same length")
    y = np.asarray(labels, dtype=int)
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} patients cannot fill {n_folds} folds; use fewer folds")
    for cls, name in ((1, "positive"), (0, "negative")):
        cls_groups = {g for g, label in zip(groups, y, strict=True) if label == cls}
        if len(cls_groups) < n_folds:
            raise ValueError(
                f"only {len(cls_groups)} patients have {name} studies; each of the "
                f"{n_folds} folds needs at least one: add data or use fewer folds"
            )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        for i in val_idx:
            fold_of[keys[i]] = fold
    return fold_of


def save_folds(path: Path, fold_of: dict[str, int], groups: dict[str, str]) -> None:
    """Write the assignment as JSON: series UID → fold, with the patient group."""
    data = {k: {"fold": v, "patient": groups[k]} for k, v in sorted(fold_of.items())}
    path.write_text(json.dumps(data, indent=1))


def load_folds(path: Path) -> dict[str, int]:
    """Read an assignment written by :func:`save_folds`."""
    return {k: int(v["fold"]) for k, v in json.loads(path.read_text()).items()}
