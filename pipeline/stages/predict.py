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


def main(cfg: Config, args: argparse.Namespace) -> None:
    import torch

    from pipeline.models.checkpoints import load_model
    from pipeline.models.inference import (
        device_for,
        inference_checkpoints,
        inference_models,
        predict_images,
    )

    layout, params = cfg.layout, cfg.predict
    fold_models = cfg.fold_models()
    test_models = inference_checkpoints(cfg) if "test" in params.splits else {}

    def predict_family(family: str) -> None:
        """Write the predictions of one family for every split in `predict.splits`."""
        device = device_for(params.device)
        with torch.inference_mode():
            if "oof" in params.splits:
                train = read_json(layout.coco_train)
                category_ids = {c["name"]: c["id"] for c in train["categories"]}
                by_id = {im["id"]: im for im in train["images"]}
                oof = {}
                if family in fold_models:
                    folds = coco_ids_by_fold(train, layout.folds_csv)
                    for k, path in zip(cfg.folds_trained, fold_models[family]):
                        model = load_model(path, device, cfg.model)
                        images = [by_id[i] for i in folds[k]]
                        desc = f"{family} oof {k}"
                        oof.update(predict_images([model], images, cfg, category_ids, device, desc))
                else:
                    names = [c["name"] for c in train["categories"]]
                    models = inference_models(cfg, family, [], names, device)
                    images = list(by_id.values())
                    desc = f"{family} oof"
                    oof = predict_images(models, images, cfg, category_ids, device, desc)
                save_predictions(layout.predictions(family, "oof"), oof)
            if "test" in params.splits:
                test = read_json(layout.coco_test)  # its categories are the training ones
                if not test["images"]:
                    raise CellpipeError(f"no test images in {layout.coco_test}")
                category_ids = {c["name"]: c["id"] for c in test["categories"]}
                names = [c["name"] for c in test["categories"]]
                models = inference_models(cfg, family, test_models.get(family, []), names, device)
                preds = predict_images(
                    models, test["images"], cfg, category_ids, device, f"{family} test"
                )
                save_predictions(layout.predictions(family, "test"), preds)

    for family in cfg.families:
        inputs: list[Path] = []  # what predict reads for one family and the chosen splits
        if "oof" in params.splits:
            inputs += [layout.coco_train, layout.folds_csv, *cfg.image_folders("train")]
            inputs += fold_models.get(family, [])
        if "test" in params.splits:
            inputs += [layout.coco_test, *cfg.image_folders("test")]
            if family in fold_models:
                inputs += params.checkpoints or fold_models[family]
        run_stage(
            f"predict_{family}",
            cfg,
            inputs=list(dict.fromkeys(inputs)),
            outputs=[layout.predictions(family, s) for s in params.splits],
            params={"predict": params, "scale": cfg.model.scale, "model": cfg.model.block(family)},
            body=lambda family=family: predict_family(family),
            force=args.force,
        )
    write_json(
        layout.predictions_index,
        {f: {s: str(layout.predictions(f, s)) for s in params.splits} for f in cfg.families},
    )
