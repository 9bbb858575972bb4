"""`cellpipe import-weights SRC DST`: weights from detectron2 (its model zoo, LIVECell's),
torchvision or an ImageNet ResNet for the `maskrcnn` family, or a cellpose model file (cellpose
3.x's, scellseg's copy) for the `cellpose` family, checked against the configured model and
written as a file for `init=DST` (its tensors in torchvision's / cellpose's names, and the settings
they need: detectron2's pixel normalisation and strides, cellpose's `diam_mean`).

Files are read without running code from them (see pipeline.models.foreign_weights). The check
loads DST into the family's model as configured, with the file's settings, and prints how many
tensors fit and which are new (class heads when classes differ, RPN layers when anchors differ).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="a .pth (detectron2, torchvision) or .pkl file")
    parser.add_argument("dest", type=Path, help="the .pth to write, for init=DEST")
    parser.add_argument(
        "--classes",
        type=int,
        default=None,
        help="classes to check against (default: the source's; 1 for cellpose)",
    )
    parser.add_argument(
        "--pixel-mean",
        type=float,
        nargs=3,
        default=None,
        metavar=("B", "G", "R"),
        help="detectron2 MODEL.PIXEL_MEAN of the source's config (default 103.53 116.28 123.675)",
    )
    parser.add_argument(
        "--pixel-std",
        type=float,
        nargs=3,
        default=None,
        metavar=("B", "G", "R"),
        help="detectron2 MODEL.PIXEL_STD (default 1 1 1; 57.375 57.12 58.395 for torchvision "
        "ResNets)",
    )
    parser.add_argument(
        "--no-stride-in-1x1",
        action="store_true",
        help="the source's MODEL.RESNETS.STRIDE_IN_1X1 is False (default True, MSRA ResNets)",
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    import torch

    from pipeline.models import build_model
    from pipeline.models.checkpoints import (
        foreign_state,
        is_cellpipe,
        load_weights,
        read_checkpoint,
    )
    from pipeline.models.foreign_weights import (
        DETECTRON2_PIXEL_MEAN,
        DETECTRON2_PIXEL_STD,
        cellpose_names,
        detectron2_settings,
        is_cellpose,
        is_detectron2,
        needed_overrides,
        torchvision_from_detectron2,
    )

    obj = read_checkpoint(args.source)
    if is_cellpipe(obj):
        raise CellpipeError(
            f"{args.source} is a cellpipe checkpoint already: use init={args.source}"
        )
    state, settings = foreign_state(obj, args.source)
    family = "cellpose" if is_cellpose(state) else "maskrcnn"
    if family == "cellpose":
        state = cellpose_names(state)
        if "diam_mean" in state:
            settings["cellpose"] = {"diam_mean": float(state["diam_mean"].reshape(-1)[0])}
    elif is_detectron2(state):
        try:
            state = torchvision_from_detectron2(state)
        except CellpipeError as e:
            raise CellpipeError(f"{args.source}: {e}") from None
        settings["maskrcnn"] = detectron2_settings(
            args.pixel_mean or DETECTRON2_PIXEL_MEAN,
            args.pixel_std or DETECTRON2_PIXEL_STD,
            not args.no_stride_in_1x1,
        )
    with atomic_path(args.dest) as tmp:
        torch.save({"state_dict": state, "settings": settings, "source": str(args.source)}, tmp)
    head = state.get("roi_heads.box_predictor.cls_score.weight")
    n_classes = args.classes or (len(head) - 1 if head is not None else 1)
    made_with = settings.get(family, {})
    block = cfg.model.block(family).model_copy(update=made_with)
    model = build_model(
        cfg.model.model_copy(update={family: block}),
        [f"class{k}" for k in range(1, n_classes + 1)],
        family,
    )
    print(f"import-weights: {load_weights(model, args.dest)}")
    needed = needed_overrides(cfg.model.block(family), family, made_with)
    print(f"import-weights: wrote {args.dest}; train with init={args.dest} {needed}".rstrip())
