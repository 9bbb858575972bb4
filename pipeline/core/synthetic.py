"""The embedded synthetic dataset: Sartorius' exact file layout with phase-contrast-like images.

Every image is drawn from its own random stream, keyed by (seed, split, index), so the same config
writes byte-identical files and changing one count leaves the other images unchanged. Cells are
star-shaped polygons (an ellipse whose radius is modulated by a few harmonics, plus thin processes
for astrocytes) placed one by one; a later cell only takes free pixels, so crowded cells touch
without overlapping. A few masks then grow two pixels into their neighbours, giving the small
ground-truth overlaps the real train.csv has. Images are a mid-grey background with uneven light,
darker cell bodies, bright halos around and between cells, faint neurites, debris and grain.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import draw, measure
from tqdm import tqdm

from pipeline.core import rle
from pipeline.core.coco import LIVECELL_LINES
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_dir, write_json, write_png, write_text, write_tiff

if TYPE_CHECKING:
    from pipeline.config import SyntheticConfig

TRAIN_CSV_COLUMNS = (
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
)
MARKER_FILE = ".cellpipe-prepare.json"  # written into every data folder cellpipe generates
POLYGON_VERTICES = 48
MIN_AREA = 30  # pixels; smaller remnants of occluded cells are dropped
VISIBLE_FRACTION = 0.55  # a placed cell must keep this much of its shape free of earlier cells
OVERLAP_IMAGE_FRACTION = 0.5  # share of images given a few overlapping ground-truth masks
OVERLAP_INSTANCE_FRACTION = 0.02  # share of instances in such an image that grow into neighbours


@dataclasses.dataclass(frozen=True)
class Morphology:
    """How one cell type looks: counts, shape, placement and rendering."""

    density: tuple[float, float]  # cells per 100,000 pixels (min, max), drawn per image
    major: tuple[float, float]  # semi-major axis in pixels (min, max)
    aspect: tuple[float, float]  # major / minor axis (min, max)
    irregularity: float  # amplitude of the radius harmonics (0 = perfect ellipse)
    processes: int  # maximum number of thin spikes (astrocyte processes)
    clustered: float  # share of cells placed in clumps around a few centres
    cluster_spread: float  # standard deviation of a clump in pixels
    body: float  # mean body brightness relative to the background (phase contrast: darker)
    halo: float  # brightness of the halo just outside the cell edge
    halo_sigma: float  # halo width in pixels
    neurites: float  # share of cells with a faint neurite drawn from a pole (not in the mask)


MORPHOLOGIES = {
    # dense, touching, elongated (real: ~200-700 per 520x704 image, ~220 px each)
    "shsy5y": Morphology((60, 90), (9, 16), (2.0, 3.6), 0.08, 0, 0.8, 40, -14, 30, 1.6, 0.5),
    # large, irregular, sparse (real: ~30-80 per image, ~900 px each)
    "astro": Morphology((7, 12), (14, 24), (1.0, 1.8), 0.22, 3, 0.2, 60, -8, 14, 2.6, 0.0),
    # small and round (real: ~30-200 per image, ~240 px each)
    "cort": Morphology((14, 33), (6.5, 10), (1.0, 1.3), 0.04, 0, 0.3, 30, -18, 40, 1.8, 0.0),
}
CELL_TYPES = tuple(MORPHOLOGIES)
SAMPLE_PREFIXES = {"shsy5y": "shsy5y[diff]", "astro": "astros[hippo]", "cort": "cort[pre-treat]"}
# LIVECell lines drawn with the nearest competition morphology, rescaled in density and size.
LIVECELL_MORPHOLOGIES = {
    "A172": ("astro", 1.6, 0.8),
    "BT474": ("cort", 2.2, 1.1),
    "BV2": ("cort", 2.5, 0.8),
    "Huh7": ("astro", 1.4, 0.9),
    "MCF7": ("cort", 2.0, 1.2),
    "SHSY5Y": ("shsy5y", 0.8, 1.0),
    "SkBr3": ("cort", 1.8, 1.0),
    "SKOV3": ("astro", 1.5, 0.7),
}
SPLIT_KEYS = {"train": 0, "test": 1, "semi": 2, "livecell": 3, "meta": 4}


@dataclasses.dataclass(frozen=True)
class SyntheticCells:
    """An image's cells: a label image without overlaps, plus the few masks that overlap."""

    labels: np.ndarray  # int32 (H, W), labels 1..n
    overlapping: dict[int, np.ndarray]  # label -> full bool mask that reaches into neighbours

    def masks(self) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        """(bounding-box slices, bool crop) of every instance in label order."""
        for label, box in enumerate(ndimage.find_objects(self.labels), start=1):
            mask = self.overlapping.get(label)
            if mask is not None:
                box = ndimage.find_objects(mask.astype(np.uint8))[0]
                yield box, mask[box]
            else:
                yield box, self.labels[box] == label

    def rle_texts(self) -> list[str]:
        """Row-major Kaggle RLE of every instance in label order."""
        texts = rle.encode_labels(self.labels)
        for label, mask in self.overlapping.items():
            texts[label] = rle.encode(mask)
        return [texts[label] for label in sorted(texts)]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The independent random stream of one image (or of the metadata, split='meta')."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_KEYS[split], index)))


