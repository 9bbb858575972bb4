"""One training run of a model family, and what the pretrain / finetune stages share.

A run trains the family's model on a COCO file's images (optionally a subset), validated on
another set with the project's MAP-IoU scorer: the model's predictions, painted through the
family's default thresholds (`model.<family>.thresholds`) into a label image without overlaps,
against the ground-truth label image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.config import Config, Layout, Section, TrainConfig, dump_yaml
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json, write_json, write_text
from pipeline.core.metrics import map_iou
from pipeline.core.postprocess import Thresholds, postprocess_image
from pipeline.models import CellModel, build_model
from pipeline.models.checkpoints import checkpoint_meta, load_weights, read_checkpoint
from pipeline.training.data import CocoImages, CocoInstances
from pipeline.training.engine import Context, fit
from pipeline.training.loaders import worker_batches, worker_init
from pipeline.training.records import ClassMapping, load_records, notes_line


class RunParams(Section):
    """What a training run depends on: a checkpoint with other params is not resumed."""

    family: str
    model: dict[str, Any]  # what of the family's block shapes its weights (`network()`)
    # what shapes the validation that picks the best model (`validation()`; {}: validated once,
    # at the end, so the best model is the final one whatever these are)
    validation: dict[str, Any]
    scale: float
    train: dict[str, Any]
    fold: int | None = None


def run_params(cfg: Config, family: str, train: TrainConfig, fold: int | None = None) -> RunParams:
    return RunParams(
        family=family,
        model=cfg.model.network(family),
        validation=cfg.model.block(family).validation() if train.solver.eval_period else {},
        scale=cfg.model.scale,
        train=train.model_dump(mode="json", exclude={"folds"}),
        fold=fold,
    )


def write_pretrain_summary(layout: Layout, models: dict[str, Path | None]) -> None:
    """work/pretrain/summary.json: each trained family's pretrained model, or None."""
    write_json(
        layout.pretrain_summary,
        {"families": {f: None if p is None else str(p) for f, p in models.items()}},
    )


def pretrained_model(cfg: Config, family: str) -> Path | None:
    """The pretrain stage's model of `family`, or None where it pretrained nothing."""
    summary = cfg.layout.pretrain_summary
    if not summary.is_file():
        raise CellpipeError(
            f"missing input {summary} (run `cellpipe pretrain` first, or finetune.init=random)"
        )
    path = read_json(summary)["families"].get(family)
    return Path(path) if path else None


def init_weights(cfg: Config, family: str, train: TrainConfig) -> Path | None:
    """The file a run of `family` starts from (None: random weights)."""
    start = train.start(family)
    if start == "random":
        return None
    if start == "pretrain":
        return pretrained_model(cfg, family)
    return Path(start)


def _first(batch: list) -> Any:
    return batch[0]


@torch.no_grad()
def evaluate(
    model: CellModel,
    dataset: CocoImages,
    thresholds: Thresholds,
    device: torch.device,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean MAP-IoU of the model (eval mode) over the dataset's images."""
    loader = DataLoader(
        dataset,
        batch_size=1,
        num_workers=num_workers,
        collate_fn=_first,
        worker_init_fn=worker_init,
    )
    scores = []
    with worker_batches(loader) as items:
        for item in items:
            if item is None:
                continue
            image, truth = item
            pred = model.predict([image.to(device)])[0]
            scores.append(map_iou(truth, postprocess_image(pred, thresholds)[0]))
    if not scores:
        raise CellpipeError("no readable validation image")
    return {"map_iou": float(np.mean(scores)), "images": len(scores)}


def train_run(
    cfg: Config,
    params: RunParams,
    train: TrainConfig,
    run_dir: Path,
    coco_paths: tuple[Path, Path | None],
    image_ids: tuple[Sequence[int] | None, Sequence[int] | None],
    init: Path | None,
    ctx: Context,
    extra: Path | None = None,
) -> dict[str, Any]:
    """Train one model in `run_dir` (resuming it if it was interrupted); return its best score.

    extra: a COCO file (pseudo-labels) whose images are trained on too, every one of them."""
    family = params.family
    train_path, val_path = coco_paths
    coco = read_json(train_path)
    mapping = ClassMapping.from_categories(
        coco["categories"], train.categories, train.class_map, train.default_class
    )
    records, notes = load_records(coco, cfg.data, mapping, image_ids[0])
    extra_coco = read_json(extra) if extra is not None else {"images": []}
    if extra_coco["images"]:  # pseudo-labelling may keep no image
        extra_records, _ = load_records(extra_coco, cfg.data, mapping)
        records += extra_records
    block = cfg.model.block(family)
    validate = None
    if val_path is not None:
        val_coco = coco if val_path == train_path else read_json(val_path)
        val_mapping = ClassMapping.from_categories(
            val_coco["categories"], train.categories, train.class_map, train.default_class
        )
        val_records, _ = load_records(val_coco, cfg.data, val_mapping, image_ids[1], True)
        val_set = CocoImages(val_records[: train.val_max_images or None])
        thresholds = Thresholds(default=block.thresholds)

        def validate(model: CellModel) -> dict[str, float]:
            workers = min(train.solver.num_workers, 2)
            return evaluate(model, val_set, thresholds, ctx.device, workers)

    if ctx.main:
        dropped = notes_line(notes)
        run = "/".join(run_dir.parts[-2:])
        print(
            f"{run}: {len(records)} training images, classes {mapping.classes}"
            + (f"; {dropped}" if dropped else "")
        )
        write_text(run_dir / "config.yaml", dump_yaml(params))
    torch.manual_seed(train.solver.seed)  # the same initial weights in every process
    model = build_model(cfg.model, mapping.classes, family)
    torch.manual_seed(train.solver.seed + 1 + ctx.rank)  # each process its own sampling
    meta = {
        **checkpoint_meta(cfg.model, family, mapping.classes),
        "params": params.model_dump(mode="json"),
    }
    dataset = CocoInstances(
        records, model.target_maker(block), cfg.model.scale, train.augment, model.diameter
    )
    diameter = float(np.median([r.diameter for r in records]))

    def start(model: CellModel) -> str:
        summary = "random weights" if init is None else load_weights(model, init)
        model.learn_training_set(diameter, CocoImages(records))
        return summary

    return fit(model, dataset, train.solver, run_dir, meta, ctx, init=start, validate=validate)


def write_summary(path: Path, models: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """Per family and fold: best validation MAP-IoU, its iteration, the model; per family the
    mean. Written as JSON and printed."""
    summary: dict[str, Any] = {}
    for family, folds in models.items():
        entries = {}
        for k, model_path in folds.items():
            best = read_checkpoint(model_path)["best"]
            score = best["score"] if np.isfinite(best["score"]) else None  # None: not validated
            entries[str(k)] = {
                "map_iou": score,
                "iteration": best["iteration"],
                "model": str(model_path),
            }
        scores = [f["map_iou"] for f in entries.values() if f["map_iou"] is not None]
        summary[family] = {
            "folds": entries,
            "mean_map_iou": float(np.mean(scores)) if scores else None,
        }
    write_json(path, summary)
    print(json.dumps(summary, indent=1))
    return summary
