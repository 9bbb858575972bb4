"""The one config system for every stage.

Defaults live here, in typed pydantic models, each field commented. An experiment is a small YAML
file in `configs/` (optionally `_base_: other.yaml`) plus `key.sub=value` overrides from the
command line. The resolved config is frozen; each stage saves the part it read beside its outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core.errors import CellpipeError

RleOrder = Literal["row", "column"]


class Section(BaseModel):
    """A frozen config block that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Section):
    """The embedded dataset: the competition's exact layout, sized for a fast CPU chain."""

    seed: int = 0
    height: int = 520  # real Sartorius images are 520 x 704
    width: int = 704
    train_images_per_type: int = 8  # per cell type (shsy5y, astro, cort)
    samples_per_type: int = 4  # distinct sample_id values per type (folds group by these)
    test_images: int = 3  # the real competition shows 3 test images
    semi_supervised_images: int = 6
    livecell_train_images: int = 16
    livecell_val_images: int = 4
    livecell_test_images: int = 4


class PrepareConfig(Section):
    """Where competition data comes from."""

    source: Literal["synthetic", "kaggle"] = "synthetic"
    competition: str = "sartorius-cell-instance-segmentation"
    synthetic: SyntheticConfig = SyntheticConfig()


class ConvertConfig(Section):
    """Competition CSV (or label-image folders) to COCO JSON."""

    rle_order: RleOrder = "row"  # Sartorius is row-major; DSB 2018 data is column-major
    source_format: Literal["kaggle_csv", "label_images", "instance_masks"] = "kaggle_csv"
    images_dir: str = "train"  # for label-image formats: image folder, relative to data_dir
    labels_dir: str = "labels"  # for label_images: one label image per image, same stem
    livecell: bool = True  # also normalise LIVECell's polygon COCO (when present) for pretraining


class FoldsConfig(Section):
    """K-fold split stratified by cell type, grouped by sample."""

    n_folds: int = 5
    seed: int = 42
    stratify_by: str = "cell_type"
    group_by: str = "sample_id"


class Config(Section):
    """Every stage's settings. Paths are relative to the current folder unless absolute."""

    work_dir: Path = Path("work")  # every stage output lives under here
    data_dir: Path | None = None  # competition data; None means <work_dir>/data (prepare fills it)
    prepare: PrepareConfig = PrepareConfig()
    convert: ConvertConfig = ConvertConfig()
    folds: FoldsConfig = FoldsConfig()

    @property
    def data(self) -> Path:
        """The competition data folder (`train/`, `test/`, `train.csv`, ...)."""
        return self.data_dir if self.data_dir is not None else self.work_dir / "data"

    @property
    def layout(self) -> Layout:
        return Layout(self.work_dir, self.data)


class Layout:
    """Declared files of every stage: the Makefile mirrors these names."""

    def __init__(self, work: Path, data: Path):
        self.work = work
        self.data = data
        self.train_csv = data / "train.csv"
        self.train_images = data / "train"
        self.test_images = data / "test"
        self.sample_submission = data / "sample_submission.csv"
        self.livecell = data / "LIVECell_dataset_2021"
        self.coco_dir = work / "coco"
        self.coco_train = self.coco_dir / "train.json"
        self.coco_test = self.coco_dir / "test.json"
        self.coco_livecell_train = self.coco_dir / "livecell_train.json"
        self.coco_livecell_val = self.coco_dir / "livecell_val.json"
        self.folds_csv = work / "folds.csv"
        self.manifests = work / "manifests"

    def livecell_annotations(self, split: str) -> Path:
        return self.livecell / "annotations" / "LIVECell" / f"livecell_coco_{split}.json"

    def livecell_images(self, split: str) -> Path:
        sub = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        return self.livecell / "images" / sub


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise CellpipeError(f"config {path}: _base_ cycle")
    if not path.is_file():
        raise CellpipeError(f"missing config file: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CellpipeError(f"config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CellpipeError(f"config {path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / base, (*seen, path)), data)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["folds.n_folds=3", "work_dir=/tmp/w"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CellpipeError(f"override {item!r}: expected key.sub=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CellpipeError(f"override {item!r}: {part} is set twice")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (with its `_base_` chain), then command-line overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise CellpipeError(f"config {where}: {first['msg']}{more}") from None


def dump_yaml(section: BaseModel) -> str:
    """A config block as YAML, paths as strings."""
    return yaml.safe_dump(section.model_dump(mode="json"), sort_keys=False)
