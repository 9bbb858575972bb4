"""Checkpoints of every family: reading, what they record, initial weights, trained models.

A cellpipe checkpoint is a dict with `model` (the state dict), `family`, `model_config` (the
family's config block), `classes`, and what training adds (iteration, best score, optimizer...).
Files are loaded with `weights_only=True` (`.pkl` model-zoo files with an unpickler
that only rebuilds arrays): tensors and plain data, never code. Foreign weights (torchvision,
detectron2) go through pipeline.models.foreign_weights.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.models import CellModel, build_model
from pipeline.models.foreign_weights import (
    as_state_dict,
    needed_overrides,
    read_pickle_arrays,
    unreadable_weights,
)

# torch.save writes a zip archive (a pickle stream before torch 1.6). torch.load of any other file
# fails by whatever pickle opcode its first byte happens to be (KeyError, IndexError...), and of a
# truncated zip with "OSError: [Errno 22] Invalid argument": such files are told by their first
# bytes and by the zip's central directory before torch reads them.
ZIP_START, PICKLE_START = b"PK\x03\x04", b"\x80"
# torch's RuntimeErrors for a damaged zip, a zip not written by torch.save, and a truncated file of
# torch < 1.6; its other RuntimeErrors (a file from a newer torch, no memory left) are not the
# file's fault
TORCH_FILE_ERRORS = (
    "PytorchStreamReader failed",
    "file in archive is not in a subdirectory",
    "The file might be corrupted",
)


def read_torch_file(path: Path) -> Any:
    """torch.load (tensors and plain data only), with a one-line error only when the file is no
    readable torch file: empty, truncated, damaged or foreign."""
    try:
        with open(path, "rb") as f:
            start = f.read(4)
        if start.startswith(ZIP_START):
            zipfile.ZipFile(path).close()  # reads the central directory, at the end of the file
        elif not start.startswith(PICKLE_START):
            what = "an empty file" if not start else "neither a zip archive nor a pickle"
            raise CellpipeError(f"cannot read weights {path}: {what}, not a torch.save file")
        return torch.load(path, map_location="cpu", weights_only=True)
    except zipfile.BadZipFile as e:
        raise CellpipeError(f"cannot read weights {path}: truncated or damaged ({e})") from e
    except (
        pickle.UnpicklingError,
        EOFError,
        struct.error,  # a truncated header of torch < 1.6
        FileNotFoundError,
        PermissionError,
    ) as e:
        raise unreadable_weights(path, e) from e
    except RuntimeError as e:
        if not any(text in str(e) for text in TORCH_FILE_ERRORS):
            raise
        raise unreadable_weights(path, e) from e


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A .pth file as a dict, with a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing weights file: {path}")
    if path.suffix == ".pkl":
        obj = read_pickle_arrays(path)
        if not isinstance(obj, dict):
            raise CellpipeError(f"{path}: expected a dict of arrays")
        return obj
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CellpipeError(f"{path}: expected a state dict or a cellpipe checkpoint")
    return obj


def is_cellpipe(obj: dict[str, Any]) -> bool:
    return "model" in obj and "model_config" in obj


def checkpoint_family(obj: dict[str, Any]) -> str:
    """A cellpipe checkpoint's family."""
    return obj["family"]


def checkpoint_block(obj: dict[str, Any]) -> dict[str, Any]:
    """A cellpipe checkpoint's family config block."""
    return dict(obj["model_config"])


def checkpoint_meta(cfg: ModelConfig, family: str, classes: Sequence[str]) -> dict[str, Any]:
    """What every checkpoint of `family` records besides its weights."""
    return {
        "family": family,
        "model_config": cfg.block(family).model_dump(mode="json"),
        "classes": list(classes),
    }


def _is_class_head(model: CellModel, key: str) -> bool:
    return key.startswith(model.class_heads)


