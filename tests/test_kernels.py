"""`cellpipe kernels`: the offline bundle, the notebooks run in a simulated Kaggle, and the checks.

Both notebooks are executed for real (nbclient + ipykernel) by a fresh virtualenv standing in for
the Kaggle image: it sees the image's packages at the image's versions (kernels/kaggle-image.txt,
installed from the index by `make kaggle-image`: torch 2.10 for the CPU, pandas 2.3, ...) but not
cellpipe, has no network, and installs cellpipe only from the bundle's wheels (pip --no-index);
inputs are mounted under a temporary /kaggle/input as newer kernels mount them.
"""

import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
from kaggle_stub import client_env
from torchvision.ops import nms

from pipeline.cli import main
from pipeline.config import MaskRCNNConfig, SyntheticConfig, load_config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import file_digest, write_json
from pipeline.core.postprocess import ClassThresholds, Thresholds
from pipeline.core.synthetic import write_dataset
from pipeline.kaggle.credentials import find_credentials
from pipeline.kaggle.metadata import check_dataset_metadata, check_kernel_metadata
from pipeline.models import build_model
from pipeline.models.checkpoints import checkpoint_meta, read_checkpoint
from pipeline.training.engine import save_checkpoint
from pipeline.training.runs import write_pretrain_summary

COMPETITION = "sartorius-cell-instance-segmentation"
ROOT = Path(__file__).resolve().parents[1]
IMAGE_PINS = dict(  # the Kaggle image's pinned versions: name -> version
    line.split("#")[0].strip().split("==")
    for line in (ROOT / "kernels" / "kaggle-image.txt").read_text().splitlines()
    if "==" in line.split("#")[0]
)
CLASSES = ["astro", "cort", "shsy5y"]  # as the training stages name them: sorted cell types
# a light Mask R-CNN: random weights, few detections, so the notebook runs in seconds on a CPU
SETTINGS = [
    "model.maskrcnn.backbone=resnet18_fpn",
    "model.maskrcnn.norm=gn",
    "model.maskrcnn.fpn_channels=16",
    "model.maskrcnn.box_head_dim=32",
    "model.maskrcnn.mask_head_channels=16",
    "model.maskrcnn.anchor_sizes=[[8],[16],[32],[64],[128]]",
    "model.maskrcnn.anchor_ratios=[1.0]",
    "model.maskrcnn.rpn_pre_nms_top_n_test=200",
    "model.maskrcnn.rpn_post_nms_top_n_test=100",
    "model.maskrcnn.detections_per_image=50",
    "predict.tta=[none,hflip]",
    "predict.device=cpu",
    "finetune.folds=[0,1]",
]
# the training kernel's config on top: two folds, two iterations each, on the CPU
TRAIN = [
    "folds.n_folds=2",
    "finetune.solver.max_iter=2",
    "finetune.solver.warmup_iters=1",
    "finetune.solver.eval_period=0",
    "finetune.solver.checkpoint_period=2",
    "finetune.solver.ims_per_batch=1",
    "finetune.solver.num_workers=0",
    "finetune.solver.device=cpu",
    "tune.rounds=1",
    "model.maskrcnn.grid.score=[0.05,0.5]",
    "model.maskrcnn.grid.mask=[0.25]",
    "model.maskrcnn.grid.min_area=[0]",
    "model.maskrcnn.grid.min_keep=[0.0]",
]


