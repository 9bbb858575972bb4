"""Stage `pseudo`: pseudo-labels for the unlabelled images (`train_semi_supervised/`).

The test-time models predict them as they predict the test images: each trained family's fold
models as one (`CellModel.combine`), every `predict.tta` view, the families `tune` chose merged
with their tuned weights. The tuned thresholds and overlap removal keep the instances they would
keep in a submission (the confident ones), each with its predicted class; the result is a COCO
file, work/coco/pseudo.json. `cellpipe finetune finetune.pseudo=true` then trains every fold on
its training images plus all of these, and validates on the same held-out images as before, so
the out-of-fold scores measure the gain. (The labelling models saw every training image, the
validation ones included: what leaks into a fold is their knowledge of other images, as in the
competition's pseudo-labelling solutions.)
"""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core.coco import unlabelled_coco
from pipeline.core.ensemble import merge_families
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json, write_json
from pipeline.core.postprocess import load_tuned, pseudo_coco
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout, params, fold_models = cfg.layout, cfg.predict, cfg.fold_models()

    def pseudo_label() -> None:
        """Write `layout.coco_pseudo`: the kept instances of every unlabelled image."""
        import torch

        from pipeline.models.inference import device_for, inference_models, predict_images

        if not layout.semi_images.is_dir():
            raise CellpipeError(f"no unlabelled images: missing {layout.semi_images}")
        categories = read_json(layout.coco_train)["categories"]
        coco = unlabelled_coco(layout.semi_images, layout.data, categories)
        category_ids = {c["name"]: c["id"] for c in categories}
        tuned = load_tuned(layout.thresholds)
        used = [f for f, w in tuned.weights.items() if w > 0]
        device = device_for(params.device)
        preds = {}
        names = [c["name"] for c in categories]
        with torch.inference_mode():
            for family in used:
                folds = fold_models.get(family, [])
                models = inference_models(cfg, family, folds, names, device)
                preds[family] = predict_images(
                    models, coco["images"], cfg, category_ids, device, f"pseudo {family}"
                )
        chosen = merge_families(preds, tuned.weights, params.merge_iou, params.min_votes)
        pseudo = pseudo_coco(coco, chosen, tuned.thresholds)
        write_json(layout.coco_pseudo, pseudo)
        print(
            f"pseudo: {len(pseudo['annotations'])} instances in {len(pseudo['images'])} of "
            f"{len(coco['images'])} unlabelled images ({', '.join(used)}) -> {layout.coco_pseudo}"
        )

    inputs = [layout.coco_train, layout.thresholds, *cfg.image_folders("semi")]
    inputs += [path for paths in fold_models.values() for path in paths]
    run_stage(
        "pseudo",
        cfg,
        inputs=inputs,
        outputs=[layout.coco_pseudo],
        params={"predict": params, "scale": cfg.model.scale, "model": cfg.model},
        body=pseudo_label,
        force=args.force,
    )
