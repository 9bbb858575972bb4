"""COCO JSON for every supported dataset format, and back to the Kaggle CSV.

The COCO form used across cellpipe: images {id, file_name (relative to the data folder), width,
height, and any metadata columns}, categories {id from 1, name}, annotations {id, image_id,
category_id, segmentation: compressed COCO RLE {size, counts}, bbox [x, y, w, h], area,
iscrowd 0}. Sources: the Kaggle CSV (`train.csv`), LIVECell's polygon COCO, folders of label
images (GlaS, cellpose style) and folders of one PNG per instance (DSB 2018 style).

Kaggle runs become COCO RLE without full-size masks: column-major runs already are COCO runs, and
row-major runs are transposed inside the instance's bounding box. pycocotools compresses them and
computes bbox and area.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from pipeline.core import rle
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import image_shape, read_image, read_json

CSV_COLUMNS = ("id", "annotation", "width", "height")
LABEL_SUFFIXES = ("_anno", "_label", "_labels", "_mask", "_masks", "_seg")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
LIVECELL_LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")


@numba.njit(cache=True, nogil=True)
def _row_to_column_runs(starts, lengths, height, width):  # pragma: no cover - compiled
    """Column-major runs (0-based) of one instance given by row-major runs, via its bounding box."""
    y0, y1, x0, x1 = height, -1, width, -1
    for r in range(starts.shape[0]):
        first, last = starts[r], starts[r] + lengths[r] - 1
        ya, yb = first // width, last // width
        y0, y1 = min(y0, ya), max(y1, yb)
        if ya == yb:
            x0, x1 = min(x0, first % width), max(x1, last % width)
        else:
            x0, x1 = 0, width - 1
    ch, cw = y1 - y0 + 1, x1 - x0 + 1
    crop = np.zeros((ch, cw), np.bool_)
    for r in range(starts.shape[0]):
        for p in range(starts[r], starts[r] + lengths[r]):
            crop[p // width - y0, p % width - x0] = True
    n_pixels = lengths.sum()  # at most one run per pixel (a one-row box has exactly that)
    out_starts = np.empty(n_pixels, np.int64)
    out_lengths = np.empty(n_pixels, np.int64)
    n = 0
    inside = False
    for cx in range(cw):
        for cy in range(ch):
            index = (x0 + cx) * height + y0 + cy
            if crop[cy, cx]:
                if inside and out_starts[n - 1] + out_lengths[n - 1] == index:
                    out_lengths[n - 1] += 1
                else:
                    out_starts[n] = index
                    out_lengths[n] = 1
                    n += 1
                inside = True
            else:
                inside = False
    return out_starts[:n], out_lengths[:n]


def _coco_counts(starts: np.ndarray, lengths: np.ndarray, size: int) -> list[int]:
    """Uncompressed COCO counts (background first) from sorted column-major runs."""
    counts = np.empty(2 * len(starts) + 1, np.int64)
    ends = starts + lengths
    counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1::2] = lengths
    counts[-1] = size - (ends[-1] if len(ends) else 0)
    # pycocotools ends at the last foreground run when it touches the image end
    return counts[:-1].tolist() if len(ends) and counts[-1] == 0 else counts.tolist()


def runs_to_coco(runs: rle.Runs, shape: tuple[int, int], order: rle.Order) -> list[dict]:
    """Compressed COCO RLE (pycocotools' {size, counts: bytes}) of each instance in `runs`."""
    height, width = int(shape[0]), int(shape[1])
    objs = []
    for i in range(len(runs.offsets) - 1):
        starts = runs.starts[runs.offsets[i] : runs.offsets[i + 1]]
        lengths = runs.lengths[runs.offsets[i] : runs.offsets[i + 1]]
        if order == "row" and len(starts):
            starts, lengths = _row_to_column_runs(starts, lengths, height, width)
        counts = _coco_counts(starts, lengths, height * width)
        objs.append({"size": [height, width], "counts": counts})
    return mask_utils.frPyObjects(objs, height, width) if objs else []


def coco_to_kaggle(segmentation: dict | list, shape: tuple[int, int], order: rle.Order) -> str:
    """Kaggle RLE text of one COCO segmentation (compressed/uncompressed RLE or polygons)."""
    height, width = int(shape[0]), int(shape[1])
    if isinstance(segmentation, list):  # polygons
        segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation.get("counts"), str):
        segmentation = {**segmentation, "counts": segmentation["counts"].encode("ascii")}
    return rle.encode(mask_utils.decode(segmentation), order)