def save_model(cfg, path, seed):
    """A checkpoint in the training stages' format, random weights."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, CLASSES)
    meta = {**checkpoint_meta(cfg.model, "maskrcnn", CLASSES), "params": {}}
    best = {"score": -math.inf, "iteration": 0}
    save_checkpoint(path, {**meta, "model": model.state_dict(), "iteration": 0, "best": best})


def dummy_wheel(folder):
    """A tiny pure-Python wheel standing in for a dependency the Kaggle image lacks."""
    src = folder / "src"
    (src / "cellpipe_test_dep").mkdir(parents=True)
    (src / "cellpipe_test_dep" / "__init__.py").write_text("ANSWER = 42\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "cellpipe-test-dep"\nversion = "1.0"\n'
    )
    wheels = folder / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(wheels), str(src)],
        check=True,
    )
    return wheels


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """What `make stages` leaves: competition data, two fold models, a pretrained model,
    thresholds.json; and the settings `cellpipe kernels` runs with."""
    root = tmp_path_factory.mktemp("kernels")
    data = root / "kaggle" / "input" / "competitions" / COMPETITION
    synthetic = SyntheticConfig(
        height=96,
        width=128,
        train_images_per_type=2,
        samples_per_type=2,
        test_images=2,
        semi_supervised_images=0,
        livecell_train_images=1,
        livecell_val_images=1,
        livecell_test_images=0,
    )
    write_dataset(data, synthetic, progress=False)
    wheels = dummy_wheel(root / "dep")
    settings = [
        f"work_dir={root / 'work'}",
        f"data_dir={data}",
        *SETTINGS,
        "kernels.owner=tester",
        "kernels.include_pretrained=true",  # the training notebook's test starts from it
        "kernels.wheels=[cellpipe-test-dep]",
        f"kernels.find_links=[{wheels}]",
        "kernels.no_index=true",
        f"kernels.train_overrides=[{','.join(repr(o) for o in TRAIN)}]",
    ]
    cfg = load_config(None, settings)
    for k in (0, 1):
        save_model(cfg, cfg.layout.finetune_model("maskrcnn", k), seed=k)
    save_model(cfg, cfg.layout.pretrain_model("maskrcnn"), seed=2)
    write_pretrain_summary(cfg.layout, {"maskrcnn": cfg.layout.pretrain_model("maskrcnn")})
    # low thresholds: a random model's scores and mask probabilities are low, and the
    # submission should not be empty
    low = Thresholds(default=ClassThresholds(score=0.0, mask=0.25, min_area=1, min_keep=0.0))
    write_json(
        cfg.layout.thresholds,
        {
            "families": ["maskrcnn"],
            "weights": {"maskrcnn": 1.0},
            "thresholds": low.to_json(),
            "candidates": {"maskrcnn": {"thresholds": low.to_json()}},
        },
    )
    return root, data, settings


@pytest.fixture(scope="module")
def built(project):
    root, data, settings = project
    assert main(["kernels", *settings]) == 0
    return root / "work" / "kernels"


def test_bundle_holds_what_the_kernels_need(built, project, capsys):
    bundle = built / "bundle"
    manifest = json.loads((bundle / "cellpipe-bundle.json").read_text())
    assert manifest["slug"] == "cellpipe-bundle"
    assert manifest["checkpoints"] == [
        "checkpoints/maskrcnn-fold0-model_best.pth",
        "checkpoints/maskrcnn-fold1-model_best.pth",
    ]
    assert manifest["pretrained"] == {"maskrcnn": "pretrained/maskrcnn-model_final.pth"}
    wheels = sorted(Path(w).name for w in manifest["wheels"])
    assert wheels == ["cellpipe-0.1.0-py3-none-any.whl", "cellpipe_test_dep-1.0-py3-none-any.whl"]
    listed = [manifest[k] for k in ("config", "train_config", "thresholds")]
    for name in [*listed, *manifest["wheels"]]:
        assert (bundle / name).is_file(), name
    # the weights: a Kaggle Model instance of their own, listed and hashed in both manifests
    weights = built / "weights"
    assert manifest["weights"] == {"as": "model", "model": "cellpipe-weights"}
    marker = json.loads((weights / "cellpipe-weights.json").read_text())
    saved = [*manifest["pretrained"].values(), *manifest["checkpoints"]]
    for name in saved:
        assert (weights / name).is_file() and not (bundle / name).exists(), name
        assert marker["sha256"][name] == manifest["sha256"][name] == file_digest(weights / name)
    assert marker["checkpoints"] == manifest["checkpoints"]
    instance = json.loads((weights / "model-instance-metadata.json").read_text())
    assert (instance["ownerSlug"], instance["modelSlug"], instance["instanceSlug"]) == (
        "tester",
        "cellpipe-weights",
        "default",
    )
    assert instance["framework"] == "pyTorch" and instance["licenseName"] == "Apache 2.0"
    model = json.loads((weights / "model-metadata.json").read_text())
    assert (model["slug"], model["isPrivate"]) == ("cellpipe-weights", True)
    # the bundled config is this run's, resolved: the models load with it
    assert load_config(bundle / "config.yaml").model == load_config(None, SETTINGS).model
    with zipfile.ZipFile(bundle / manifest["wheels"][0]) as whl:
        names = whl.namelist()
    assert "pipeline/kaggle/bundle.py" in names and "pipeline/core/rle.py" in names
    assert not any("__pycache__" in n for n in names)

    dataset = json.loads((bundle / "dataset-metadata.json").read_text())
    assert dataset == {
        "id": "tester/cellpipe-bundle",
        "title": "cellpipe bundle",
        "licenses": [{"name": "CC0-1.0"}],
    }
    for kind in ("inference", "train"):
        meta = json.loads((built / kind / "kernel-metadata.json").read_text())
        assert meta["id"] == f"tester/cellpipe-{kind}"
        assert meta["enable_internet"] is False and meta["enable_gpu"] is True
        assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
        assert meta["dataset_sources"] == ["tester/cellpipe-bundle"]
        assert meta["competition_sources"] == [COMPETITION]
        assert meta["model_sources"] == ["tester/cellpipe-weights/pyTorch/default/1"]
        assert meta["machine_shape"] == "NvidiaTeslaT4"  # not the retired P100
        assert meta["docker_image_pinning_type"] == "original"
        nb = nbformat.read(built / kind / meta["code_file"], as_version=4)
        nbformat.validate(nb)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1
        assert "BUNDLE = 'cellpipe-bundle'" in params[0].source
        assert f"COMPETITION = '{COMPETITION}'" in params[0].source
        assert any("pip" in c.source and "--no-index" in c.source for c in nb.cells)

    _, _, settings = project
    capsys.readouterr()
    assert main(["kernels", *settings]) == 0
    assert "kernels: up to date" in capsys.readouterr().out


def image_site_packages() -> Path:
    """site-packages of the Kaggle image's venv (`make kaggle-image`: kernels/kaggle-image.txt
    installed from the index, for the CPU); the test skips, saying so, where it is not built
    (`make test` goes on without it where the index cannot be reached)."""
    image = Path(os.environ.get("CELLPIPE_KAGGLE_IMAGE", ROOT / ".kaggle-image")).resolve()
    if not (image / ".installed").is_file():
        why = "its build failed or stopped" if image.exists() else "not built"
        pytest.skip(
            f"no Kaggle image venv at {image} ({why}): `make kaggle-image` builds it from the index"
        )
    return next((image / "lib").glob("python*/site-packages"))


def kaggle_image(root: Path, without: tuple[str, ...] = ()) -> Path:
    """A fresh virtualenv seeing the Kaggle image's packages (less `without`), not cellpipe."""
    image = root / "image-site-packages"
    image.mkdir()
    for entry in image_site_packages().iterdir():
        if not entry.name.startswith(("__pycache__", *without)):
            (image / entry.name).symlink_to(entry)
    venv = root / "kaggle-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "kaggle_image.pth").write_text(f"{image}\n")
    return python


