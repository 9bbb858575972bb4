"""Benchmark: peak memory of predicting a 1000-instance 520x704 image, beyond the model itself.

Each measurement runs in a fresh process (peak RSS only grows): the model alone (built, one tiny
forward), the maskrcnn family's `predict` (masks kept cropped to their boxes), and the baseline,
torchvision's own forward, which pastes every detection into a full-size float mask. Random
weights with a zero score threshold give the worst case: every one of the 1000 detections kept.
Usage: `python benchmarks/predict_memory.py [--config configs/cpu.yaml]`. Target: < 1 GiB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

MODES = ("model", "cellpipe", "torchvision")


def measure(mode: str, config: str) -> None:
    import torch

    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.models.maskrcnn import torchvision_maskrcnn

    torch.manual_seed(0)
    overrides = ["model.maskrcnn.score_thresh=0.0", "model.maskrcnn.detections_per_image=1000"]
    cfg = load_config(config, [*overrides, "model.family=maskrcnn"])
    model = build_model(cfg.model, ["a", "b", "c"]).eval()
    reference = torchvision_maskrcnn(cfg.model.maskrcnn, 4).eval()  # the same weights
    reference.load_state_dict(model.state_dict())
    image = torch.rand(1, 520, 704)
    with torch.inference_mode():
        model.predict([torch.rand(1, 32, 32)])  # allocator and kernels warmed on a tiny image
        if mode == "cellpipe":
            n = len(model.predict([image])[0])
        elif mode == "torchvision":
            n = len(reference([image])[0]["masks"])
        else:
            n = 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"{mode} {peak:.3f} {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        measure(args.mode, args.config)
        return
    peaks, counts = {}, {}
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--config", args.config],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peaks[mode], counts[mode] = float(out[1]), int(out[2])
    base = peaks["model"]
    print(f"model alone: peak RSS {base:.2f} GiB")
    for mode in ("cellpipe", "torchvision"):
        print(
            f"{mode:12} {counts[mode]} detections: +{peaks[mode] - base:.2f} GiB beyond the model"
        )
    ratio = (peaks["torchvision"] - base) / max(peaks["cellpipe"] - base, 1e-3)
    print(f"cellpipe needs {ratio:.1f}x less memory than torchvision's forward (target < 1 GiB)")


if __name__ == "__main__":
    main()