def _annotations(
    rles: Sequence[dict], image_id: int, category_ids: Sequence[int], first_id: int
) -> list[dict]:
    """COCO annotations of compressed RLEs (bytes counts, as pycocotools wants them for area and
    bbox); the JSON gets the counts as text."""
    # pycocotools 2.0.11 with numpy 2 overflows in area() for lists of 256+ RLEs: go by chunks
    chunks = [list(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    areas = [a for chunk in chunks for a in mask_utils.area(chunk)]
    boxes = mask_utils.toBbox(list(rles)) if rles else []
    return [
        {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(category_ids[k]),
            "segmentation": {"size": obj["size"], "counts": obj["counts"].decode("ascii")},
            "area": int(areas[k]),
            "bbox": [float(v) for v in boxes[k]],
            "iscrowd": 0,
        }
        for k, obj in enumerate(rles)
    ]


def _categories(names: Iterable[str]) -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "cell"} for i, n in enumerate(sorted(names))]


def read_kaggle_csv(path: Path | str) -> pd.DataFrame:
    """Read a competition CSV (train.csv layout), checking its columns and sizes."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing file: {path}")
    try:
        df = pd.read_csv(path, dtype={"id": str, "annotation": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CellpipeError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise CellpipeError(f"{path}: missing column(s) {', '.join(missing)}")
    for col in ("width", "height"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values <= 0) | (values != values.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CellpipeError(f"{path}: row {row + 2}: {col} {df[col].iloc[row]!r} is not a size")
        df[col] = values.astype(np.int64)
    sizes = df.groupby("id")[["width", "height"]].nunique()
    if (sizes > 1).any(axis=None):
        raise CellpipeError(
            f"{path}: image {sizes.index[(sizes > 1).any(axis=1)][0]} has rows "
            "with different width/height"
        )
    return df


def csv_to_coco(
    df: pd.DataFrame,
    image_folder: str = "train",
    order: rle.Order = "row",
    image_suffix: str = ".png",
    category_column: str = "cell_type",
) -> dict[str, Any]:
    """COCO dict of a competition CSV: one image per id, one annotation per non-empty row."""
    metadata = [c for c in df.columns if c not in CSV_COLUMNS]
    names = sorted(df[category_column].unique()) if category_column in df.columns else ["cell"]
    category_of = {n: i + 1 for i, n in enumerate(names)}
    images, annotations = [], []
    for image_id, (name, rows) in enumerate(df.groupby("id", sort=False), start=1):
        first = rows.iloc[0]
        height, width = int(first["height"]), int(first["width"])
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_folder}/{name}{image_suffix}",
                "height": height,
                "width": width,
                **{c: first[c].item() if hasattr(first[c], "item") else first[c] for c in metadata},
            }
        )
        texts = rows["annotation"].tolist()
        kept = [t for t in texts if t.strip()]
        try:
            runs = rle.parse_runs(kept, (height, width))
        except CellpipeError as e:
            raise CellpipeError(f"image {name}: {e}") from None
        category = category_of[first[category_column]] if category_column in df.columns else 1
        annotations += _annotations(
            runs_to_coco(runs, (height, width), order),
            image_id,
            [category] * len(kept),
            len(annotations) + 1,
        )
    return {"images": images, "annotations": annotations, "categories": _categories(names)}


def coco_to_csv(
    coco: dict[str, Any], order: rle.Order = "row", category_column: str = "cell_type"
) -> pd.DataFrame:
    """Competition CSV rows (id = image file stem) of a COCO dict; images without masks get none."""
    category_names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[Any, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    rows = []
    for image in coco["images"]:
        shape = (image["height"], image["width"])
        extra = {k: v for k, v in image.items() if k not in ("id", "file_name", "height", "width")}
        for ann in by_image.get(image["id"], []):
            rows.append(
                {
                    "id": Path(image["file_name"]).stem,
                    "annotation": coco_to_kaggle(ann["segmentation"], shape, order),
                    "width": image["width"],
                    "height": image["height"],
                    **(
                        {category_column: category_names[ann["category_id"]]}
                        if category_column not in extra
                        else {}
                    ),
                    **extra,
                }
            )
    return pd.DataFrame(rows, columns=_csv_columns(rows))


def _csv_columns(rows: list[dict]) -> list[str]:
    columns = list(CSV_COLUMNS)
    for row in rows[:1]:
        columns += [k for k in row if k not in columns]
    return columns


def check_image_sizes(coco: dict[str, Any], root: Path) -> None:
    """Raise CellpipeError unless every image file exists with the size its entry declares."""
    for image in coco["images"]:
        path = root / image["file_name"]
        actual = image_shape(path)
        declared = (image["height"], image["width"])
        if actual != declared:
            raise CellpipeError(
                f"{path}: image is {actual[0]}x{actual[1]} (HxW) but the annotations say "
                f"{declared[0]}x{declared[1]}"
            )


def livecell_line(file_name: str) -> str:
    """LIVECell cell line of an image file name (`A172_Phase_A7_1_00d00h00m_1.tif` -> `A172`)."""
    prefix = Path(file_name).name.split("_", 1)[0]
    return prefix if prefix in LIVECELL_LINES else "cell"


def _find_livecell_image(image_dir: Path, file_name: str) -> Path:
    flat = image_dir / file_name
    return flat if flat.is_file() else image_dir / livecell_line(file_name) / file_name


def read_livecell(json_path: Path | str, image_dir: Path, data_root: Path) -> dict[str, Any]:
    """LIVECell polygon COCO -> cellpipe COCO: compressed RLE, one category per cell line.

    `image_dir` holds the .tif files (flat or in per-line folders); file names become relative to
    `data_root`. Annotations stored as a dict keyed by id (as some releases do) are accepted.
    """
    raw = read_json(json_path)
    anns = raw.get("annotations", [])
    anns = list(anns.values()) if isinstance(anns, dict) else anns
    images_raw = raw.get("images", [])
    lines = sorted({livecell_line(im["file_name"]) for im in images_raw})
    category_of = {n: i + 1 for i, n in enumerate(lines)}
    by_image: dict[Any, list[dict]] = {}
    for ann in anns:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    for new_id, im in enumerate(images_raw, start=1):
        height, width = int(im["height"]), int(im["width"])
        path = _find_livecell_image(image_dir, im["file_name"])
        line = livecell_line(im["file_name"])
        images.append(
            {
                "id": new_id,
                "file_name": str(path.relative_to(data_root)),
                "height": height,
                "width": width,
                "cell_line": line,
            }
        )
        rles = []
        for ann in by_image.get(im["id"], []):
            seg = ann["segmentation"]
            if isinstance(seg, list):
                polygons = [p for p in seg if len(p) >= 6]
                if not polygons:
                    continue
                obj = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
            elif isinstance(seg.get("counts"), list):
                obj = mask_utils.frPyObjects(seg, height, width)
            else:
                obj = {**seg, "counts": seg["counts"].encode("ascii")}
            if mask_utils.area(obj) == 0:
                continue
            rles.append(obj)
        annotations += _annotations(
            rles, new_id, [category_of[line]] * len(rles), len(annotations) + 1
        )
    return {"images": images, "annotations": annotations, "categories": _categories(lines)}


def labels_to_annotations(
    labels: np.ndarray,
    image_id: int,
    first_id: int,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO annotations (ids from `first_id`) of a label image's instances in label order, of
    category 1 or of `category_ids` (one per label)."""
    labels = labels if labels.ndim == 2 else labels[..., 0]
    texts = rle.encode_labels(labels.astype(np.int64, copy=False))
    runs = rle.parse_runs(list(texts.values()), labels.shape)
    categories = [1] * len(texts) if category_ids is None else list(category_ids)
    return _annotations(runs_to_coco(runs, labels.shape, "row"), image_id, categories, first_id)