def cell_polygons(
    rng: np.random.Generator, centres: np.ndarray, morph: Morphology, angles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Outline vertices (rows, cols), each (n, POLYGON_VERTICES), of cells at `centres` (n, 2)."""
    n = len(centres)
    theta = np.linspace(0, 2 * np.pi, POLYGON_VERTICES, endpoint=False)
    major = rng.uniform(*morph.major, size=(n, 1))
    minor = major / rng.uniform(*morph.aspect, size=(n, 1))
    radius = major * minor / np.hypot(minor * np.cos(theta), major * np.sin(theta))
    harmonics = np.arange(2, 6)
    amplitude = morph.irregularity * rng.uniform(0, 1, size=(n, len(harmonics))) / harmonics
    phase = rng.uniform(0, 2 * np.pi, size=(n, len(harmonics)))
    wobble = np.cos(harmonics[None, :, None] * theta + phase[:, :, None])
    radius = radius * (1 + np.einsum("nk,nkv->nv", amplitude, wobble))
    if morph.processes:
        spike_at = rng.uniform(0, 2 * np.pi, size=(n, morph.processes, 1))
        spike_len = rng.uniform(0.4, 1.3, size=(n, morph.processes, 1))
        spike_len *= rng.random((n, morph.processes, 1)) < 0.7
        gap = np.angle(np.exp(1j * (theta - spike_at)))
        radius = radius * (1 + (spike_len * np.exp(-((gap / 0.12) ** 2))).sum(axis=1))
    radius = np.maximum(radius, 1.0)
    turn = theta + angles[:, None]
    return centres[:, :1] + radius * np.sin(turn), centres[:, 1:] + radius * np.cos(turn)


def cell_centres(
    rng: np.random.Generator, shape: tuple[int, int], morph: Morphology, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """`n` candidate centres (n, 2) and orientations: clumps around a few centres plus uniform."""
    size = np.array(shape, dtype=float)
    clumped = rng.random(n) < morph.clustered
    n_clumps = max(1, round(n * morph.clustered / 25))
    clump_at = rng.uniform(0, 1, size=(n_clumps, 2)) * size
    clump_angle = rng.uniform(0, np.pi, size=n_clumps)
    which = rng.integers(0, n_clumps, size=n)
    centres = np.where(
        clumped[:, None],
        clump_at[which] + rng.normal(0, morph.cluster_spread, size=(n, 2)),
        rng.uniform(0, 1, size=(n, 2)) * size,
    )
    angles = np.where(
        clumped, clump_angle[which] + rng.normal(0, 0.5, size=n), rng.uniform(0, np.pi, size=n)
    )
    return np.clip(centres, 0, size - 1), angles


def place_cells(
    rng: np.random.Generator, shape: tuple[int, int], morph: Morphology, count: int
) -> np.ndarray:
    """Label image of up to `count` touching, non-overlapping, connected cells."""
    candidates = 3 * count
    centres, angles = cell_centres(rng, shape, morph, candidates)
    rows, cols = cell_polygons(rng, centres, morph, angles)
    labels = np.zeros(shape, np.int32)
    placed = 0
    for i in range(candidates):
        if labels[int(centres[i, 0]), int(centres[i, 1])]:
            continue  # never bury a cell's centre under another cell
        rr, cc = draw.polygon(rows[i], cols[i], shape)
        free = labels[rr, cc] == 0
        if free.sum() < max(MIN_AREA, VISIBLE_FRACTION * rr.size):
            continue
        placed += 1
        labels[rr[free], cc[free]] = placed
        if placed == count:
            break
    return largest_parts(labels)


def largest_parts(labels: np.ndarray) -> np.ndarray:
    """Keep each label's largest 4-connected part, drop parts under MIN_AREA, relabel 1..n."""
    parts = measure.label(labels, background=0, connectivity=1)
    sizes = np.bincount(parts.ravel())
    owner = np.zeros(len(sizes), np.int64)
    owner[parts.ravel()] = labels.ravel()
    order = np.lexsort((-sizes[1:], owner[1:])) + 1  # by owner, biggest part first
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    keep = order[first & (sizes[order] >= MIN_AREA)]
    new_label = np.zeros(len(sizes), np.int32)
    new_label[np.sort(keep)] = np.arange(1, len(keep) + 1)
    return new_label[parts]


def grow_into_neighbours(
    rng: np.random.Generator, labels: np.ndarray, fraction: float
) -> dict[int, np.ndarray]:
    """Masks of a few touching cells grown two pixels into their neighbours (overlapping GT)."""
    n = int(labels.max())
    if n < 2 or fraction <= 0:
        return {}
    touching = np.zeros(n + 1, bool)
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        contact = (a != b) & (a > 0) & (b > 0)
        touching[a[contact]] = True
        touching[b[contact]] = True
    choices = np.flatnonzero(touching)
    if not len(choices):
        return {}
    k = min(len(choices), max(1, round(fraction * n)))
    grown = {}
    for label in sorted(rng.choice(choices, size=k, replace=False).tolist()):
        own = labels == label
        grown[label] = ndimage.binary_dilation(own, iterations=2, mask=labels > 0)
    return grown


def draw_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    morph: Morphology,
    overlap_fraction: float = 0.0,
) -> SyntheticCells:
    """The cells of one image; their number follows the morphology's density and the image area."""
    area = shape[0] * shape[1] / 1e5
    count = max(1, round(rng.uniform(*morph.density) * area))
    labels = place_cells(rng, shape, morph, count)
    return SyntheticCells(labels, grow_into_neighbours(rng, labels, overlap_fraction))


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Uneven light: a few slow random waves, about one cycle across the image, in [-1, 1]."""
    rows = 2 * np.pi * np.linspace(0, 1, shape[0])
    cols = 2 * np.pi * np.linspace(0, 1, shape[1])
    field = np.zeros(shape, np.float32)
    for fy, fx, phase in rng.uniform((-1.2, -1.2, 0), (1.2, 1.2, 2 * np.pi), size=(3, 3)):
        a, b = fy * rows + phase, fx * cols  # cos(a + b) as outer products: separable, fast
        field += np.outer(np.cos(a), np.cos(b)) - np.outer(np.sin(a), np.sin(b))
    return field / 3


def _noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.standard_normal(size=shape, dtype=np.float32)


def render_phase_contrast(
    rng: np.random.Generator, labels: np.ndarray, morph: Morphology
) -> np.ndarray:
    """A uint8 phase-contrast-like image of a label image: dark bodies, bright halos, grain."""
    shape = labels.shape
    cells = (labels > 0).astype(np.float32)
    body = rng.normal(morph.body, abs(morph.body) / 3, size=int(labels.max()) + 1)
    body = body.astype(np.float32)
    body[0] = 0
    soft = ndimage.gaussian_filter(cells, morph.halo_sigma)
    halo = np.clip(soft - cells, 0, None)  # bright ring just outside each cell
    rim = np.clip(cells - soft, 0, None)  # darker rim just inside
    borders = np.zeros(shape, np.float32)  # bright seams where two cells touch
    for axis in (0, 1):
        a = labels
        b = np.roll(labels, 1, axis=axis)
        borders += (a != b) & (a > 0) & (b > 0)
    extras = np.zeros(shape, np.float32)
    if morph.neurites:
        _draw_neurites(rng, labels, morph.neurites, extras)
    n_debris = rng.integers(5, 25)
    rr, cc = rng.integers(0, shape[0], n_debris), rng.integers(0, shape[1], n_debris)
    extras[rr, cc] += rng.uniform(-6, 6, n_debris)  # small specks, blurred into blobs below
    image = (
        128
        + 14 * _illumination(rng, shape)
        + body[labels]
        + cells * 5 * ndimage.gaussian_filter(_noise(rng, shape), 1.5)  # texture
        + morph.halo * 2.5 * halo
        - abs(morph.body) * 1.5 * rim
        + ndimage.gaussian_filter(borders * morph.halo * 0.6 + extras * 6, 0.8)
        + 4 * ndimage.gaussian_filter(_noise(rng, shape), 0.8)  # grain
        + 3 * _noise(rng, shape)
    )
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _draw_neurites(
    rng: np.random.Generator, labels: np.ndarray, share: float, out: np.ndarray
) -> None:
    """Add faint thin lines from the poles of a share of cells into `out` (image only)."""
    for box in ndimage.find_objects(labels):
        if rng.random() >= share:
            continue
        r0, c0 = (box[0].start + box[0].stop) / 2, (box[1].start + box[1].stop) / 2
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(12, 35)
        r1, c1 = r0 + length * np.sin(angle), c0 + length * np.cos(angle)
        rr, cc, val = draw.line_aa(int(r0), int(c0), int(r1), int(c1))
        inside = (rr >= 0) & (rr < labels.shape[0]) & (cc >= 0) & (cc < labels.shape[1])
        out[rr[inside], cc[inside]] += 2.5 * val[inside]


def mask_polygon(box: tuple[slice, slice], crop: np.ndarray) -> list[float]:
    """COCO polygon [x1, y1, x2, y2, ...] (pixel-edge coordinates) of a connected mask crop."""
    padded = np.pad(crop, 1).astype(np.float32)
    contour = max(measure.find_contours(padded, 0.5), key=len)[:-1]  # closed: last == first
    step = np.diff(contour, axis=0, append=contour[:1])
    before = np.roll(step, 1, axis=0)
    turn = before[:, 0] * step[:, 1] - before[:, 1] * step[:, 0] != 0  # 2-D cross product
    contour = contour[turn]  # drop vertices in the middle of straight runs (lossless)
    ys = contour[:, 0] - 1 + box[0].start + 0.5
    xs = contour[:, 1] - 1 + box[1].start + 0.5
    return np.round(np.stack([xs, ys], axis=1), 2).ravel().tolist()


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct 12-character lowercase hex ids."""
    ids: list[str] = []
    while len(ids) < n:
        candidate = rng.bytes(6).hex()
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _sample_id(rng: np.random.Generator, cell_type: str) -> str:
    """A sample id in the competition's style, e.g. `shsy5y[diff]_E10-4_Vessel-714_Ph_3`."""
    well = f"{'ABCDEFGH'[rng.integers(8)]}{rng.integers(1, 13)}-{rng.integers(1, 5)}"
    vessel, ph = rng.integers(100, 1000), rng.integers(1, 5)
    return f"{SAMPLE_PREFIXES[cell_type]}_{well}_Vessel-{vessel}_Ph_{ph}"


