"""What the training stages share: data selection, model, initial weights, validation, one run.

`pretrain` trains on LIVECell (work/coco/livecell_train.json, validated on livecell_val.json);
`finetune` trains one model per fold of folds.csv on the competition data, validated on the
fold's held-out images, starting from the pretrained model. Validation scores MAP-IoU with the
project's scorer: detections above `val_score_thresh`, painted best score first into a label
image without overlaps, against the ground-truth label image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import Config, ModelConfig, Section, TrainConfig, dump_yaml
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json, write_json, write_text
from pipeline.core.metrics import map_iou
from pipeline.core.postprocess import ClassThresholds, Thresholds, postprocess_image
from pipeline.data import ClassMapping, CocoImages, CocoInstances, load_records, notes_line
from pipeline.engine import Context, distributed_context, fit
from pipeline.modeling import build_model, load_weights, predict_instances, read_checkpoint
from pipeline.stage import run_stage


class RunParams(Section):
    """What a training run depends on: a checkpoint with other params is not resumed."""

    model: ModelConfig
    train: dict[str, Any]
    fold: int | None = None


def init_weights(cfg: Config, train: TrainConfig) -> Path | None:
    """The file the run starts from (None: random weights)."""
    if train.init == "random":
        return None
    return cfg.layout.pretrain_model if train.init == "pretrain" else Path(train.init)


def _first(batch: list) -> Any:
    return batch[0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: CocoImages,
    scale: float,
    score_thresh: float,
    mask_thresh: float,
    device: torch.device,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean MAP-IoU of the model (eval mode) over the dataset's images."""
    loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=_first)
    thresholds = Thresholds(default=ClassThresholds(score_thresh, mask_thresh, min_area=1))
    scores = []
    for item in loader:
        if item is None:
            continue
        image, truth = item
        pred = predict_instances(model, [image.to(device)], scale, score_thresh)[0]  # float32
        scores.append(map_iou(truth, postprocess_image(pred, thresholds)[0]))
    if not scores:
        raise CellpipeError("no readable validation image")
    return {"map_iou": float(np.mean(scores)), "images": len(scores)}


def train_run(
    cfg: Config,
    train: TrainConfig,
    run_dir: Path,
    coco_paths: tuple[Path, Path | None],
    image_ids: tuple[Sequence[int] | None, Sequence[int] | None],
    params: RunParams,
    ctx: Context,
) -> dict[str, Any]:
    """Train one model in `run_dir` (resuming it if it was interrupted); return its best score."""
    train_path, val_path = coco_paths
    coco = read_json(train_path)
    mapping = ClassMapping.from_categories(
        coco["categories"], train.categories, train.class_map, train.default_class
    )
    records, notes = load_records(coco, cfg.data, mapping, image_ids[0])
    validate = None
    if val_path is not None:
        val_coco = coco if val_path == train_path else read_json(val_path)
        val_mapping = ClassMapping.from_categories(
            val_coco["categories"], train.categories, train.class_map, train.default_class
        )
        val_records, _ = load_records(val_coco, cfg.data, val_mapping, image_ids[1], True)
        val_set = CocoImages(val_records[: train.val_max_images or None])

        def validate(model: nn.Module) -> dict[str, float]:
            return evaluate(
                model,
                val_set,
                cfg.model.scale,
                train.val_score_thresh,
                train.val_mask_thresh,
                ctx.device,
                min(train.solver.num_workers, 2),
            )

    if ctx.main:
        dropped = notes_line(notes)
        print(
            f"{run_dir.name}: {len(records)} training images, classes {mapping.classes}"
            + (f"; {dropped}" if dropped else "")
        )
        write_text(run_dir / "config.yaml", dump_yaml(params))
    torch.manual_seed(train.solver.seed)  # the same initial weights in every process
    model = build_model(cfg.model, len(mapping.classes) + 1)
    start = init_weights(cfg, train)
    torch.manual_seed(train.solver.seed + 1 + ctx.rank)  # each process its own sampling
    meta = {
        "model_config": cfg.model.model_dump(mode="json"),
        "classes": mapping.classes,
        "params": params.model_dump(mode="json"),
    }
    return fit(
        model,
        CocoInstances(records, cfg.model.scale, train.augment),
        train.solver,
        run_dir,
        meta,
        ctx,
        init=None
        if start is None
        else lambda m: load_weights(m, start, cfg.model, mapping.classes),
        validate=validate,
    )