def unlabelled_coco(folder: Path, data_root: Path, categories: list[dict]) -> dict[str, Any]:
    """COCO of a folder of images without annotations (test images, unlabelled ones), with the
    given categories (the training ones); a one-line error for a folder without images."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CellpipeError(f"no images in {folder}")
    images = []
    for image_id, path in enumerate(files, start=1):
        height, width = image_shape(path)
        images.append(
            {
                "id": image_id,
                "file_name": str(path.relative_to(data_root)),
                "height": height,
                "width": width,
            }
        )
    return {"images": images, "annotations": [], "categories": categories}


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(LABEL_SUFFIXES)
    )


def label_images_to_coco(images_dir: Path, labels_dir: Path, data_root: Path) -> dict[str, Any]:
    """Folders of images and label images (GlaS `x_anno.bmp`, cellpose `x_masks.png`) -> COCO.

    A label image has the image's stem, optionally with a suffix from LABEL_SUFFIXES; the two
    folders may be the same. Every label > 0 becomes one instance of category "cell".
    """
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise CellpipeError(f"missing folder: {folder}")
    label_files = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    images, annotations = [], []
    for image_id, path in enumerate(_image_files(images_dir), start=1):
        candidates = [label_files.get(path.stem + s) for s in LABEL_SUFFIXES]
        if labels_dir != images_dir:
            candidates.insert(0, label_files.get(path.stem))
        label_path = next((c for c in candidates if c is not None), None)
        if label_path is None:
            raise CellpipeError(f"no label image for {path} in {labels_dir}")
        labels = read_image(label_path)
        height, width = image_shape(path)
        if labels.shape[:2] != (height, width):
            raise CellpipeError(
                f"{label_path}: label image is {labels.shape[0]}x{labels.shape[1]} but "
                f"{path.name} is {height}x{width}"
            )
        images.append(
            {
                "id": image_id,
                "file_name": str(path.relative_to(data_root)),
                "height": height,
                "width": width,
            }
        )
        annotations += labels_to_annotations(labels, image_id, len(annotations) + 1)
    if not images:
        raise CellpipeError(f"no images in {images_dir}")
    return {"images": images, "annotations": annotations, "categories": _categories(["cell"])}


def instance_masks_to_coco(root: Path, data_root: Path) -> dict[str, Any]:
    """DSB 2018 layout (`<id>/images/<id>.png`, one `<id>/masks/*.png` per instance) -> COCO."""
    if not root.is_dir():
        raise CellpipeError(f"missing folder: {root}")
    images, annotations = [], []
    samples = sorted(p for p in root.iterdir() if (p / "images").is_dir())
    for image_id, sample in enumerate(samples, start=1):
        files = _image_files(sample / "images")
        if not files:
            raise CellpipeError(f"no image in {sample / 'images'}")
        height, width = image_shape(files[0])
        images.append(
            {
                "id": image_id,
                "file_name": str(files[0].relative_to(data_root)),
                "height": height,
                "width": width,
            }
        )
        mask_files = _image_files(sample / "masks") if (sample / "masks").is_dir() else []
        for mask_path in mask_files:
            mask = read_image(mask_path)
            if mask.shape[:2] != (height, width):
                raise CellpipeError(
                    f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but "
                    f"the image is {height}x{width}"
                )
            annotations += labels_to_annotations(
                (mask if mask.ndim == 2 else mask[..., 0]) > 0, image_id, len(annotations) + 1
            )
    if not images:
        raise CellpipeError(f"no <id>/images/<id>.png samples in {root}")
    return {"images": images, "annotations": annotations, "categories": _categories(["cell"])}
