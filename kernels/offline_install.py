# Shared cells of every cellpipe kernel: `cellpipe kernels` splices them in right after the
# kernel's `parameters` cell (which sets BUNDLE and COMPETITION). Standard library only: cellpipe
# is not installed yet.

# %% [markdown]
# ## Install cellpipe offline
# The bundle dataset holds cellpipe's wheel and those of any dependency the Kaggle image lacks;
# pip installs them without an index, so the kernel runs with the internet off. The weights are
# a Kaggle Model attached to the kernel (or inside the bundle). Kaggle mounts inputs at
# `/kaggle/input/<slug>/` or, in newer kernels, deeper (`competitions/<slug>/`,
# `datasets/<owner>/<slug>/`, `models/<owner>/<slug>/<framework>/<variation>/<version>/`): all
# are found by the file they hold.

# %%
import importlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
UNPACKED = Path(tempfile.gettempdir()) / "cellpipe-bundle"  # zipped bundle folders, unpacked


def find_input(marker: str, name: str) -> Path:
    """The input folder holding `marker`: the one below a folder `name`, else the only one."""
    found = sorted({p.parent for depth in range(1, 8) for p in INPUT.glob("*/" * depth + marker)})
    named = [p for p in found if name in p.relative_to(INPUT).parts]
    if len(named) == 1:
        return named[0]
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"expected one folder with {marker} under {INPUT} (is {name!r} attached?), "
        f"found {[str(p) for p in found]}"
    )


def bundle_file(relative: str) -> Path:
    """A bundle or weights file by its manifest path, wherever the upload put it (zips unpacked
    once)."""
    name = Path(relative).name
    for root in (BUNDLE_DIR, WEIGHTS_DIR, UNPACKED):
        if (root / relative).is_file():
            return root / relative
        hits = sorted(root.rglob(name)) if root.is_dir() else []
        if hits:
            return hits[0]
    archives = sorted({*BUNDLE_DIR.rglob("*.zip"), *WEIGHTS_DIR.rglob("*.zip")})
    if archives and not UNPACKED.is_dir():
        for archive in archives:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(UNPACKED / archive.stem)
        return bundle_file(relative)
    raise FileNotFoundError(f"{relative} is not in the bundle {BUNDLE_DIR}")


BUNDLE_DIR = find_input("cellpipe-bundle.json", BUNDLE)
DATA = find_input("sample_submission.csv", COMPETITION)
MANIFEST = json.loads((BUNDLE_DIR / "cellpipe-bundle.json").read_text())
WEIGHTS = MANIFEST["weights"]
WEIGHTS_DIR = BUNDLE_DIR
if WEIGHTS["as"] == "model":  # a Kaggle Model attached to the kernel
    WEIGHTS_DIR = find_input("cellpipe-weights.json", WEIGHTS["model"])
wheels = [str(bundle_file(w)) for w in MANIFEST["wheels"]]
subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *wheels],
    check=True,
)
importlib.invalidate_caches()


def check_requirements() -> None:
    """Print cellpipe's requirements as this image has them; stop with one line naming those it
    lacks (a version outside cellpipe's range is printed, not fatal)."""
    import re
    from importlib import metadata

    found, missing = [], []
    for spec in metadata.requires("cellpipe") or []:
        if ";" in spec:
            continue  # an extra's (dev, detectron2)
        name = re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0]
        try:
            found.append(
                f"{name} {metadata.version(name)} (cellpipe: {spec[len(name) :] or 'any'})"
            )
        except metadata.PackageNotFoundError:
            missing.append(spec)
    print("packages:", "; ".join(found))
    if missing:
        raise RuntimeError(
            f"the Kaggle image lacks {', '.join(missing)}: add them to kernels.wheels and rebuild "
            "the bundle (cellpipe kernels)"
        )


check_requirements()
import pipeline  # noqa: E402

print(f"bundle {BUNDLE_DIR} (cellpipe {MANIFEST['version']}, commit {MANIFEST['commit']})")
print(f"weights {WEIGHTS_DIR}")
print(f"competition data {DATA}; cellpipe installed at {Path(pipeline.__file__).parent}")


def run(command: str, config: Path) -> None:
    """One cellpipe command in this process, as a notebook cell runs it; raises if it fails.
    An unexpected error prints its traceback (--debug): the notebook's log is all there is."""
    from pipeline.cli import main as cellpipe

    code = cellpipe(["--debug", command, "--config", str(config)])
    if code != 0:
        raise RuntimeError(f"cellpipe {command} failed (exit {code}; its message is above)")
