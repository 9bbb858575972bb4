"""Command `kernels`: everything a Kaggle code submission needs, built under `work/kernels/`.

- `bundle/`: the dataset the kernels read, internet off: cellpipe's wheel (built from this source
  tree) and wheels of `kernels.wheels` (dependencies the Kaggle image lacks), the test models,
  `thresholds.json`, the resolved config (`config.yaml`, and `train.yaml` for training), the
  pretrained model training starts from, `kernels.extra_files`, `dataset-metadata.json`, and the
  manifest `cellpipe-bundle.json` by which the kernels find the bundle and its files.
- `inference/`: the code-submission notebook (GPU on, internet off, the competition and the
  bundle as sources) and its `kernel-metadata.json`.
- `train/`: the fine-tuning notebook, same sources; its output is the new checkpoints.

Notebooks are made from the percent-format templates in `kernels/` (jupytext): the kernel's
`parameters` cell gets the config's values (as papermill injects them) and the shared cells of
`kernels/offline_install.py` follow it. Metadata is checked as the kaggle client checks it, and
no credential (kaggle.json, access_token, .env, *.pem, a file setting KAGGLE_KEY) may enter them.

`kaggle_config` and `run` are what the notebooks call on Kaggle once cellpipe is installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump_yaml, load_config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import file_digest, write_text
from pipeline.stage import run_stage

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout the wheel is built from
TEMPLATES = SOURCE_ROOT / "kernels"
SHARED_TEMPLATE = "offline_install"
DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
PLACEHOLDER_OWNER = "your-kaggle-username"  # until `push` knows the account
# credentials never uploaded: file names, name suffixes, and text inside any file
SECRET_NAMES = ("kaggle.json", "access_token", ".env", "credentials.json")
SECRET_SUFFIXES = (".pem",)
# spelled so that this file, which goes into the wheel, does not hold the text it looks for
SECRET_TEXT = tuple(f"{name}=".encode() for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"))
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


# --- names and metadata --------------------------------------------------------------------------


def slug(title: str) -> str:
    """The slug Kaggle derives from a title (the kaggle client compares them the same way)."""
    from slugify import slugify

    return slugify(title)


def kaggle_username() -> str | None:
    """The username of the kaggle client's config (KAGGLE_USERNAME or kaggle.json), offline."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    folder = os.environ.get("KAGGLE_CONFIG_DIR")
    if not folder:  # the client's default: ~/.kaggle, else ~/.config/kaggle on Linux
        home = Path.home() / ".kaggle"
        folder = home if home.exists() else Path.home() / ".config" / "kaggle"
    try:
        return json.loads((Path(folder) / "kaggle.json").read_text()).get("username") or None
    except (OSError, ValueError, AttributeError):
        return None


def kernel_folders(cfg: Config) -> dict[str, Path]:
    layout = cfg.layout
    return {"inference": layout.kernels_inference, "train": layout.kernels_train}


def dataset_metadata(cfg: Config, owner: str) -> dict[str, Any]:
    params = cfg.kernels
    return {
        "id": f"{owner}/{slug(params.dataset_title)}",
        "title": params.dataset_title,
        "licenses": [{"name": params.license}],
    }


def kernel_metadata(cfg: Config, owner: str, kind: str) -> dict[str, Any]:
    params = cfg.kernels
    title = params.inference_title if kind == "inference" else params.train_title
    return {
        "id": f"{owner}/{slug(title)}",
        "title": title,
        "code_file": f"{slug(title)}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": not params.public,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,  # the client's default is true: a code submission needs false
        "dataset_sources": [f"{owner}/{slug(params.dataset_title)}"],
        "competition_sources": [cfg.prepare.competition],
        "kernel_sources": [],
        "model_sources": [],
    }


def check_dataset_metadata(meta: dict[str, Any]) -> None:
    """The kaggle client's checks before `datasets create`, as one-line errors."""
    owner, _, name = str(meta.get("id", "")).partition("/")
    title = str(meta.get("title", ""))
    if not owner or not name or "/" in name:
        raise CellpipeError(f"dataset id {meta.get('id')!r}: expected owner/slug")
    if not 6 <= len(name) <= 50:
        raise CellpipeError(
            f"dataset slug {name!r}: must be 6-50 characters (kernels.dataset_title)"
        )
    if not 6 <= len(title) <= 50:
        raise CellpipeError(f"dataset title {title!r}: must be 6-50 characters")
    if len(meta.get("licenses", [])) != 1:
        raise CellpipeError("dataset metadata: exactly one license")