IMAGE_TORCH = """
import json, sys
from importlib import metadata
import torch, torchvision
from torchvision.ops import nms
given = json.load(sys.stdin)
x, w, b = (torch.tensor(given[k]) for k in ("x", "w", "b"))
print(json.dumps({
    "versions": [metadata.version("torch"), torch.__version__, torchvision.__version__],
    "cuda": torch.cuda.is_available(),
    "conv": torch.nn.functional.conv2d(x, w, b, padding=1).tolist(),
    "nms": nms(torch.tensor(given["boxes"]), torch.tensor(given["scores"]), 0.3).tolist(),
}))
"""


def test_the_image_venv_runs_its_torch_on_the_cpu(tmp_path):
    """The image's torch and torchvision, without their CUDA libraries, compute what the dev
    venv's do: a convolution and torchvision's NMS."""
    python = kaggle_image(tmp_path)
    gen = torch.Generator().manual_seed(0)
    x, w, b = (
        torch.rand(2, 3, 12, 12, generator=gen),
        torch.randn(5, 3, 3, 3, generator=gen),
        torch.randn(5, generator=gen),
    )
    corners = torch.rand(60, 2, generator=gen) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=gen) * 20], dim=1)
    scores = torch.rand(60, generator=gen)
    given = {"x": x, "w": w, "b": b, "boxes": boxes, "scores": scores}
    ran = subprocess.run(
        [python, "-c", IMAGE_TORCH],
        input=json.dumps({k: v.tolist() for k, v in given.items()}),
        capture_output=True,
        text=True,
        check=True,
    )
    image = json.loads(ran.stdout)
    torch_version, imported, torchvision_version = image["versions"]
    assert torch_version == imported.split("+")[0] == IMAGE_PINS["torch"]
    assert torchvision_version.split("+")[0] == IMAGE_PINS["torchvision"]
    assert image["cuda"] is False
    conv = torch.nn.functional.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(torch.tensor(image["conv"]), conv, rtol=1e-4, atol=1e-5)
    kept = nms(boxes, scores, 0.3)
    assert image["nms"] == kept.tolist() and 5 < len(kept) < 60  # some boxes overlap, not all


