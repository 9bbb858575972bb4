"""Benchmark: detectron2's Mask R-CNN (family `detectron2`) against torchvision's (`maskrcnn`, the
baseline) on CPU, in one run.

Both are R50-FPN from random weights with the same knobs (KNOBS: group norm, the CPU config's
anchors, proposal and sampling limits). Per family, each in its own process so that peak memory is
its own, on the embedded synthetic data built in a temporary folder with configs/cpu.yaml:
- train step: seconds per iteration (the config's batch of 256x256 crops, in memory);
- predict: seconds per 520x704 image (one model, no TTA);
- peak RSS of the process;
- fold 0 fine-tuned for --iters iterations: its validation MAP-IoU (default thresholds).
Prints each figure and detectron2 / torchvision ratios. Needs detectron2 (`make detectron2`).
Usage: `python benchmarks/detectron2_vs_torchvision.py [--iters 60] [--steps 5]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FAMILIES = ("maskrcnn", "detectron2")  # the baseline first
KNOBS = {
    "norm": "gn",
    "anchor_sizes": "[[8],[16],[32],[64],[128]]",
    "anchor_ratios": "[0.5,1.0,2.0]",
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
    "roi_batch_size_per_image": 128,
    "thresholds.score": 0.3,
}
R50 = ["model.maskrcnn.backbone=resnet50_fpn", "model.maskrcnn.fpn_channels=256"]
R50 += ["model.maskrcnn.box_head_dim=1024", "model.maskrcnn.mask_head_channels=256"]


def settings(family: str, work: Path, iters: int) -> list[str]:
    knobs = [f"model.{family}.{k}={v}" for k, v in KNOBS.items()]
    return [
        "--config",
        str(ROOT / "configs" / "cpu.yaml"),
        f"work_dir={work}",
        "data_dir=null",
        f"model.family={family}",
        f"predict.models=[{family}]",
        *knobs,
        *(R50 if family == "maskrcnn" else []),
        "convert.livecell=false",
        "finetune.init=random",
        "finetune.folds=[0]",
        f"finetune.solver.max_iter={iters}",
        f"finetune.solver.checkpoint_period={iters}",
    ]


def measure(family: str, iters: int, steps: int) -> dict[str, float]:
    """This process's figures for one family (see the module docstring)."""
    import numpy as np
    import torch
    from train import train_steps

    from pipeline import cli
    from pipeline.config import load_config
    from pipeline.core.fileio import read_image, read_json
    from pipeline.models import build_model, image_to_tensor
    from pipeline.training.data import CocoInstances, TrainSampler, collate
    from pipeline.training.records import ClassMapping, load_records

    work = Path(tempfile.mkdtemp(prefix=f"cellpipe-{family}-"))
    args = settings(family, work, iters)
    for stage in ("prepare", "convert", "folds"):
        if cli.main([stage, *args]) != 0:
            raise SystemExit(f"detectron2 benchmark: {stage} failed")
    cfg = load_config(args[1], args[2:])
    coco = read_json(cfg.layout.coco_train)
    mapping = ClassMapping.from_categories(coco["categories"])
    records, _ = load_records(coco, cfg.data, mapping)
    torch.manual_seed(0)
    model = build_model(cfg.model, mapping.classes)
    data = CocoInstances(
        records, model.target_maker(cfg.model.block()), cfg.model.scale, cfg.finetune.augment
    )
    batch = cfg.finetune.solver.ims_per_batch
    stream = iter(TrainSampler(len(data), 0))
    batches = [collate([data[next(stream)] for _ in range(batch)]) for _ in range(steps + 1)]
    step_s = batch / train_steps(model, batches, torch.device("cpu"), None, steps)

    model.eval()
    image = image_to_tensor(read_image(records[0].path))
    assert tuple(image.shape[-2:]) == (520, 704), image.shape
    model.predict([image])
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        model.predict([image])
        timings.append(time.perf_counter() - began)
    del model, batches

    began = time.perf_counter()
    if cli.main(["finetune", *args]) != 0:
        raise SystemExit("detectron2 benchmark: finetune failed")
    finetune_s = time.perf_counter() - began
    summary = read_json(cfg.layout.finetune_summary)
    return {
        "train step s/it": step_s,
        "predict s/image": float(np.median(timings)),
        "peak RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "finetune s": finetune_s,
        f"fold 0 MAP-IoU ({iters} its)": float(summary[family]["folds"]["0"]["map_iou"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60, help="fine-tuning iterations of fold 0")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--family", choices=FAMILIES, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.family:
        print("RESULT " + json.dumps(measure(args.family, args.iters, args.steps)))
        return
    results = {}
    for family in FAMILIES:
        command = [sys.executable, __file__, "--family", family, "--iters", str(args.iters)]
        run = subprocess.run(
            [*command, "--steps", str(args.steps)], capture_output=True, text=True, check=False
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode or not lines:
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"detectron2 benchmark: {family} failed: {tail}")
        results[family] = json.loads(lines[-1][len("RESULT ") :])
    base, other = (results[f] for f in FAMILIES)
    print(f"{'':28}{'maskrcnn (torchvision)':>24}{'detectron2':>14}{'ratio':>9}")
    for key in base:
        ratio = other[key] / base[key] if base[key] else float("nan")
        print(f"{key:28}{base[key]:24.3f}{other[key]:14.3f}{ratio:8.2f}x")


if __name__ == "__main__":
    main()
