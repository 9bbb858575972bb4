"""`cellpipe kernels`: everything a Kaggle code submission needs, under `work/kernels/`.

- `bundle/`: the dataset the kernels read, internet off: cellpipe's wheel (built from this source
  tree) and wheels of `kernels.wheels` (dependencies the Kaggle image lacks), `thresholds.json`,
  the resolved config (`config.yaml`, and `train.yaml` for training), `kernels.extra_files`,
  `dataset-metadata.json`, and the manifest `cellpipe-bundle.json` by which the kernels find the
  bundle and its files.
- the weights (test models, pretrained models training starts from): with `kernels.weights_as`
  `model` (the default) in `weights/`, a Kaggle Model instance versioned apart from the code
  (`model-metadata.json`, `model-instance-metadata.json`, and `cellpipe-weights.json` by which
  the kernels find it); with `dataset`, inside the bundle.
- `inference/`: the code-submission notebook (GPU on, internet off, the competition and the
  bundle as sources) and its `kernel-metadata.json`.
- `train/`: the fine-tuning notebook, same sources; its output is the new checkpoints.

Metadata is checked as the kaggle client checks it, and no credential (kaggle.json,
access_token, .env, *.pem, a file setting KAGGLE_KEY) may enter them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.config import Config, dump_yaml, load_config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import file_digest, write_text
from pipeline.kaggle.client import kaggle_username
from pipeline.kaggle.credentials import refuse_credentials
from pipeline.kaggle.metadata import (
    PLACEHOLDER_OWNER,
    kernel_folders,
    kernel_metadata,
    slug,
    write_metadata,
    write_model_metadata,
)
from pipeline.kaggle.notebooks import TEMPLATES, notebook
from pipeline.kaggle.wheels import (
    SOURCE_ROOT,
    build_cellpipe_wheel,
    detectron2_wheel,
    download_wheels,
)

WEIGHTS_MARKER = "cellpipe-weights.json"  # in the Kaggle Model instance: how kernels find it


def bundle_name(path: Path) -> str:
    """A checkpoint's bundle name: maskrcnn/fold0/model_best.pth -> maskrcnn-fold0-model_best.pth
    (the last three parts of its path)."""
    return "-".join(path.parts[-3:])


def bundled_models(cfg: Config) -> list[Path]:
    """The bundled test models: `kernels.checkpoints`, else the ones `predict` would use."""
    fold_models = [path for paths in cfg.fold_models().values() for path in paths]
    return list(cfg.kernels.checkpoints or cfg.predict.checkpoints) or fold_models


def train_config(cfg: Config) -> Config:
    """The training kernel's config: `kernels.train_config` (else this run's) + overrides."""
    params = cfg.kernels
    if params.train_config is not None:
        return load_config(params.train_config, params.train_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(dump_yaml(cfg))
        return load_config(path, params.train_overrides)


def pretrained_models(cfg: Config, train: Config) -> dict[str, Path]:
    """Family -> the file the training kernel's finetune starts it from, to be bundled: its
    `finetune.init` file, or its pretrained model (`include_pretrained`); families that start
    from random weights, or pretrain on Kaggle, have none."""
    starts = {f: train.finetune.start(f) for f in train.trained_families}
    files = {f: Path(s) for f, s in starts.items() if s not in ("random", "pretrain")}
    summary = cfg.layout.pretrain_summary  # an input of the stage: absent, it stops before
    pretrain = [f for f, s in starts.items() if s == "pretrain"]
    if not pretrain or not cfg.kernels.bundles_pretrained or not summary.is_file():
        return files
    models = {f: Path(p) for f, p in json.loads(summary.read_text())["families"].items() if p}
    for family in pretrain:
        if family in models and train.model.network(family) != cfg.model.network(family):
            raise CellpipeError(
                f"kernels.train_config has another {family} model than this run's pretrained "
                "one: set kernels.include_pretrained=false (pretrain on Kaggle) or finetune.init"
            )
    return {**files, **{f: models[f] for f in pretrain if f in models}}


def inputs(cfg: Config) -> list[Path]:
    """What `kernels` reads: models, thresholds, config, templates and cellpipe's source."""
    layout, params = cfg.layout, cfg.kernels
    files = [*params.extra_files, *params.find_links]
    if params.inference:
        files += [layout.thresholds, *bundled_models(cfg)]
    train = train_config(cfg)
    starts = {train.finetune.start(f) for f in train.trained_families}
    if "pretrain" in starts and params.bundles_pretrained:
        files.append(layout.pretrain_summary)
    files += pretrained_models(cfg, train).values()
    if params.train_config is not None:
        files.append(params.train_config)
    files += sorted(TEMPLATES.glob("*.py"))
    files += [SOURCE_ROOT / "pyproject.toml", *sorted((SOURCE_ROOT / "pipeline").rglob("*.py"))]
    return list(dict.fromkeys(files))


