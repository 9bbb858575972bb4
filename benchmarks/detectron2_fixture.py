"""Fixture: parameter names and shapes of detectron2's R50-FPN Mask R-CNN with 3 classes.

Builds `COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml` on the CPU with
`MODEL.ROI_HEADS.NUM_CLASSES = 3` (the Sartorius classes) and writes every `state_dict()` entry,
buffers included (FrozenBN running statistics), as {name: shape} to
`tests/fixtures/detectron2_mask_rcnn_R_50_FPN.json`, so that a detectron2-to-torchvision key map
can be tested without detectron2 installed. Needs detectron2 importable (not a cellpipe
dependency); random weights, nothing is downloaded.
Usage: `python benchmarks/detectron2_fixture.py [--out PATH]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
NUM_CLASSES = 3
OUT = Path(__file__).resolve().parents[1] / "tests/fixtures/detectron2_mask_rcnn_R_50_FPN.json"


def parameter_shapes(config: str, num_classes: int) -> dict[str, list[int]]:
    """Every state_dict entry of the model the model-zoo config builds, in state_dict order."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    model = build_model(cfg)
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def render(config: str, num_classes: int, parameters: dict[str, list[int]]) -> str:
    """JSON with one parameter per line, so that diffs of the fixture stay readable."""
    rows = [f"    {json.dumps(name)}: {json.dumps(shape)}" for name, shape in parameters.items()]
    head = f'{{\n  "config": {json.dumps(config)},\n  "num_classes": {num_classes},\n'
    return head + '  "parameters": {\n' + ",\n".join(rows) + "\n  }\n}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    try:
        import detectron2  # noqa: F401
    except ImportError:
        print("detectron2 is not importable here; nothing written", file=sys.stderr)
        return 1
    parameters = parameter_shapes(CONFIG, NUM_CLASSES)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(CONFIG, NUM_CLASSES, parameters))
    print(f"{len(parameters)} entries -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