def check_kernel_metadata(meta: dict[str, Any]) -> None:
    """The kaggle client's checks before `kernels push`, as one-line errors."""
    owner, _, name = str(meta.get("id", "")).partition("/")
    title = meta.get("title")
    if not owner or not name or "/" in name:
        raise CellpipeError(f"kernel id {meta.get('id')!r}: expected owner/slug")
    if len(name) < 5:
        raise CellpipeError(f"kernel slug {name!r}: must be at least 5 characters")
    if title is not None and (len(title) < 5 or slug(title) != name):
        raise CellpipeError(f"kernel title {title!r}: 5+ characters, slugified to {name!r}")
    if meta.get("language") != "python" or meta.get("kernel_type") not in ("script", "notebook"):
        raise CellpipeError("kernel metadata: language python, kernel_type script or notebook")
    if not meta.get("code_file"):
        raise CellpipeError("kernel metadata: no code_file")
    for source in [*meta.get("dataset_sources", []), *meta.get("kernel_sources", [])]:
        if source.count("/") != 1 or not all(source.split("/")):
            raise CellpipeError(f"kernel source {source!r}: expected owner/slug")


def write_metadata(cfg: Config, owner: str, bundle: Path, kernels: dict[str, Path]) -> None:
    """dataset-metadata.json and each kernel-metadata.json, for `owner`, checked."""
    meta = dataset_metadata(cfg, owner)
    check_dataset_metadata(meta)
    write_text(bundle / DATASET_METADATA, json.dumps(meta, indent=2) + "\n")
    for kind, folder in kernels.items():
        meta = kernel_metadata(cfg, owner, kind)
        check_kernel_metadata(meta)
        write_text(folder / KERNEL_METADATA, json.dumps(meta, indent=2) + "\n")


# --- credentials ---------------------------------------------------------------------------------


def _is_secret_name(name: str) -> bool:
    base = Path(name).name
    return base in SECRET_NAMES or base.startswith(".env.") or base.endswith(SECRET_SUFFIXES)


def _chunks(stream: Any, size: int = 1 << 22) -> Iterator[bytes]:
    tail = b""
    while block := stream.read(size):
        yield tail + block
        tail = block[-32:]  # a pattern split across two blocks is still seen


def _has_secret_text(stream: Any) -> bool:
    return any(p in chunk for chunk in _chunks(stream) for p in SECRET_TEXT)


def find_credentials(folder: Path) -> list[str]:
    """Files under `folder`, and members of its zips (wheels, checkpoints), holding credentials."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        where = str(path.relative_to(folder))
        if _is_secret_name(path.name):
            found.append(where)
            continue
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    with zf.open(member) as f:
                        if _is_secret_name(member) or _has_secret_text(f):
                            found.append(f"{where}:{member}")
            continue
        with open(path, "rb") as f:
            if _has_secret_text(f):
                found.append(where)
    return found


def refuse_credentials(folder: Path) -> None:
    """A one-line error when anything under `folder` looks like a credential."""
    found = find_credentials(folder)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise CellpipeError(
            f"refusing to upload credentials: {found[0]}{more} "
            "(kaggle.json, access_token, .env, *.pem, or a file setting KAGGLE_KEY)"
        )


# --- wheels --------------------------------------------------------------------------------------


def _pip(args: list[str], what: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise CellpipeError(f"{what} failed: {said[-1] if said else f'exit {done.returncode}'}")


def build_cellpipe_wheel(dest: Path) -> None:
    """cellpipe's wheel, built from a clean copy of this source tree (no build isolation)."""
    for needed in ("pyproject.toml", "README.md", "pipeline"):
        if not (SOURCE_ROOT / needed).exists():
            raise CellpipeError(f"no cellpipe source tree at {SOURCE_ROOT} (missing {needed})")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "cellpipe"
        shutil.copytree(
            SOURCE_ROOT / "pipeline",
            src / "pipeline",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(SOURCE_ROOT / name, src / name)
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dest), str(src)],
            "building cellpipe's wheel",
        )