def _place(source: Path, target: Path, link: bool = False) -> None:
    """Copy `source` to `target`, or hard-link it (a checkpoint: stages replace, never edit)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if link:
            os.link(source, target)
            return
    except OSError:
        pass
    shutil.copy2(source, target)


def build(cfg: Config) -> None:
    """Write work/kernels/{bundle,inference,train}, whole or not at all."""
    from pipeline.core.fileio import atomic_dir
    from pipeline.core.provenance import git_commit

    layout, params = cfg.layout, cfg.kernels
    owner = params.owner or kaggle_username()
    models = bundled_models(cfg) if params.inference else []
    names = [bundle_name(p) for p in models]
    if params.inference and not models:
        raise CellpipeError("no test models to bundle (kernels.checkpoints, predict.checkpoints)")
    if len(set(names)) != len(names):
        raise CellpipeError(f"two bundled models share a name: {names} (rename their folders)")
    with atomic_dir(layout.kernels_dir) as out:
        bundle = out / layout.kernels_bundle.name
        folders = {k: out / p.name for k, p in kernel_folders(cfg).items()}
        train = train_config(cfg)
        write_text(bundle / "config.yaml", dump_yaml(cfg))
        write_text(bundle / "train.yaml", dump_yaml(train))
        trained = pretrained_models(cfg, train)
        as_model = params.weights_as == "model" and bool(models or trained)
        weights = out / layout.kernels_weights.name if as_model else bundle
        checkpoints = [f"checkpoints/{n}" for n in names]
        for path, name in zip(models, checkpoints):
            _place(path, weights / name, link=True)
        pretrained = {}
        for key, path in trained.items():
            pretrained[key] = f"pretrained/{key}-{path.name}"
            _place(path, weights / pretrained[key], link=True)
        digests = {n: file_digest(weights / n) for n in [*checkpoints, *pretrained.values()]}
        if params.inference:
            _place(layout.thresholds, bundle / "thresholds.json")
        for path in params.extra_files:
            _place(path, bundle / "files" / path.name)
        wheels = bundle / "wheels"
        build_cellpipe_wheel(wheels)
        download_wheels(cfg, wheels)
        if "detectron2" in (*cfg.predict.models, train.model.family):
            wheel = detectron2_wheel(cfg)
            _place(wheel, wheels / wheel.name)
        manifest = {
            "slug": slug(params.dataset_title),
            "competition": cfg.prepare.competition,
            "version": _version(),
            "commit": git_commit(),
            "config": "config.yaml",
            "train_config": "train.yaml",
            "thresholds": "thresholds.json" if params.inference else None,
            "checkpoints": checkpoints,
            "pretrained": pretrained,  # family -> the file its fine-tuning starts from
            "wheels": sorted(f"wheels/{p.name}" for p in wheels.glob("*.whl")),
            "files": [f"files/{p.name}" for p in params.extra_files],
            "sources": {n: str(p) for n, p in zip(checkpoints, models)},
            "sha256": digests,
            # where checkpoints and pretrained models are: this bundle, or the Kaggle Model
            "weights": {"as": "model", "model": slug(params.model_title)}
            if as_model
            else {"as": "dataset"},
        }
        write_text(bundle / layout.kernels_manifest.name, json.dumps(manifest, indent=2) + "\n")
        if as_model:
            marker = {k: manifest[k] for k in ("checkpoints", "pretrained", "sha256", "commit")}
            write_text(weights / WEIGHTS_MARKER, json.dumps(marker, indent=2) + "\n")
        parameters = {"BUNDLE": manifest["slug"], "COMPETITION": cfg.prepare.competition}
        for kind, folder in folders.items():
            code_file = kernel_metadata(cfg, PLACEHOLDER_OWNER, kind)["code_file"]
            write_text(folder / code_file, notebook(kind, parameters))
        write_metadata(cfg, owner or PLACEHOLDER_OWNER, bundle, folders, 1 if as_model else None)
        if as_model:
            write_model_metadata(cfg, owner or PLACEHOLDER_OWNER, weights)
        refuse_credentials(out)
    size = _mib(layout.kernels_bundle)
    print(
        f"kernels: bundle {layout.kernels_bundle} ({len(manifest['wheels'])} wheels, "
        + (
            f"{size:.1f} MiB); weights {layout.kernels_weights} ({len(models)} models, "
            f"{_mib(layout.kernels_weights):.1f} MiB, a Kaggle Model)"
            if as_model
            else f"{len(models)} models, {size:.1f} MiB)"
        )
        + "; notebooks "
        + ", ".join(str(p) for p in kernel_folders(cfg).values())
    )
    if owner is None:
        print(
            f"kernels: no Kaggle username (kernels.owner or the Kaggle config): ids say "
            f"{PLACEHOLDER_OWNER!r} until `cellpipe push` fills in the account's"
        )


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpipe")
    except PackageNotFoundError:
        return "unknown"