def run_in_kaggle(built, data, kind, tmp_path, monkeypatch, without=()):
    """Execute the kind's notebook in a simulated Kaggle; return /kaggle/working, the fresh
    virtualenv and the text the notebook printed."""
    from nbclient import NotebookClient

    kaggle = tmp_path / "kaggle"
    inputs, working, scratch = kaggle / "input", kaggle / "working", tmp_path / "tmp"
    for folder in (working, scratch):
        folder.mkdir(parents=True)
    # mounted as newer kernels mount them: competitions/<slug>, datasets/<owner>/<slug>
    (inputs / "competitions").mkdir(parents=True)
    (inputs / "competitions" / COMPETITION).symlink_to(data)
    bundle = inputs / "datasets" / "tester" / "cellpipe-bundle"
    bundle.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(built / "bundle"), str(bundle)], check=True)
    if (built / "weights").is_dir():  # a Kaggle Model: models/<owner>/<slug>/<fw>/<var>/<version>
        model = inputs / "models" / "tester" / "cellpipe-weights" / "pytorch" / "default" / "1"
        model.parent.mkdir(parents=True)
        subprocess.run(["cp", "-r", str(built / "weights"), str(model)], check=True)
    python = kaggle_image(tmp_path, without)
    no_network = "http://127.0.0.1:9"  # nothing listens there
    env = {
        "KAGGLE_INPUT_DIR": str(inputs),
        "KAGGLE_WORKING_DIR": str(working),
        "TMPDIR": str(scratch),
        "PIP_NO_INDEX": "1",
        "HTTP_PROXY": no_network,
        "HTTPS_PROXY": no_network,
        "PYTHONNOUSERSITE": "1",
        "PYTHONPATH": "",
    }
    kernel = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kaggle",
        "language": "python",
        "env": env,
    }
    spec = tmp_path / "jupyter" / "kernels" / "kaggle"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    nb = nbformat.read(built / kind / f"cellpipe-{kind}.ipynb", as_version=4)
    client = NotebookClient(
        nb, kernel_name="kaggle", timeout=300, resources={"metadata": {"path": str(working)}}
    )
    client.execute()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    venv = python.parent.parent
    assert f"cellpipe installed at {venv}" in printed  # the bundle's wheel, not this checkout
    return working, venv, printed


def test_inference_notebook_runs_offline_in_a_simulated_kaggle(
    built, project, tmp_path, monkeypatch
):
    _, data, _ = project
    working, venv, printed = run_in_kaggle(built, data, "inference", tmp_path, monkeypatch)
    assert f"torch {IMAGE_PINS['torch']} (cellpipe: " in printed  # the image's, printed
    site = next(venv.glob("lib/python*/site-packages"))
    assert (site / "cellpipe_test_dep" / "__init__.py").is_file()  # the bundled dependency
    submission = working / "submission.csv"
    assert main(["validate", str(submission), "--images", str(data / "test")]) == 0
    lines = submission.read_text().splitlines()
    assert lines[0] == "id,predicted"
    test_ids = {p.stem for p in (data / "test").iterdir()}
    assert {line.split(",")[0] for line in lines[1:]} == test_ids
    assert all(line.split(",")[1] for line in lines[1:])  # instances in every image
    assert sorted(p.name for p in working.iterdir()) == ["submission.csv"]


