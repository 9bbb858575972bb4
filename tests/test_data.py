"""Training data: crop decoding, records, augmentation consistency, sampling, degenerate input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from skimage import draw

from pipeline.config import AugmentConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import write_png
from pipeline.models import image_to_tensor
from pipeline.models.rcnn import maskrcnn_targets
from pipeline.training.augment import window_start
from pipeline.training.data import CocoImages, CocoInstances, TrainSampler, collate
from pipeline.training.records import ClassMapping, decode_crop, label_image, load_records

NO_AUGMENT = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness=0, contrast=0, scale_range=(1, 1))


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int) -> dict:
    rle = encode(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "bbox": mask_utils.toBbox(rle).tolist(),
        "area": int(mask_utils.area(rle)),
        "iscrowd": 0,
    }


def cell_masks(rng: np.random.Generator, shape: tuple[int, int], n: int) -> list[np.ndarray]:
    """n non-overlapping ellipses (later cells only take free pixels)."""
    taken = np.zeros(shape, bool)
    masks = []
    for _ in range(n * 3):
        if len(masks) == n:
            break
        r, c = rng.integers(6, shape[0] - 6), rng.integers(6, shape[1] - 6)
        rr, cc = draw.ellipse(
            r, c, rng.integers(3, 7), rng.integers(3, 9), shape, rng.uniform(0, 3)
        )
        mask = np.zeros(shape, bool)
        mask[rr, cc] = True
        mask &= ~taken
        if mask.sum() >= 12:
            masks.append(mask)
            taken |= mask
    return masks


def tiny_coco(
    root: Path,
    n_images: int = 6,
    shape: tuple[int, int] = (96, 128),
    cells: int = 8,
    seed: int = 0,
    categories: tuple[str, ...] = ("astro", "cort"),
    level_coded: bool = False,
) -> dict:
    """Images of dark ellipses on a light background, written under root/train, and their COCO.

    level_coded: instance k of an image is drawn with grey level 20 * (k + 1) on black, so a
    transformed image shows exactly where each transformed mask must be.
    """
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        masks = cell_masks(rng, shape, cells)
        category = 1 + i % len(categories)
        if level_coded:
            image = np.zeros(shape, np.uint8)
            for k, m in enumerate(masks):
                image[m] = 20 * (k + 1)
        else:
            image = rng.normal(180, 8, shape)
            for m in masks:
                image[m] = rng.normal(70, 8, int(m.sum()))
            image = np.clip(image, 0, 255).astype(np.uint8)
        write_png(root / "train" / f"img{i}.png", image)
        images.append(
            {"id": i + 1, "file_name": f"train/img{i}.png", "height": shape[0], "width": shape[1]}
        )
        for m in masks:
            annotations.append(annotation(m, len(annotations) + 1, i + 1, category))
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(categories)]
    return {"images": images, "annotations": annotations, "categories": cats}


def one_image_records(root: Path, masks: list[np.ndarray]) -> list:
    """The records of one flat grey image, root/x.png, whose instances ("cell") are `masks`."""
    height, width = masks[0].shape
    coco = {
        "images": [{"id": 1, "file_name": "x.png", "height": height, "width": width}],
        "annotations": [annotation(m, k + 1, 1, 1) for k, m in enumerate(masks)],
        "categories": [{"id": 1, "name": "cell"}],
    }
    write_png(root / "x.png", np.full((height, width), 128, np.uint8))
    records, _ = load_records(coco, root, ClassMapping.from_categories(coco["categories"]))
    return records


def write_coco(path: Path, coco: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return path


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_decode_crop_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    full = mask_utils.decode(encode(mask)).astype(bool)
    for _ in range(10):
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        np.testing.assert_array_equal(
            decode_crop(encode(mask), h, w, (x0, y0, x1, y1)), full[y0:y1, x0:x1]
        )
    polygon = [[2.0, 2.0, w - 1.5, 3.0, w / 2, h - 1.0]]  # polygons and uncompressed RLE too
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w)))
    np.testing.assert_array_equal(decode_crop(polygon, h, w, (0, 0, w, h)), reference)
    counts = {"size": [h, w], "counts": [0, h * w]}
    assert decode_crop(counts, h, w, (0, 0, w, h)).all()


def test_label_image_later_annotation_wins(tmp_path):
    a = np.zeros((10, 12), bool)
    a[2:6, 2:8] = True
    b = np.zeros((10, 12), bool)
    b[4:9, 6:10] = True
    coco = {
        "images": [{"id": 1, "file_name": "x.png", "height": 10, "width": 12}],
        "annotations": [annotation(a, 1, 1, 1), annotation(b, 2, 1, 1)],
        "categories": [{"id": 1, "name": "cell"}],
    }
    write_png(tmp_path / "x.png", np.zeros((10, 12), np.uint8))
    (record,), _ = load_records(coco, tmp_path, ClassMapping.from_categories(coco["categories"]))
    expected = np.where(b, 2, np.where(a, 1, 0))
    np.testing.assert_array_equal(label_image(record), expected)


# --- classes and records -----------------------------------------------------------------------


def test_class_mapping():
    cats = [{"id": 1, "name": "SHSY5Y"}, {"id": 2, "name": "A172"}, {"id": 3, "name": "BV2"}]
    same = ClassMapping.from_categories(cats)
    assert same.classes == ["A172", "BV2", "SHSY5Y"]
    assert same.label_of == {1: 3, 2: 1, 3: 2}
    one = ClassMapping.from_categories(cats, default_class="cell")
    assert one.classes == ["cell"] and set(one.label_of.values()) == {1}
    mapped = ClassMapping.from_categories(cats, ["SHSY5Y", "A172"], {"SHSY5Y": "shsy5y"}, "astro")
    assert mapped.classes == ["astro", "shsy5y"] and mapped.label_of == {1: 2, 2: 1}
    with pytest.raises(CellpipeError, match="not in the COCO file"):
        ClassMapping.from_categories(cats, ["HeLa"])


def test_records_drop_degenerate_input_with_counts(tmp_path):
    coco = tiny_coco(tmp_path, n_images=3)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 2]  # image 2: none
    empty = np.zeros((96, 128), bool)
    coco["annotations"].append(annotation(empty, 999, 1, 1))  # zero-area mask
    mapping = ClassMapping.from_categories(coco["categories"])
    records, notes = load_records(coco, tmp_path, mapping)
    assert [r.path.name for r in records] == ["img0.png", "img2.png"]
    assert notes == {"empty annotations": 1, "images without instances": 1}
    val, _ = load_records(coco, tmp_path, mapping, keep_empty=True)  # validation keeps image 2
    assert [len(r.labels) for r in val] == [8, 0, 8]
    (tmp_path / "train" / "img2.png").unlink()
    with pytest.raises(CellpipeError, match="1 image files are missing"):
        load_records(coco, tmp_path, mapping)
    only_cort = ClassMapping.from_categories(coco["categories"], ["cort"])
    with pytest.raises(CellpipeError, match="no image with instances"):
        load_records(coco, tmp_path, only_cort, image_ids=[1])


# --- samples -----------------------------------------------------------------------------------


def test_unaugmented_sample_is_the_image_and_its_masks(tmp_path):
    coco = tiny_coco(tmp_path, n_images=1)
    mapping = ClassMapping.from_categories(coco["categories"])
    records, _ = load_records(coco, tmp_path, mapping)
    image, target = CocoInstances(records, maskrcnn_targets)[(0, (0, 0))]
    assert image.shape == (1, 96, 128) and image.dtype == torch.float32
    truth = np.stack([mask_utils.decode(a["segmentation"]) for a in coco["annotations"]])
    np.testing.assert_array_equal(target["masks"].numpy(), truth)
    bbox = np.array([a["bbox"] for a in coco["annotations"]])
    np.testing.assert_array_equal(
        target["boxes"].numpy(), np.c_[bbox[:, :2], bbox[:, :2] + bbox[:, 2:]]
    )
    assert target["labels"].tolist() == [1] * len(truth)


def test_scale_resamples_masks_at_pixel_centres(tmp_path):
    coco = tiny_coco(tmp_path, n_images=1)
    records, _ = load_records(coco, tmp_path, ClassMapping.from_categories(coco["categories"]))
    image, target = CocoInstances(records, maskrcnn_targets, scale=0.5)[(0, (0, 0))]
    assert image.shape == (1, 48, 64)
    truth = np.stack([mask_utils.decode(a["segmentation"]) for a in coco["annotations"]])
    small = truth[:, 1::2, 1::2]
    np.testing.assert_array_equal(target["masks"].numpy(), small[small.any(axis=(1, 2))])


def test_diameter_scales_each_image_to_that_median_cell_diameter(tmp_path):
    masks = [np.zeros((60, 80), bool) for _ in range(3)]
    for mask, (r, c, radius) in zip(masks, [(15, 15, 8), (40, 30, 10), (25, 60, 12)]):
        mask[draw.disk((r, c), radius, shape=mask.shape)] = True
    records = one_image_records(tmp_path, masks)
    middle = 2 * np.sqrt(masks[1].sum() / np.pi)  # the median disc's diameter, about 20 px
    assert records[0].diameter == pytest.approx(middle)
    image, target = CocoInstances(records, maskrcnn_targets, scale=0.5, diameter=30)[(0, (0, 0))]
    factor = 0.5 * 30 / middle
    assert image.shape[1:] == (round(60 * factor), round(80 * factor))
    areas = np.sort(target["masks"].numpy().sum(axis=(1, 2)))
    assert 2 * np.sqrt(areas[1] / np.pi) == pytest.approx(15, abs=1)


@pytest.mark.parametrize("seed", range(8))
def test_augmented_masks_boxes_and_image_agree(tmp_path, seed):
    coco = tiny_coco(tmp_path, n_images=1, level_coded=True, seed=seed)
    records, _ = load_records(coco, tmp_path, ClassMapping.from_categories(coco["categories"]))
    augment = NO_AUGMENT.model_copy(
        update={"hflip": 0.5, "vflip": 0.5, "rot90": 0.7, "crop": (64, 80)}
    )
    image, target = CocoInstances(records, maskrcnn_targets, augment=augment)[(0, (seed, 1))]
    masks = target["masks"].numpy().astype(bool)
    assert image.shape[1:] in ((64, 80), (80, 64)) and masks.shape[1:] == image.shape[1:]
    # the image was drawn with level 20 (k + 1) inside instance k: rebuild it from the masks
    levels = np.rint(image[0].numpy() * 255).astype(int)
    rebuilt = np.zeros_like(levels)
    for m in masks:
        values = np.unique(levels[m])
        assert len(values) == 1 and values[0] > 0  # one instance's pixels, all of them
        rebuilt[m] = values[0]
    np.testing.assert_array_equal(rebuilt, levels)
    for m, box in zip(masks, target["boxes"].numpy().astype(int)):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_photometric_and_scale_jitter_stay_in_range(tmp_path):
    coco = tiny_coco(tmp_path, n_images=2)
    records, _ = load_records(coco, tmp_path, ClassMapping.from_categories(coco["categories"]))
    data = CocoInstances(
        records, maskrcnn_targets, augment=AugmentConfig(brightness=0.3, contrast=0.5)
    )
    plain = CocoInstances(records, maskrcnn_targets)
    sizes, shifts = set(), []
    for k in range(6):
        image, target = data[(k % 2, (3, k))]
        assert image.min() >= 0 and image.max() <= 1
        assert min(image.shape[1:]) >= 0.8 * 96 - 1 and max(image.shape[1:]) <= 1.25 * 128 + 1
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
        sizes.add(tuple(image.shape[1:]))
        shifts.append(abs(image.mean() - plain[(k % 2, (0, 0))][0].mean()))
    assert len(sizes) > 1  # the scale was jittered
    assert max(shifts) > 0.05  # and the grey levels


def test_invert_turns_grey_levels_over_with_its_probability(tmp_path):
    coco = tiny_coco(tmp_path, n_images=1)
    records, _ = load_records(coco, tmp_path, ClassMapping.from_categories(coco["categories"]))
    plain = CocoInstances(records, maskrcnn_targets, augment=NO_AUGMENT)[(0, (0, 0))][0]

    def samples(probability: float) -> list[torch.Tensor]:
        augment = NO_AUGMENT.model_copy(update={"invert": probability})
        data = CocoInstances(records, maskrcnn_targets, augment=augment)
        return [data[(0, (0, k))][0] for k in range(12)]

    assert all(torch.allclose(image, 1 - plain) for image in samples(1.0))
    half = samples(0.5)
    inverted = [torch.allclose(image, 1 - plain) for image in half]
    kept = [torch.equal(image, plain) for image in half]
    assert any(inverted) and any(kept) and all(a != b for a, b in zip(inverted, kept))


def test_one_pixel_mask_and_crop_without_instances(tmp_path):
    mask = np.zeros((40, 40), bool)
    mask[30, 35] = True
    records = one_image_records(tmp_path, [mask])
    _, target = CocoInstances(records, maskrcnn_targets)[(0, (0, 0))]
    assert target["boxes"].tolist() == [[35.0, 30.0, 36.0, 31.0]]
    cropped = CocoInstances(
        records, maskrcnn_targets, augment=NO_AUGMENT.model_copy(update={"crop": (8, 8)})
    )
    empty = [cropped[(0, (0, k))][1] for k in range(10)]
    assert any(t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 8, 8) for t in empty)


def test_crop_on_instance_places_every_crop_over_an_instance(tmp_path):
    mask = np.zeros((200, 300), bool)
    mask[180:186, 5:12] = True  # one small cell in a corner of a large image
    records = one_image_records(tmp_path, [mask])

    def cells_per_crop(probability: float) -> list[int]:
        augment = NO_AUGMENT.model_copy(
            update={"crop": (32, 40), "crop_on_instance": probability, "scale_range": (0.8, 1.25)}
        )
        data = CocoInstances(records, maskrcnn_targets, augment=augment)
        return [len(data[(0, (1, k))][1]["boxes"]) for k in range(20)]

    assert all(n == 1 for n in cells_per_crop(1.0))
    assert cells_per_crop(0.0).count(0) >= 15  # placed anywhere, crops mostly miss it


@pytest.mark.parametrize("point", [0.0, 0.4, 17.0, 63.9, 99.0])
def test_window_start_contains_the_point(point):
    rng = np.random.default_rng(0)
    starts = {window_start(100, 30, rng, point) for _ in range(200)}
    assert all(0 <= s <= 70 and s <= int(point) < s + 30 for s in starts)
    assert len(starts) == min(int(point), 70) - max(0, int(point) - 29) + 1  # every such start


def test_unreadable_image_is_skipped_with_a_warning(tmp_path):
    coco = tiny_coco(tmp_path, n_images=2)
    records, _ = load_records(coco, tmp_path, ClassMapping.from_categories(coco["categories"]))
    (tmp_path / "train" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = CocoInstances(records, maskrcnn_targets)
    with pytest.warns(UserWarning, match="img1.png"):
        images, targets, skipped = collate([data[(0, (0, 0))], data[(1, (0, 1))]])
    assert (len(images), len(targets), skipped) == (1, 1, 1)
    with pytest.warns(UserWarning, match="img1.png"):
        assert CocoImages(records)[1] is None
    image, truth = CocoImages(records)[0]
    assert image.shape == (1, 96, 128) and truth.max() == 8


def test_sampler_streams_split_and_resume_exactly():
    full = TrainSampler(5, seed=3)
    stream = [next(it) for it in [iter(full)] for _ in range(23)]
    assert sorted(i for i, _ in stream[:5]) == list(range(5))  # every epoch is a permutation
    assert [i for i, _ in stream[:5]] != [i for i, _ in stream[5:10]]
    ranks = [iter(TrainSampler(5, 3, rank=r, world_size=2)) for r in range(2)]
    interleaved = [next(ranks[p % 2]) for p in range(23)]
    assert interleaved == stream
    resumed = iter(TrainSampler(5, 3, start=14))
    assert [next(resumed) for _ in range(9)] == stream[14:]


def test_image_to_tensor_formats():
    grey16 = np.full((4, 5), 65535, np.uint16)
    assert image_to_tensor(grey16).shape == (1, 4, 5) and image_to_tensor(grey16).max() == 1
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 2] = 255
    tensor = image_to_tensor(rgba)
    assert tensor.shape == (3, 4, 5) and tensor[2].min() == 1 and tensor[:2].max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_to_tensor(np.full((2, 2), 2.0)).max() == 1
