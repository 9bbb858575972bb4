"""Weights from other projects: detectron2 R50-FPN Mask R-CNN checkpoints (its model zoo's, or
one trained on LIVECell with detectron2) into the torchvision `maskrcnn` family, read without
running code from the file.

detectron2 checkpoints come as `.pth` (torch.save of {"model": state dict, "optimizer": ...}) or as
model-zoo `.pkl` (pickle of {"model": {name: numpy array}, ...}). Both are read with unpicklers
that only rebuild tensors and arrays: a pickle naming any other callable is refused with one line.

The R50-FPN key map (`detectron2_to_torchvision`) renames stem, res2-res5, FPN lateral / output
convolutions, RPN, box and mask heads, and moves the background class: detectron2 puts it last
in `cls_score` and has no background rows in `bbox_pred` / the mask predictor, torchvision puts it
first everywhere. What the state dict cannot say travels as `settings`: detectron2 normalises BGR
images in 0-255 (so conv1's input channels are reversed and pixel mean / std divided by 255) and
its MSRA ResNets stride in the first 1x1 convolution of a stage (`model.maskrcnn.stride_in_1x1`).
"""

from __future__ import annotations

import json
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import CellpipeError, full_message

# detectron2's Base-RCNN-FPN (every COCO and LIVECell R50-FPN config): BGR order, 0-255 pixels
DETECTRON2_PIXEL_MEAN = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD = (1.0, 1.0, 1.0)

_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dicts and plain values, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS or module == "numpy.dtypes":
            return super().find_class(module, name)
        raise CellpipeError(f"refusing {module}.{name}: a weights pickle may only hold arrays")


# what a damaged or foreign file makes the unpickler raise (ValueError: a text opcode's argument,
# UnicodeDecodeError); anything else (MemoryError, a numpy fault) is no fault of the file
UNREADABLE_PICKLE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    FileNotFoundError,
    PermissionError,
)


def unreadable_weights(path: Path | str, error: BaseException) -> CellpipeError:
    """The one-line error for a file that is no readable weights file, quoting why in full."""
    return CellpipeError(f"cannot read weights {path}: {full_message(error)}")


def read_pickle_arrays(path: Path) -> Any:
    """A model-zoo pickle (Python 2 ones too) read by `_ArraysOnly`."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except CellpipeError as e:  # a refused global: the message says which
        raise CellpipeError(f"{path}: {e}") from None
    except UNREADABLE_PICKLE as e:
        raise unreadable_weights(path, e) from e


def as_state_dict(obj: Any, path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded weights file: its `model` (detectron2), `state_dict` or itself."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CellpipeError(f"{path}: expected a state dict (names -> tensors)")
    state: dict[str, torch.Tensor] = OrderedDict()
    for name, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            state[str(name)] = value
    if not state:
        raise CellpipeError(f"{path}: no tensor in it")
    if hasattr(obj, "_metadata"):  # module versions: torchvision renames keys of old files by them
        state._metadata = obj._metadata  # type: ignore[attr-defined]
    return state


def is_detectron2(state: dict[str, Any]) -> bool:
    """Whether a state dict has detectron2's names (a GeneralizedRCNN with a bottom-up ResNet)."""
    return any(k.startswith("backbone.bottom_up.") for k in state)


def _background_first(tensor: torch.Tensor) -> torch.Tensor:
    """cls_score rows (K + 1, ...) with background last -> background first."""
    return torch.cat([tensor[-1:], tensor[:-1]])


