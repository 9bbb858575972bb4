"""K-fold splits stratified by a class column and grouped by a sample column."""

from __future__ import annotations

import pandas as pd

from pipeline.core.errors import CellpipeError


def assign_folds(
    images: pd.DataFrame, n_folds: int, seed: int, stratify_by: str, group_by: str
) -> pd.Series:
    """Fold (0..n_folds-1) of each image row: no group in two folds, classes spread evenly.

    Deterministic for a given seed and row order (scikit-learn's StratifiedGroupKFold).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    for column in (stratify_by, group_by):
        if column not in images.columns:
            raise CellpipeError(f"cannot split folds: no column {column!r} in the image table")
    n_groups = images[group_by].nunique()
    if n_folds < 2 or n_folds > n_groups:
        raise CellpipeError(
            f"cannot split {n_groups} {group_by} groups into {n_folds} folds (need 2..{n_groups})"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = pd.Series(-1, index=images.index, name="fold")
    for fold, (_, val) in enumerate(
        splitter.split(images, images[stratify_by], groups=images[group_by])
    ):
        folds.iloc[val] = fold
    return folds


def fold_table(folds: pd.DataFrame, stratify_by: str) -> pd.DataFrame:
    """Images and instances per fold and class, with totals, for printing."""
    images = folds.pivot_table(
        index="fold", columns=stratify_by, values="id", aggfunc="count", fill_value=0
    )
    instances = folds.pivot_table(
        index="fold", columns=stratify_by, values="instances", aggfunc="sum", fill_value=0
    )
    table = pd.concat({"images": images, "instances": instances}, axis=1)
    table.loc["total"] = table.sum()
    return table