def pretrain(cfg: Config, force: bool = False) -> None:
    """The pretrain stage: LIVECell -> work/pretrain/model_final.pth."""
    layout, train = cfg.layout, cfg.pretrain
    start = init_weights(cfg, train)
    params = RunParams(model=cfg.model, train=train.model_dump(mode="json"))
    with distributed_context(train.solver.device) as ctx:
        run_stage(
            "pretrain",
            cfg,
            inputs=[
                layout.coco_livecell_train,
                layout.coco_livecell_val,
                *([start] if start else []),
            ],
            outputs=[layout.pretrain_model],
            params=params,
            body=lambda: train_run(
                cfg,
                train,
                layout.pretrain_dir,
                (layout.coco_livecell_train, layout.coco_livecell_val),
                (None, None),
                params,
                ctx,
            ),
            force=force,
        )


def fold_image_ids(coco: dict[str, Any], folds_csv: Path) -> dict[int, list[int]]:
    """COCO image ids of every fold of folds.csv (matched by file stem = the `id` column)."""
    import pandas as pd

    table = pd.read_csv(folds_csv, dtype={"id": str})
    fold_of = dict(zip(table["id"], table["fold"].astype(int)))
    out: dict[int, list[int]] = {int(k): [] for k in sorted(set(fold_of.values()))}
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        if stem not in fold_of:
            raise CellpipeError(f"{folds_csv} has no fold for image {stem} (rerun `folds`)")
        out[fold_of[stem]].append(int(image["id"]))
    return out


def finetune(cfg: Config, force: bool = False) -> None:
    """The finetune stage: one model per fold -> work/finetune/fold{k}/model_best.pth."""
    layout, train = cfg.layout, cfg.finetune
    start = init_weights(cfg, train)
    for path in (layout.coco_train, layout.folds_csv):
        if not path.is_file():
            raise CellpipeError(f"missing input {path} (run the stage that writes it first)")
    folds = fold_image_ids(read_json(layout.coco_train), layout.folds_csv)
    chosen = train.folds or sorted(folds)
    unknown = sorted(set(chosen) - set(folds))
    if unknown:
        raise CellpipeError(
            f"finetune.folds {unknown}: {layout.folds_csv} has folds {sorted(folds)}"
        )
    shared = train.model_dump(mode="json", exclude={"folds"})
    with distributed_context(train.solver.device) as ctx:
        for k in chosen:
            params = RunParams(model=cfg.model, train=shared, fold=k)
            held_out = set(folds[k])
            ids = ([i for j in folds for i in folds[j] if j != k], sorted(held_out))
            run_stage(
                f"finetune_fold{k}",
                cfg,
                inputs=[layout.coco_train, layout.folds_csv, *([start] if start else [])],
                outputs=[layout.finetune_model(k)],
                params=params,
                body=lambda k=k, ids=ids, params=params: train_run(
                    cfg,
                    train,
                    layout.finetune_run(k),
                    (layout.coco_train, layout.coco_train),
                    ids,
                    params,
                    ctx,
                ),
                force=force,
            )
        if ctx.main:
            write_summary(layout.finetune_summary, {k: layout.finetune_model(k) for k in chosen})


def write_summary(path: Path, models: dict[int, Path]) -> None:
    """Per-fold best validation MAP-IoU and their mean, as JSON; printed too."""
    folds = {}
    for k, model_path in models.items():
        best = read_checkpoint(model_path)["best"]
        score = best["score"] if np.isfinite(best["score"]) else None  # None: never validated
        folds[str(k)] = {"map_iou": score, "iteration": best["iteration"], "model": str(model_path)}
    scores = [f["map_iou"] for f in folds.values() if f["map_iou"] is not None]
    summary = {"folds": folds, "mean_map_iou": float(np.mean(scores)) if scores else None}
    write_json(path, summary)
    print(json.dumps(summary, indent=1))