def download_wheels(cfg: Config, dest: Path) -> None:
    """Wheels of `kernels.wheels` for the Kaggle image (its Python and platforms), no deps."""
    params = cfg.kernels
    if not params.wheels:
        return
    args = ["download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    args += ["--python-version", params.python_version]
    for platform in params.platforms:
        args += ["--platform", platform]
    for folder in params.find_links:
        args += ["--find-links", str(folder)]
    if params.no_index:
        args.append("--no-index")
    _pip([*args, *params.wheels], f"pip download {' '.join(params.wheels)}")


# --- notebooks -----------------------------------------------------------------------------------


def _template_cells(name: str) -> list[Any]:
    import jupytext

    path = TEMPLATES / f"{name}.py"
    if not path.is_file():
        raise CellpipeError(f"missing kernel template {path}")
    text = path.read_text()
    start = text.find("# %%")  # what precedes the first cell is the template's own note
    return jupytext.reads(text[max(start, 0) :], fmt="py:percent").cells


def _assigned_names(source: str) -> list[str]:
    tree = ast.parse(source)
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]


def notebook(kind: str, parameters: dict[str, Any]) -> str:
    """The kernel's .ipynb text: its template with `parameters` injected and the shared cells."""
    import nbformat

    cells = _template_cells(kind)
    where = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    if len(where) != 1:
        raise CellpipeError(f"kernels/{kind}.py: expected one cell tagged parameters")
    cell = cells[where[0]]
    names = _assigned_names(cell.source)
    if sorted(names) != sorted(parameters):
        raise CellpipeError(
            f"kernels/{kind}.py: its parameters {sorted(names)} are not {sorted(parameters)}"
        )
    cell.source = "# parameters written by `cellpipe kernels`\n" + "\n".join(
        f"{name} = {parameters[name]!r}" for name in names
    )
    cells[where[0] + 1 : where[0] + 1] = _template_cells(SHARED_TEMPLATE)
    nb = nbformat.v4.new_notebook(cells=[], metadata=NOTEBOOK_METADATA)
    for c in cells:  # fresh cells: ids, no jupytext metadata
        new = (
            nbformat.v4.new_markdown_cell
            if c.cell_type == "markdown"
            else nbformat.v4.new_code_cell
        )
        nb.cells.append(
            new(c.source, metadata={"tags": c.metadata["tags"]} if "tags" in c.metadata else {})
        )
    nbformat.validate(nb)
    return nbformat.writes(nb)


# --- the bundle ----------------------------------------------------------------------------------


def bundle_name(path: Path) -> str:
    """A checkpoint's bundle name: fold0/model_best.pth -> fold0-model_best.pth."""
    return f"{path.parent.name}-{path.name}" if path.parent.name else path.name


def bundled_models(cfg: Config) -> list[Path]:
    """The bundled test models: `kernels.checkpoints`, else the ones `predict` would use."""
    from pipeline.predict import test_models

    return list(cfg.kernels.checkpoints) or test_models(cfg)