def _elapsed_label(hours: int, minutes: int = 0) -> str:
    """Time stamp of image names: `00d16h00m`."""
    return f"{hours // 24:02d}d{hours % 24:02d}h{minutes:02d}m"


def synthetic_image(
    rng: np.random.Generator, shape: tuple[int, int], morph: Morphology, overlap: float = 0.0
) -> tuple[SyntheticCells, np.ndarray]:
    """One image's cells and its rendered uint8 picture."""
    cells = draw_cells(rng, shape, morph, overlap)
    return cells, render_phase_contrast(rng, cells.labels, morph)


def write_competition(root: Path, cfg: SyntheticConfig, progress: bool = True) -> None:
    """Write train/, train.csv, test/, sample_submission.csv, train_semi_supervised/ and the truth
    of the test images, test_truth.csv (train.csv's columns: the held-out score)."""
    shape = (cfg.height, cfg.width)
    meta = image_rng(cfg.seed, "meta", 0)
    jobs = [(t, j) for t in CELL_TYPES for j in range(cfg.train_images_per_type)]
    ids = _hex_ids(meta, len(jobs) + cfg.test_images)
    samples = {t: [_sample_id(meta, t) for _ in range(cfg.samples_per_type)] for t in CELL_TYPES}
    dates = {
        sample: f"2019-{meta.integers(1, 13):02d}-{meta.integers(1, 29):02d}"
        for names in samples.values()
        for sample in names
    }
    rows = []
    for index, (cell_type, j) in enumerate(tqdm(jobs, desc="train", disable=not progress)):
        rng = image_rng(cfg.seed, "train", index)
        overlap = OVERLAP_INSTANCE_FRACTION if rng.random() < OVERLAP_IMAGE_FRACTION else 0.0
        cells, image = synthetic_image(rng, shape, MORPHOLOGIES[cell_type], overlap)
        write_png(root / "train" / f"{ids[index]}.png", image)
        sample_id = samples[cell_type][j % cfg.samples_per_type]
        hours, minutes = int(rng.integers(1, 48)), 30 * int(rng.integers(0, 2))
        metadata = (
            cfg.width,
            cfg.height,
            cell_type,
            f"{hours:02d}h{minutes:02d}m00s",
            dates[sample_id],
            sample_id,
            f"{hours // 24} days {hours % 24:02d}:{minutes:02d}:00",
        )
        rows += [(ids[index], text, *metadata) for text in cells.rle_texts()]
    train_csv = pd.DataFrame(rows, columns=list(TRAIN_CSV_COLUMNS))
    write_text(root / "train.csv", train_csv.to_csv(index=False))

    test_ids = ids[len(jobs) :]
    truth_rows = []
    for index, image_id in enumerate(tqdm(test_ids, desc="test", disable=not progress)):
        cell_type = CELL_TYPES[index % len(CELL_TYPES)]
        cells, image = synthetic_image(
            image_rng(cfg.seed, "test", index), shape, MORPHOLOGIES[cell_type]
        )
        write_png(root / "test" / f"{image_id}.png", image)
        metadata = (cfg.width, cfg.height, cell_type, "", "", "test", "")
        truth_rows += [(image_id, text, *metadata) for text in cells.rle_texts()]
    truth = pd.DataFrame(truth_rows, columns=list(TRAIN_CSV_COLUMNS))
    write_text(root / "test_truth.csv", truth.to_csv(index=False))  # the held-out truth
    submission = pd.DataFrame({"id": test_ids, "predicted": "1 1"})
    write_text(root / "sample_submission.csv", submission.to_csv(index=False))

    semi_dir = root / "train_semi_supervised"
    semi_dir.mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(cfg.semi_supervised_images), desc="semi", disable=not progress):
        cell_type = CELL_TYPES[index % len(CELL_TYPES)]
        rng = image_rng(cfg.seed, "semi", index)
        name = f"{_sample_id(rng, cell_type)}_{_elapsed_label(int(rng.integers(0, 72)))}.png"
        _, image = synthetic_image(rng, shape, MORPHOLOGIES[cell_type])
        write_png(semi_dir / name, image)