def _check_architecture(
    model: CellModel, obj: dict[str, Any], path: Path | str, family: str, saved: dict[str, Any]
) -> None:
    """One-line error unless the checkpoint's layers (class heads aside) fit `model`."""
    if family != model.family:
        raise CellpipeError(f"{path} holds a {family} model, not {model.family}")
    own, state = model.state_dict(), obj["model"]
    body = {k for k in own if not _is_class_head(model, k)}
    if body == {k for k in state if not _is_class_head(model, k)} and all(
        state[k].shape == own[k].shape for k in body
    ):
        return
    diffs = [
        f"model.{family}.{k}: {saved.get(k)!r} there, {v!r} here"
        for k, v in model.cfg.network().items()
        if saved.get(k) != v
    ]
    raise CellpipeError(f"{path} holds another model ({'; '.join(diffs) or 'other layers'})")


def load_weights(model: CellModel, path: Path | str) -> str:
    """Initialise `model` from a cellpipe checkpoint or a foreign state dict; return a summary.

    A cellpipe checkpoint must hold the same family and architecture (else a one-line error
    naming the differing config keys); its class heads are kept when its classes are the same.
    A foreign state dict (torchvision Mask R-CNN, ImageNet ResNet, detectron2) goes through the
    family's `import_state` and loads every tensor whose name and shape match; the layers whose
    shapes differ are named in the summary.
    """
    obj = read_checkpoint(path)
    own = model.state_dict()
    if is_cellpipe(obj):
        family, saved = checkpoint_family(obj), checkpoint_block(obj)
        _check_architecture(model, obj, path, family, saved)
        same_classes = list(obj.get("classes", [])) == model.classes
        state = obj["model"]
        if not same_classes:
            state = {k: v for k, v in state.items() if not _is_class_head(model, k)}
        model.load_state_dict(state, strict=False)
        heads = "kept" if same_classes else f"new (classes {obj.get('classes')} -> {model.classes})"
        return f"weights from {path} (iteration {obj.get('iteration', '?')}), class heads {heads}"
    state, settings = foreign_state(obj, path)
    try:
        _check_settings(model, settings.get(model.family, {}))
        state = model.import_state(state)
    except CellpipeError as e:
        raise CellpipeError(f"{path}: {e}") from None
    differ = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    for key in differ:
        del state[key]  # in place: the file's version metadata lets torchvision rename old keys
    missing = set(model.load_state_dict(state, strict=False).missing_keys)
    # batch norm takes an absent num_batches_tracked silently: it did not load either
    missing |= {k for k in own if k.endswith(".num_batches_tracked") and k not in state}
    if len(missing) == len(own):
        raise CellpipeError(f"no tensor in {path} matches the {model.family} model")
    summary = f"weights from {path}: {len(own) - len(missing)} of {len(own)} tensors"
    if differ:
        summary += f"; new, as shapes differ: {', '.join(differ[:4])}"
        summary += f" (+{len(differ) - 4} more)" if len(differ) > 4 else ""
    return summary


def foreign_state(
    obj: dict[str, Any], path: Path | str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """A foreign weights file's tensors and the per-family settings a `cellpipe import-weights`
    file records (none for other files)."""
    settings = dict(obj.get("settings", {})) if "state_dict" in obj else {}
    return as_state_dict(obj, path), settings


def _check_settings(model: CellModel, settings: dict[str, Any]) -> None:
    """One-line error unless the model's config has the settings the weights were made with."""
    needed = needed_overrides(model.cfg, model.family, settings)
    if needed:
        raise CellpipeError(f"needs {needed} (the weights were trained that way)")


def load_model(
    path: Path | str, device: str | torch.device = "cpu", expected: ModelConfig | None = None
) -> CellModel:
    """A trained model in eval mode (its family and classes from the checkpoint).

    expected: take the family's block from this config, so its inference settings (detections
    per image, thresholds, RPN top-k) apply, after checking that the checkpoint holds the same
    architecture (else a one-line error); None: the checkpoint's own block.
    """
    obj = read_checkpoint(path)
    if not is_cellpipe(obj):
        raise CellpipeError(f"{path} is not a cellpipe checkpoint (no model_config)")
    family, saved = checkpoint_family(obj), checkpoint_block(obj)
    cfg = expected or ModelConfig()
    if expected is None:
        cfg = cfg.model_copy(update={family: cfg.block(family).model_validate(saved)})
    model = build_model(cfg, list(obj["classes"]), family)
    _check_architecture(model, obj, path, family, saved)
    model.load_state_dict(obj["model"])
    return model.to(device).eval()
