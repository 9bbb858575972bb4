"""Stage `predict`: out-of-fold predictions (each fold's model on its held-out images) and test
predictions (every model, every TTA view, merged), stored box-cropped (pipeline.core.predictions).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.stage import run_stage


def test_models(cfg: Config) -> list[Path]:
    """The checkpoints used on the test images: `predict.checkpoints`, or every fold's."""
    return list(cfg.predict.checkpoints) or [cfg.layout.finetune_model(k) for k in fold_list(cfg)]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_checked(data: Path, image: dict):
    """An image file, checked against the size its COCO entry declares."""
    from pipeline.core.fileio import read_image

    pixels = read_image(data / image["file_name"])
    declared = (image["height"], image["width"])
    if pixels.shape[:2] != declared:
        raise CellpipeError(
            f"{data / image['file_name']} is {pixels.shape[0]}x{pixels.shape[1]} but was "
            f"{declared[0]}x{declared[1]} when converted (rerun `cellpipe convert`)"
        )
    return pixels


def predict_images(models, images, cfg: Config, category_ids, device, progress: str):
    """Merged predictions of every (model, TTA view) for each COCO image entry."""
    import torch
    from tqdm import tqdm

    from pipeline.core.ensemble import FLIPS, flip_predictions, merge_predictions
    from pipeline.data import image_to_tensor
    from pipeline.modeling import predict_instances

    params = cfg.predict
    out = {}
    with tqdm(total=len(images), desc=progress, unit="img") as bar:  # closed before errors
        for batch in _batches(images, params.batch_size):
            tensors = [image_to_tensor(read_checked(cfg.data, im)).to(device) for im in batch]
            views: list[list] = [[] for _ in batch]
            for model, classes in models:
                to_category = torch.tensor([0] + [category_ids.get(c, 0) for c in classes])
                for view in params.tta:
                    h, v = FLIPS[view]
                    dims = [d for d, flip in ((-1, h), (-2, v)) if flip]
                    flipped = [t.flip(dims) if dims else t for t in tensors]
                    preds = predict_instances(
                        model, flipped, cfg.model.scale
                    )  # float32: exact boxes
                    for k, pred in enumerate(preds):
                        pred.labels = to_category[pred.labels].numpy().astype("int32")
                        views[k].append(flip_predictions(pred, h, v))
            for im, image_views in zip(batch, views):
                stem = Path(im["file_name"]).stem
                out[stem] = merge_predictions(image_views, params.merge_iou, params.min_votes)
            bar.update(len(batch))
    return out


def predict(cfg: Config) -> None:
    """Write the predictions of every split in `cfg.predict.splits`."""
    import torch

    from pipeline.core.fileio import read_json
    from pipeline.core.predictions import save_predictions
    from pipeline.modeling import load_model
    from pipeline.train import fold_image_ids

    layout, params = cfg.layout, cfg.predict
    device = torch.device(
        "cuda"
        if params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    with torch.inference_mode():
        if "oof" in params.splits:
            train = read_json(layout.coco_train)
            category_ids = {c["name"]: c["id"] for c in train["categories"]}
            by_id = {im["id"]: im for im in train["images"]}
            folds = fold_image_ids(train, layout.folds_csv)
            oof = {}
            for k in fold_list(cfg):
                model = load_model(layout.finetune_model(k), device, expected=cfg.model)
                images = [by_id[i] for i in folds[k]]
                oof.update(predict_images([model], images, cfg, category_ids, device, f"oof {k}"))
            save_predictions(layout.predictions("oof"), oof)
        if "test" in params.splits:
            test = read_json(layout.coco_test)  # its categories are the training ones
            if not test["images"]:
                raise CellpipeError(f"no test images in {layout.coco_test}")
            category_ids = {c["name"]: c["id"] for c in test["categories"]}
            models = [load_model(p, device, expected=cfg.model) for p in test_models(cfg)]
            preds = predict_images(models, test["images"], cfg, category_ids, device, "test")
            save_predictions(layout.predictions("test"), preds)


def fold_list(cfg: Config) -> list[int]:
    """The folds that have a fine-tuned model."""
    return list(cfg.finetune.folds) or list(range(cfg.folds.n_folds))


def inputs(cfg: Config) -> list[Path]:
    """What `predict` reads for the chosen splits."""
    layout = cfg.layout
    files: list[Path] = []
    if "oof" in cfg.predict.splits:
        files += [layout.coco_train, layout.folds_csv]
        files += [layout.finetune_model(k) for k in fold_list(cfg)]
    if "test" in cfg.predict.splits:
        files += [layout.coco_test, *test_models(cfg)]
    return list(dict.fromkeys(files))


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout = cfg.layout
    run_stage(
        "predict",
        cfg,
        inputs=inputs(cfg),
        outputs=[layout.predictions(s) for s in cfg.predict.splits],
        params=cfg.predict,
        body=lambda: predict(cfg),
        force=args.force,
    )
