"""K-fold splits stratified by a class column and grouped by a sample column; folds.csv.

folds.csv has one row per training image: `id` (the image file's stem), `fold`, the class and
group columns and the instance count. It is written and read here only.
"""

from __future__ import annotations

from pathlib import Path

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


def coco_folds(
    coco: dict, n_folds: int, seed: int, stratify_by: str, group_by: str
) -> pd.DataFrame:
    """folds.csv's table of a COCO file's images: id (file stem), fold, class, group and
    instance count; without a class or group field, one class and each image its own group."""
    images = pd.DataFrame(coco["images"]).rename(columns={"id": "id_coco"})
    images["id"] = [Path(name).stem for name in images["file_name"]]
    for column in (stratify_by, group_by):
        if column not in images.columns:
            images[column] = "cell" if column == stratify_by else images["id"]
    per_image = pd.Series([a["image_id"] for a in coco["annotations"]], dtype="int64")
    images["instances"] = images["id_coco"].map(per_image.value_counts()).fillna(0).astype(int)
    images["fold"] = assign_folds(images, n_folds, seed, stratify_by, group_by)
    return images[["id", "fold", stratify_by, group_by, "instances"]]


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


def write_folds(path: Path | str, table: pd.DataFrame) -> None:
    """Write folds.csv (`id`, `fold`, then any other columns), atomically."""
    from pipeline.core.fileio import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def read_folds(path: Path | str) -> dict[str, int]:
    """Image id (file stem) -> fold, from folds.csv; one-line errors for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing {path} (run `cellpipe folds` first)")
    table = pd.read_csv(path, dtype={"id": str})
    if not {"id", "fold"} <= set(table.columns):
        raise CellpipeError(f"{path}: expected columns id and fold")
    return dict(zip(table["id"], table["fold"].astype(int)))


def images_in_folds(path: Path | str, folds: list[int]) -> set[str]:
    """Ids of the images in the given folds of folds.csv."""
    fold_of = read_folds(path)
    ids = {image_id for image_id, fold in fold_of.items() if fold in folds}
    if not ids:
        known = sorted(set(fold_of.values()))
        raise CellpipeError(f"no image in folds {folds} ({path} has folds {known})")
    return ids


def coco_ids_by_fold(coco: dict, path: Path | str) -> dict[int, list[int]]:
    """COCO image ids of every fold of folds.csv (an image's id in folds.csv is its file stem)."""
    fold_of = read_folds(path)
    out: dict[int, list[int]] = {k: [] for k in sorted(set(fold_of.values()))}
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        if stem not in fold_of:
            raise CellpipeError(f"{path} has no fold for image {stem} (rerun `cellpipe folds`)")
        out[fold_of[stem]].append(int(image["id"]))
    return out