def _with_background(rows_per_class: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Rows of K classes -> rows of K + 1 (zeros for background, which torchvision ignores)."""

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros((rows_per_class, *tensor.shape[1:]), dtype=tensor.dtype)
        return torch.cat([zeros, tensor])

    return convert


def _reverse_channels(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flip(1)  # BGR -> RGB input channels of conv1


_STAGE = r"backbone\.bottom_up\.res(\d)\.(\d+)\."
# (detectron2 pattern, torchvision name template, tensor conversion)
_R50_FPN_MAP: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]] = [
    (r"backbone\.bottom_up\.stem\.conv1\.weight", "backbone.body.conv1.weight", _reverse_channels),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", "backbone.body.bn1.{0}", None),
    (_STAGE + r"conv(\d)\.weight", "backbone.body.layer{0-1}.{1}.conv{2}.weight", None),
    (_STAGE + r"conv(\d)\.norm\.(\w+)", "backbone.body.layer{0-1}.{1}.bn{2}.{3}", None),
    (_STAGE + r"shortcut\.weight", "backbone.body.layer{0-1}.{1}.downsample.0.weight", None),
    (_STAGE + r"shortcut\.norm\.(\w+)", "backbone.body.layer{0-1}.{1}.downsample.1.{2}", None),
    (r"backbone\.fpn_lateral(\d)\.(\w+)", "backbone.fpn.inner_blocks.{0-2}.0.{1}", None),
    (r"backbone\.fpn_output(\d)\.(\w+)", "backbone.fpn.layer_blocks.{0-2}.0.{1}", None),
    (r"proposal_generator\.rpn_head\.conv\.(\w+)", "rpn.head.conv.0.0.{0}", None),
    (r"proposal_generator\.rpn_head\.objectness_logits\.(\w+)", "rpn.head.cls_logits.{0}", None),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.(\w+)", "rpn.head.bbox_pred.{0}", None),
    (r"roi_heads\.box_head\.fc(\d)\.(\w+)", "roi_heads.box_head.fc{0+5}.{1}", None),
    (
        r"roi_heads\.box_predictor\.cls_score\.(\w+)",
        "roi_heads.box_predictor.cls_score.{0}",
        _background_first,
    ),
    (
        r"roi_heads\.box_predictor\.bbox_pred\.(\w+)",
        "roi_heads.box_predictor.bbox_pred.{0}",
        _with_background(4),
    ),
    (r"roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)", "roi_heads.mask_head.{0-1}.0.{1}", None),
    (r"roi_heads\.mask_head\.deconv\.(\w+)", "roi_heads.mask_predictor.conv5_mask.{0}", None),
    (
        r"roi_heads\.mask_head\.predictor\.(\w+)",
        "roi_heads.mask_predictor.mask_fcn_logits.{0}",
        _with_background(1),
    ),
]


def _fill(template: str, groups: Sequence[str]) -> str:
    """`layer{0-1}.{1}` with groups ("2", "0") -> `layer1.0` (an offset after the index)."""

    def value(match: re.Match) -> str:
        index, offset = int(match.group(1)), match.group(2)
        group = groups[index]
        return str(int(group) + int(offset)) if offset else group

    return re.sub(r"\{(\d)([+-]\d)?\}", value, template)


def detectron2_to_torchvision(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A detectron2 R50-FPN Mask R-CNN state dict in torchvision's names and class order, and
    the detectron2 names it has no place for (detectron2's pixel mean / std buffers, other
    architectures' layers)."""
    rules = [(re.compile(p + "$"), t, c) for p, t, c in _R50_FPN_MAP]
    out, unused = {}, []
    for name, tensor in state.items():
        for pattern, template, convert in rules:
            match = pattern.match(name)
            if match:
                out[_fill(template, match.groups())] = convert(tensor) if convert else tensor
                break
        else:
            unused.append(name)
    return out, unused


def detectron2_settings(
    pixel_mean: Sequence[float] = DETECTRON2_PIXEL_MEAN,
    pixel_std: Sequence[float] = DETECTRON2_PIXEL_STD,
    stride_in_1x1: bool = True,
) -> dict[str, Any]:
    """`model.maskrcnn` settings under which imported detectron2 weights compute what they did
    there: its BGR 0-255 pixel mean / std as RGB 0-1, and where its ResNet strides."""
    return {
        "pixel_mean": [float(m) / 255 for m in reversed(pixel_mean)],
        "pixel_std": [float(s) / 255 for s in reversed(pixel_std)],
        "stride_in_1x1": bool(stride_in_1x1),
    }


def torchvision_from_detectron2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`detectron2_to_torchvision`, with a one-line error when a tensor has no place in it (an
    architecture other than R50-FPN Mask R-CNN; detectron2's pixel mean / std buffers aside)."""
    mapped, unused = detectron2_to_torchvision(state)
    unused = [k for k in unused if k not in ("pixel_mean", "pixel_std")]
    if unused:
        raise CellpipeError(
            f"{len(unused)} detectron2 tensors have no place in an R50-FPN Mask R-CNN "
            f"(e.g. {unused[0]}): only that architecture imports"
        )
    return mapped


def needed_overrides(block: Any, family: str, settings: dict[str, Any]) -> str:
    """The overrides a family's config block lacks to hold `settings` (numbers compared to
    rounding), as `model.maskrcnn.pixel_std=[...] model.maskrcnn.stride_in_1x1=true`; "" if none."""
    now = block.model_dump(mode="json")

    def same(a: Any, b: Any) -> bool:
        try:
            return bool(np.allclose(np.asarray(a, float), np.asarray(b, float)))
        except (TypeError, ValueError):
            return a == b

    return " ".join(
        f"model.{family}.{k}={json.dumps(v, separators=(',', ':'))}"
        for k, v in settings.items()
        if k in now and not same(now[k], v)
    )


# scellseg 0.1.8 ships cellpose's CPnet under other names: its prefix, and its output layer
_SCELLSEG_PREFIXES = (
    ("extractor.", ""),
    ("tasker.base_bn.", "output.0."),
    ("tasker.base_conv.", "output.2."),
)


def is_cellpose(state: dict[str, Any]) -> bool:
    """Whether a state dict has cellpose 3.x CPnet names (scellseg's renamed ones too)."""
    first = "downsample.down.res_down_0."
    return any(k.startswith((first, f"extractor.{first}")) for k in state)


def cellpose_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPnet state dict in cellpose 3.x names: scellseg's renamed (`extractor.` dropped,
    `tasker.base_bn` / `tasker.base_conv` -> `output.0` / `output.2`), others as they are."""
    out = {}
    for name, tensor in state.items():
        for old, new in _SCELLSEG_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        out[name] = tensor
    return out