def livecell_morphology(line: str) -> Morphology:
    """A LIVECell line drawn as the nearest competition cell type, rescaled."""
    base, density_scale, size_scale = LIVECELL_MORPHOLOGIES[line]
    morph = MORPHOLOGIES[base]
    return dataclasses.replace(
        morph,
        density=(morph.density[0] * density_scale, morph.density[1] * density_scale),
        major=(morph.major[0] * size_scale, morph.major[1] * size_scale),
    )


def write_livecell(root: Path, cfg: SyntheticConfig, progress: bool = True) -> None:
    """Write LIVECell_dataset_2021/: polygon COCO JSON per split and .tif images."""
    shape = (cfg.height, cfg.width)
    livecell = root / "LIVECell_dataset_2021"
    splits = {
        "train": cfg.livecell_train_images,
        "val": cfg.livecell_val_images,
        "test": cfg.livecell_test_images,
    }
    index = 0
    annotation_id = 1
    for split, count in splits.items():
        folder = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        images, annotations = [], []
        for _ in tqdm(range(count), desc=f"LIVECell {split}", disable=not progress):
            line = LIVECELL_LINES[index % len(LIVECELL_LINES)]
            rng = image_rng(cfg.seed, "livecell", index)
            index += 1
            well = f"{'ABCD'[rng.integers(4)]}{rng.integers(1, 13)}_{rng.integers(1, 4)}"
            time = _elapsed_label(4 * int(rng.integers(0, 19)))
            file_name = f"{line}_Phase_{well}_{time}_{rng.integers(1, 5)}.tif"
            overlap = OVERLAP_INSTANCE_FRACTION if rng.random() < OVERLAP_IMAGE_FRACTION else 0.0
            cells, image = synthetic_image(rng, shape, livecell_morphology(line), overlap)
            write_tiff(livecell / "images" / folder / file_name, image)
            images.append(
                {"id": index, "file_name": file_name, "width": shape[1], "height": shape[0]}
            )
            for box, crop in cells.masks():
                annotations.append(
                    {
                        "id": annotation_id,
                        "image_id": index,
                        "category_id": 1,
                        "segmentation": [mask_polygon(box, crop)],
                        "area": float(crop.sum()),
                        "bbox": [
                            float(box[1].start),
                            float(box[0].start),
                            float(box[1].stop - box[1].start),
                            float(box[0].stop - box[0].start),
                        ],
                        "iscrowd": 0,
                    }
                )
                annotation_id += 1
        coco = {
            "info": {"description": f"cellpipe synthetic LIVECell {split}", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
        }
        write_json(livecell / "annotations" / "LIVECell" / f"livecell_coco_{split}.json", coco)


def write_dataset(root: Path, cfg: SyntheticConfig, progress: bool = True) -> None:
    """Write the whole synthetic competition folder under `root`."""
    write_competition(root, cfg, progress)
    write_livecell(root, cfg, progress)


def write_data_folder(data: Path, cfg: SyntheticConfig) -> None:
    """Write the synthetic competition folder at `data` atomically, with its marker (the settings
    it was made with); a folder holding data cellpipe did not generate is never replaced."""
    if data.exists() and any(data.iterdir()) and not (data / MARKER_FILE).exists():
        raise CellpipeError(
            f"{data} holds data cellpipe did not generate: not overwriting it "
            "(choose another data_dir, or prepare.source=kaggle to download there)"
        )
    with atomic_dir(data) as tmp:
        write_dataset(tmp, cfg)
        (tmp / MARKER_FILE).write_text(json.dumps(cfg.model_dump(), indent=1))