def train_config(cfg: Config) -> Config:
    """The training kernel's config: `kernels.train_config` (else this run's) + overrides."""
    params = cfg.kernels
    if params.train_config is not None:
        return load_config(params.train_config, params.train_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(dump_yaml(cfg))
        return load_config(path, params.train_overrides)


def pretrained_model(cfg: Config, train: Config) -> Path | None:
    """The file the training kernel's finetune starts from, if it has to be bundled."""
    init = train.finetune.init
    if init == "random" or (init == "pretrain" and not cfg.kernels.include_pretrained):
        return None
    if init != "pretrain":
        return Path(init)
    if train.model != cfg.model:
        raise CellpipeError(
            "kernels.train_config has another model than this run's pretrained one: set "
            "kernels.include_pretrained=false (pretrain on Kaggle) or finetune.init"
        )
    return cfg.layout.pretrain_model


def inputs(cfg: Config) -> list[Path]:
    """What `kernels` reads: models, thresholds, config, templates and cellpipe's source."""
    layout, params = cfg.layout, cfg.kernels
    files = [layout.thresholds, *bundled_models(cfg), *params.extra_files, *params.find_links]
    pretrained = pretrained_model(cfg, train_config(cfg))
    if pretrained is not None:
        files.append(pretrained)
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
    from pipeline.leaderboard import git_commit

    layout, params = cfg.layout, cfg.kernels
    owner = params.owner or kaggle_username()
    models = bundled_models(cfg)
    names = [bundle_name(p) for p in models]
    if not models:
        raise CellpipeError("no test models to bundle (kernels.checkpoints, predict.checkpoints)")
    if len(set(names)) != len(names):
        raise CellpipeError(f"two bundled models share a name: {names} (rename their folders)")
    with atomic_dir(layout.kernels_dir) as out:
        bundle = out / layout.kernels_bundle.name
        folders = {k: out / p.name for k, p in kernel_folders(cfg).items()}
        train = train_config(cfg)
        write_text(bundle / "config.yaml", dump_yaml(cfg))
        write_text(bundle / "train.yaml", dump_yaml(train))
        pretrained = pretrained_model(cfg, train)
        checkpoints = [f"checkpoints/{n}" for n in names]
        for path, name in zip(models, checkpoints):
            _place(path, bundle / name, link=True)
        if pretrained is not None:
            _place(pretrained, bundle / "pretrained" / pretrained.name, link=True)
        _place(layout.thresholds, bundle / "thresholds.json")
        for path in params.extra_files:
            _place(path, bundle / "files" / path.name)
        wheels = bundle / "wheels"
        build_cellpipe_wheel(wheels)
        download_wheels(cfg, wheels)
        manifest = {
            "slug": slug(params.dataset_title),
            "competition": cfg.prepare.competition,
            "version": _version(),
            "commit": git_commit(),
            "config": "config.yaml",
            "train_config": "train.yaml",
            "thresholds": "thresholds.json",
            "checkpoints": checkpoints,
            "pretrained": None if pretrained is None else f"pretrained/{pretrained.name}",
            "wheels": sorted(f"wheels/{p.name}" for p in wheels.glob("*.whl")),
            "files": [f"files/{p.name}" for p in params.extra_files],
            "sources": {n: str(p) for n, p in zip(checkpoints, models)},
            "sha256": {n: file_digest(bundle / n) for n in checkpoints},
        }
        write_text(bundle / layout.kernels_manifest.name, json.dumps(manifest, indent=2) + "\n")
        parameters = {"BUNDLE": manifest["slug"], "COMPETITION": cfg.prepare.competition}
        for kind, folder in folders.items():
            code_file = kernel_metadata(cfg, PLACEHOLDER_OWNER, kind)["code_file"]
            write_text(folder / code_file, notebook(kind, parameters))
        write_metadata(cfg, owner or PLACEHOLDER_OWNER, bundle, folders)
        refuse_credentials(out)
    size = sum(p.stat().st_size for p in layout.kernels_bundle.rglob("*") if p.is_file())
    print(
        f"kernels: bundle {layout.kernels_bundle} ({len(models)} models, "
        f"{len(manifest['wheels'])} wheels, {size / 2**20:.1f} MiB); notebooks "
        + ", ".join(str(p) for p in kernel_folders(cfg).values())
    )
    if owner is None:
        print(
            f"kernels: no Kaggle username (kernels.owner or the Kaggle config): ids say "
            f"{PLACEHOLDER_OWNER!r} until `cellpipe push` fills in the account's"
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpipe")
    except PackageNotFoundError:
        return "unknown"


def main(cfg: Config, args: argparse.Namespace) -> None:
    run_stage(
        "kernels",
        cfg,
        inputs=inputs(cfg),
        outputs=[cfg.layout.kernels_manifest, *kernel_folders(cfg).values()],
        params=cfg,
        body=lambda: build(cfg),
        force=args.force,
    )


# --- inside a Kaggle kernel ----------------------------------------------------------------------


def kaggle_config(path: Path, base: Path, **settings: Any) -> Path:
    """Write and check a kernel's run config: `_base_: <the bundle's config>` plus `settings`."""
    import yaml

    plain = json.loads(json.dumps(settings, default=str))  # Paths as strings
    write_text(path, yaml.safe_dump({"_base_": str(base), **plain}, sort_keys=False))
    load_config(path)
    return path


def run(command: str, config: Path) -> None:
    """One cellpipe command in this process, as a notebook cell runs it; raises if it fails."""
    from pipeline.cli import main as cellpipe

    code = cellpipe([command, "--config", str(config)])
    if code != 0:
        raise RuntimeError(f"cellpipe {command} failed (exit {code}; its message is above)")