def test_a_package_missing_from_the_image_stops_the_notebook_in_one_line(
    built, project, tmp_path, monkeypatch
):
    from nbclient.exceptions import CellExecutionError

    _, data, _ = project
    with pytest.raises(CellExecutionError) as failed:
        run_in_kaggle(built, data, "inference", tmp_path, monkeypatch, without=("tifffile",))
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(failed.value))  # the traceback's colours
    said = [line for line in text.splitlines() if line.startswith("RuntimeError: ")]
    assert said and "the Kaggle image lacks tifffile>=" in said[-1]


FOLD_FILES = ("metrics.jsonl", "model_best.pth")


def test_training_notebook_fine_tunes_from_the_bundle(built, project, tmp_path, monkeypatch):
    _, data, _ = project
    working, _, printed = run_in_kaggle(built, data, "train", tmp_path, monkeypatch)
    out = working / "cellpipe"
    assert "weights from" in printed and "pretrain/maskrcnn/model_final.pth" in printed
    block = load_config(None, SETTINGS).model.network("maskrcnn")
    for k in (0, 1):
        saved = read_checkpoint(out / "finetune" / "maskrcnn" / f"fold{k}" / "model_best.pth")
        assert saved["iteration"] == 2 and saved["family"] == "maskrcnn"
        assert MaskRCNNConfig.model_validate(saved["model_config"]).network() == block
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["cv"]["images"] == 6  # every training image predicted out of fold
    # the output holds what inference needs, no optimizer checkpoint, COCO file or prediction
    written = sorted(str(p.relative_to(working)) for p in working.rglob("*") if p.is_file())
    folds = [f"cellpipe/finetune/maskrcnn/fold{k}/{name}" for k in (0, 1) for name in FOLD_FILES]
    assert written == sorted(
        [
            *folds,
            "cellpipe/finetune/summary.json",
            "cellpipe/thresholds.json",
            "cellpipe/config.yaml",
        ]
    )
    assert load_config(out / "config.yaml").model.family == "maskrcnn"  # resolved, no _base_


def run_kernels(project, *overrides):
    _, _, settings = project
    return main(["kernels", *settings, *overrides])


@pytest.mark.parametrize(
    "name, text",
    [
        ("kaggle.json", '{"username": "u", "key": "k"}'),
        ("access_token", "token"),
        (".env", "OTHER=1\n"),
        ("server.pem", "-----BEGIN PRIVATE KEY-----"),
        ("notes.txt", "export KAGGLE" + "_KEY=0123\n"),
    ],
)
def test_credentials_are_never_bundled(project, tmp_path, capsys, name, text):
    secret = tmp_path / name
    secret.write_text(text)
    assert run_kernels(project, f"kernels.extra_files=[{secret}]", "--force") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing to upload credentials" in err
    assert f"bundle/files/{name}" in err


