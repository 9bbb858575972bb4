"""Stage `predict`: per family of `predict.models` (default `model.family`), out-of-fold
predictions (each fold's model on its held-out images) and test predictions (every model, every
TTA view, merged), stored box-cropped in work/predictions/<family>/{oof,test}.npz.

A family without weights (`cellpipe models`) predicts every training image as out-of-fold. Test
models are `predict.checkpoints` (any families) or every fold's best model. work/predictions/
index.json lists what was written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json, write_json
from pipeline.core.predictions import save_predictions
from pipeline.core.splits import coco_ids_by_fold
from pipeline.runner import run_stage


def inference_checkpoints(cfg: Config) -> dict[str, list[Path]]:
    """Test models per trained family: `predict.checkpoints` (by the family each records),
    else every fold's best model."""
    from pipeline.models import family_class
    from pipeline.models.checkpoints import family_of, read_checkpoint

    trained = [f for f in cfg.families if family_class(f).trainable]
    if not cfg.predict.checkpoints:
        return {f: [cfg.layout.finetune_model(f, k) for k in cfg.folds_trained] for f in trained}
    out: dict[str, list[Path]] = {f: [] for f in trained}
    for path in cfg.predict.checkpoints:
        family, _ = family_of(read_checkpoint(path))
        if family not in out:
            raise CellpipeError(f"predict.checkpoints: {path} is {family}, not in {trained}")
        out[family].append(path)
    for family, paths in out.items():
        if not paths:
            raise CellpipeError(f"predict.checkpoints has no {family} model")
    return out


def inputs(cfg: Config, family: str) -> list[Path]:
    """What `predict` reads for one family and the chosen splits."""
    from pipeline.models import family_class

    layout = cfg.layout
    trainable = family_class(family).trainable
    files: list[Path] = []
    if "oof" in cfg.predict.splits:
        files += [layout.coco_train, layout.folds_csv, *cfg.image_folders("train")]
        if trainable:
            files += [layout.finetune_model(family, k) for k in cfg.folds_trained]
    if "test" in cfg.predict.splits:
        files += [layout.coco_test, *cfg.image_folders("test")]
        if trainable:
            files += cfg.predict.checkpoints or [
                layout.finetune_model(family, k) for k in cfg.folds_trained
            ]
    return list(dict.fromkeys(files))


def predict_family(cfg: Config, family: str, checkpoints: list[Path]) -> None:
    """Write the predictions of one family for every split in `predict.splits`."""
    import torch

    from pipeline.models import family_class
    from pipeline.models.checkpoints import load_model
    from pipeline.models.inference import device_for, inference_models, predict_images

    layout, params = cfg.layout, cfg.predict
    device = device_for(params.device)
    trainable = family_class(family).trainable

    with torch.inference_mode():
        if "oof" in params.splits:
            train = read_json(layout.coco_train)
            category_ids = {c["name"]: c["id"] for c in train["categories"]}
            by_id = {im["id"]: im for im in train["images"]}
            oof = {}
            if trainable:
                folds = coco_ids_by_fold(train, layout.folds_csv)
                for k in cfg.folds_trained:
                    model = load_model(layout.finetune_model(family, k), device, cfg.model)
                    images = [by_id[i] for i in folds[k]]
                    desc = f"{family} oof {k}"
                    oof.update(predict_images([model], images, cfg, category_ids, device, desc))
            else:
                names = [c["name"] for c in train["categories"]]
                models = inference_models(cfg, family, [], names, device)
                images = list(by_id.values())
                oof = predict_images(models, images, cfg, category_ids, device, f"{family} oof")
            save_predictions(layout.predictions(family, "oof"), oof)
        if "test" in params.splits:
            test = read_json(layout.coco_test)  # its categories are the training ones
            if not test["images"]:
                raise CellpipeError(f"no test images in {layout.coco_test}")
            category_ids = {c["name"]: c["id"] for c in test["categories"]}
            names = [c["name"] for c in test["categories"]]
            models = inference_models(cfg, family, checkpoints, names, device)
            preds = predict_images(
                models, test["images"], cfg, category_ids, device, f"{family} test"
            )
            save_predictions(layout.predictions(family, "test"), preds)


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout = cfg.layout
    checkpoints = inference_checkpoints(cfg) if "test" in cfg.predict.splits else {}
    for family in cfg.families:
        run_stage(
            f"predict_{family}",
            cfg,
            inputs=inputs(cfg, family),
            outputs=[layout.predictions(family, s) for s in cfg.predict.splits],
            params={
                "predict": cfg.predict,
                "scale": cfg.model.scale,
                "model": cfg.model.block(family),
            },
            body=lambda family=family: predict_family(cfg, family, checkpoints.get(family, [])),
            force=args.force,
        )
    write_json(
        layout.predictions_index,
        {f: {s: str(layout.predictions(f, s)) for s in cfg.predict.splits} for f in cfg.families},
    )
