"""Benchmark: training throughput of a config, its data loader against its train step.

In one run, on the competition COCO file of the config's work_dir (or, when absent, on the
embedded synthetic data generated into a temporary folder):
- loader: images/s of the DataLoader (the config's workers, augmentation and crop) alone;
  baseline "train step": images/s of training steps on batches already in memory. Target: the
  loader at least 5x faster, so training never waits for data;
- loader sample: ms per image of the box-crop pipeline; baseline "full-size decode": the usual
  way (pycocotools decodes every mask at full size, flips / rotations / boxes on the full stack);
- inference: images/s of box-cropped prediction at native size (validation, issue 5's predict);
- peak RSS of this process (and of its loader workers);
- with --device cuda, or a config training in bfloat16 (on the CPU too): train-step images/s
  with AMP (the config's dtype) against float32.
Usage: `python benchmarks/train.py [--config configs/cpu.yaml] [--device cpu|cuda] [--steps 10]`.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from pipeline import cli
from pipeline.config import Config, load_config
from pipeline.core.fileio import read_image, read_json
from pipeline.models import build_model, image_to_tensor
from pipeline.training.data import CocoInstances, TrainSampler, collate
from pipeline.training.records import ClassMapping, Record, load_records


def competition_coco(config: str, overrides: list[str]) -> tuple[Config, dict]:
    """The config and its train.json, or the embedded synthetic data built in a temporary folder
    (the config's settings kept)."""
    cfg = load_config(config, overrides)
    if cfg.layout.coco_train.is_file():
        return cfg, read_json(cfg.layout.coco_train)
    work = Path(tempfile.mkdtemp(prefix="cellpipe-bench-"))
    args = [f"work_dir={work}", "data_dir=null", *overrides]
    for stage in ("prepare", "convert"):
        if cli.main([stage, "--config", config, *args]) != 0:
            raise SystemExit(f"could not build the synthetic data ({stage} failed)")
    cfg = load_config(config, args)
    return cfg, read_json(cfg.layout.coco_train)


def full_size_sample(record: Record, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """The baseline sample: every mask decoded at full size, the stack flipped and rotated."""
    image = image_to_tensor(read_image(record.path))
    rles = [
        s if not isinstance(s, dict) or isinstance(s["counts"], bytes)
        else {**s, "counts": s["counts"].encode()}
        for s in record.segmentations
    ]  # fmt: skip
    masks = torch.from_numpy(mask_utils.decode(rles).transpose(2, 0, 1).copy())
    if rng.random() < 0.5:
        image, masks = image.flip(2), masks.flip(2)
    if rng.random() < 0.5:
        image, masks = image.flip(1), masks.flip(1)
    k = int(rng.integers(0, 4))
    image, masks = image.rot90(k, (1, 2)), masks.rot90(k, (1, 2))
    rows, cols = masks.any(2), masks.any(1)
    y0, x0 = rows.byte().argmax(1), cols.byte().argmax(1)
    y1 = masks.shape[1] - rows.flip(1).byte().argmax(1)
    x1 = masks.shape[2] - cols.flip(1).byte().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return image, {"boxes": boxes, "masks": masks.contiguous()}


def per_image_ms(fn, n: int) -> float:
    began = time.perf_counter()
    for i in range(n):
        fn(i)
    return 1000 * (time.perf_counter() - began) / n


def train_steps(model, batches, device, amp_dtype, steps) -> float:
    """Images/s of SGD steps on in-memory batches (after one warm-up step)."""
    model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    n_images, began = 0, 0.0
    for step in range(steps + 1):
        images, targets, _ = batches[step % len(batches)]
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n_images += len(images) if step else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    cfg, coco = competition_coco(args.config, args.overrides)
    train, device = cfg.finetune, torch.device(args.device)
    mapping = ClassMapping.from_categories(coco["categories"])
    records, _ = load_records(coco, cfg.data, mapping)
    torch.manual_seed(0)
    model = build_model(cfg.model, mapping.classes)
    data = CocoInstances(
        records, model.target_maker(cfg.model.block()), cfg.model.scale, train.augment
    )
    batch = train.solver.ims_per_batch
    n_instances = np.mean([len(r.labels) for r in records])
    print(
        f"{cfg.model.family}, {len(records)} images, {n_instances:.0f} instances/image, "
        f"batch {batch}, crop {train.augment.crop}, {train.solver.num_workers} loader workers"
    )

    loader = DataLoader(
        data,
        batch_size=batch,
        sampler=TrainSampler(len(data), 0),
        num_workers=train.solver.num_workers,
        collate_fn=collate,
    )
    batches, stream = [], iter(loader)
    batches.append(next(stream))  # workers started
    began = time.perf_counter()
    for _ in range(2 * args.steps):
        batches.append(next(stream))
    loader_rate = 2 * args.steps * batch / (time.perf_counter() - began)
    del stream

    step_rate = train_steps(model, batches, device, None, args.steps)
    ratio = loader_rate / step_rate
    print(f"\nloader       {loader_rate:8.1f} images/s")
    print(f"train step   {step_rate:8.1f} images/s   loader / step = {ratio:.1f}x ", end="")
    print("(target >= 5x: " + ("met)" if ratio >= 5 else "MISSED)"))

    sample = data.__getitem__
    ours = per_image_ms(lambda i: sample((i % len(data), (1, i))), 2 * len(data))
    records_list = [data.records[i] for i in range(len(data))]
    rng = np.random.default_rng(1)
    naive = per_image_ms(lambda i: full_size_sample(records_list[i % len(data)], rng), len(data))
    print(f"\nsample, box crops       {ours:7.1f} ms/image")
    print(f"sample, full-size decode{naive:7.1f} ms/image   ratio {naive / ours:.1f}x")

    model.eval()
    images = [image_to_tensor(read_image(r.path)).to(device) for r in records_list[:4]]
    model.predict(images[:1])
    began = time.perf_counter()
    for image in images:
        model.predict([image])
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"\ninference at native size {len(images) / (time.perf_counter() - began):6.2f} images/s")

    amp = device.type == "cuda" or train.solver.amp_dtype == "bfloat16"  # as the engine
    if train.solver.amp and amp:
        dtype = getattr(torch, train.solver.amp_dtype)
        amp_rate = train_steps(model, batches, device, dtype, args.steps)
        print(f"train step, AMP {train.solver.amp_dtype}: {amp_rate:.1f} images/s,", end=" ")
        print(f"float32 {step_rate:.1f}: {amp_rate / step_rate:.2f}x")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"peak RSS {own:.2f} GiB (largest loader worker {workers:.2f} GiB)")


if __name__ == "__main__":
    main()