def test_credentials_inside_archives_are_found(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    with zipfile.ZipFile(folder / "dep-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("dep/__init__.py", "")
        zf.writestr("dep/.env", "A=1")
    with zipfile.ZipFile(folder / "model.pth", "w") as zf:
        zf.writestr("archive/data.pkl", b"\0" * 100 + b"KAGGLE_API" + b"_TOKEN=abc")
    (folder / "big.bin").write_bytes(b"x" * ((1 << 22) - 4) + b"KAGGLE" + b"_KEY=1")  # on a seam
    (folder / "clean.txt").write_text("KAGGLE_KEY is read from the environment")
    assert find_credentials(folder) == [
        "big.bin",
        "dep-1.0-py3-none-any.whl:dep/.env",
        "model.pth:archive/data.pkl",
    ]


def test_user_errors_are_one_line(project, tmp_path, capsys):
    cases = [
        ("kernels.dataset_title=cells", "must be 6-50 characters"),
        ("kernels.inference_title=cell", "at least 5 characters"),
        (f"kernels.checkpoints=[{tmp_path / 'a' / 'm.pth'},{tmp_path / 'b' / 'm.pth'}]", "missing"),
        ("kernels.wheels=[no-such-package-cellpipe]", "pip download no-such-package-cellpipe"),
        ("kernels.train_overrides=[model.maskrcnn.fpn_channels=32]", "another maskrcnn model"),
        ("kernels.machine_shape=NvidiaTeslaP100", "Kaggle retired it (use NvidiaTeslaT4)"),
    ]
    for override, message in cases:
        assert run_kernels(project, override, "--force") == 2, override
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (override, err)
    twins = [tmp_path / run / "maskrcnn" / "fold0" / "m.pth" for run in ("a", "b")]
    for path in twins:  # the same last three parts: one bundle name for two models
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    twins = f"kernels.checkpoints=[{twins[0]},{twins[1]}]"
    assert run_kernels(project, twins, "--force") == 2
    assert "share a name" in capsys.readouterr().err


def test_an_inference_bundle_leaves_the_pretrained_model_out(project):
    root, _, _ = project
    manifest = root / "work" / "kernels" / "bundle" / "cellpipe-bundle.json"
    assert run_kernels(project, "kernels.include_pretrained=null", "--force") == 0
    assert json.loads(manifest.read_text())["pretrained"] == {}  # push_train is off
    assert not list((root / "work" / "kernels").glob("*/pretrained"))
    assert run_kernels(project, "kernels.include_pretrained=null", "kernels.push_train=true") == 0
    assert json.loads(manifest.read_text())["pretrained"] == {
        "maskrcnn": "pretrained/maskrcnn-model_final.pth"
    }
    assert run_kernels(project, "--force") == 0  # as the other tests expect it


def test_a_family_s_init_file_travels_as_where_its_fine_tuning_starts(project):
    root, _, _ = project
    start = root / "work" / "finetune" / "maskrcnn" / "fold1" / "model_best.pth"  # any weights
    manifest = root / "work" / "kernels" / "bundle" / "cellpipe-bundle.json"
    assert run_kernels(project, f"finetune.init={{maskrcnn: {start}}}", "--force") == 0
    pretrained = json.loads(manifest.read_text())["pretrained"]
    assert pretrained == {"maskrcnn": "pretrained/maskrcnn-model_best.pth"}
    bundled = root / "work" / "kernels" / "weights" / pretrained["maskrcnn"]
    assert file_digest(bundled) == file_digest(start)
    assert run_kernels(project, "--force") == 0  # as the other tests expect it


def test_weights_as_dataset_go_inside_the_bundle(project):
    root, _, _ = project
    kernels = root / "work" / "kernels"
    assert run_kernels(project, "kernels.weights_as=dataset", "--force") == 0
    manifest = json.loads((kernels / "bundle" / "cellpipe-bundle.json").read_text())
    assert manifest["weights"] == {"as": "dataset"} and not (kernels / "weights").exists()
    saved = [*manifest["checkpoints"], *manifest["pretrained"].values()]
    assert len(saved) == 3  # two folds and the pretrained model
    for name in saved:
        assert file_digest(kernels / "bundle" / name) == manifest["sha256"][name]
    meta = json.loads((kernels / "inference" / "kernel-metadata.json").read_text())
    assert meta["model_sources"] == []
    assert run_kernels(project, "--force") == 0  # as the other tests expect it


def test_a_detectron2_kernel_bundles_the_detectron2_wheel(project, tmp_path, capsys):
    root, _, _ = project
    wheel = tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"a wheel built for the Kaggle image")
    fold0 = root / "work" / "finetune" / "maskrcnn" / "fold0" / "model_best.pth"
    settings = [f"kernels.checkpoints=[{fold0}]", "predict.models=[maskrcnn,detectron2]"]
    missing = f"kernels.detectron2_wheel={tmp_path / 'absent.whl'}"
    assert run_kernels(project, *settings, missing, "--force") == 2
    assert "missing kernels.detectron2_wheel" in capsys.readouterr().err
    assert run_kernels(project, *settings, f"kernels.detectron2_wheel={wheel}", "--force") == 0
    manifest = json.loads(
        (root / "work" / "kernels" / "bundle" / "cellpipe-bundle.json").read_text()
    )
    assert f"wheels/{wheel.name}" in manifest["wheels"]
    bundled = root / "work" / "kernels" / "bundle" / "wheels" / wheel.name
    assert bundled.read_bytes() == wheel.read_bytes()
    assert run_kernels(project, "--force") == 0  # as the other tests expect it
    assert not any(
        "detectron2" in w
        for w in json.loads(
            (root / "work" / "kernels" / "bundle" / "cellpipe-bundle.json").read_text()
        )["wheels"]
    )


@pytest.fixture
def kaggle_client(tmp_path, monkeypatch):
    """The real kaggle client, dummy credentials, its requests going nowhere."""
    client_env(monkeypatch, None, tmp_path / "kaggle-config")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api


def _client_verdict(call) -> str:
    """'rejected' when the client's own checks refuse, 'sent' when it got as far as the network."""
    import requests

    try:
        call()
    except ValueError:
        return "rejected"
    except requests.exceptions.ConnectionError:
        return "sent"
    raise AssertionError("the client neither refused nor tried to send")


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"id": "tester/cell"},
        {"title": "cell"},
        {"language": "julia"},
        {"kernel_type": "app"},
        {"dataset_sources": ["cellpipe-bundle"]},
    ],
)
def test_kernel_metadata_checks_agree_with_the_client(built, kaggle_client, tmp_path, change):
    folder = tmp_path / "kernel"
    subprocess.run(["cp", "-r", str(built / "inference"), str(folder)], check=True)
    meta = {**json.loads((folder / "kernel-metadata.json").read_text()), **change}
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    verdict = _client_verdict(lambda: kaggle_client.kernels_push(str(folder)))
    try:
        check_kernel_metadata(meta)
        ours = "sent"
    except CellpipeError:
        ours = "rejected"
    assert ours == verdict == ("sent" if not change else "rejected")


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"id": "tester/cells"},
        {"id": "tester/" + "c" * 51},
        {"title": "cells"},
        {"licenses": []},
    ],
)
def test_dataset_metadata_checks_agree_with_the_client(built, kaggle_client, tmp_path, change):
    folder = tmp_path / "bundle"
    folder.mkdir()
    meta = {**json.loads((built / "bundle" / "dataset-metadata.json").read_text()), **change}
    (folder / "dataset-metadata.json").write_text(json.dumps(meta))
    (folder / "x.txt").write_text("x")
    verdict = _client_verdict(lambda: kaggle_client.dataset_create_new(str(folder), quiet=True))
    try:
        check_dataset_metadata(meta)
        ours = "sent"
    except CellpipeError:
        ours = "rejected"
    assert ours == verdict == ("sent" if not change else "rejected")


def test_missing_inputs_are_named(project, tmp_path, capsys):
    _, data, _ = project
    settings = [f"work_dir={tmp_path / 'empty'}", f"data_dir={data}", *SETTINGS]
    assert main(["kernels", *settings]) == 2
    err = capsys.readouterr().err
    assert "missing input" in err and "thresholds.json" in err


def test_kernel_helpers_fail_loudly(built, tmp_path):
    from pipeline.kaggle.notebooks import notebook
    from pipeline.kaggle.runtime import kaggle_config

    base = built / "bundle" / "config.yaml"
    config = kaggle_config(
        tmp_path / "k.yaml", base=base, work_dir=tmp_path / "w", tune={"rounds": 3}
    )
    cfg = load_config(config)
    assert cfg.tune.rounds == 3 and cfg.work_dir == tmp_path / "w"
    assert cfg.model == load_config(base).model
    with pytest.raises(CellpipeError, match="tune.roundz"):
        kaggle_config(tmp_path / "bad.yaml", base=base, tune={"roundz": 3})
    with pytest.raises(CellpipeError, match="parameters"):
        notebook("inference", {"BUNDLE": "cellpipe-bundle"})
