"""Training loop and stages: loss goes down, exact resume, divergence, pretrain -> finetune, DDP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_data import tiny_coco, write_coco
from test_models import TINY, maskrcnn

from pipeline import cli
from pipeline.config import MaskRCNNConfig, SolverConfig
from pipeline.core.errors import CellpipeError
from pipeline.models.checkpoints import read_checkpoint
from pipeline.models.rcnn import maskrcnn_targets
from pipeline.training.data import CocoInstances
from pipeline.training.engine import Context, fit, lr_factor
from pipeline.training.records import ClassMapping, load_records

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[1]
CPU = Context(0, 1, torch.device("cpu"))
SOLVER = SolverConfig(
    max_iter=12,
    base_lr=0.02,
    warmup_iters=2,
    checkpoint_period=4,
    eval_period=5,
    log_period=1,
    num_workers=0,
    device="cpu",
)


def dataset(root: Path, n_images: int = 4) -> tuple[CocoInstances, list[str]]:
    coco = tiny_coco(root, n_images=n_images)
    mapping = ClassMapping.from_categories(coco["categories"])
    records, _ = load_records(coco, root, mapping)
    return CocoInstances(records, maskrcnn_targets), mapping.classes


def train(
    run_dir: Path, data: CocoInstances, solver: SolverConfig, validate=None
) -> torch.nn.Module:
    torch.manual_seed(0)
    model = maskrcnn()
    meta = {"model_config": TINY.model_dump(mode="json"), "classes": ["a", "b"], "params": {"x": 1}}
    fit(model, data, solver, run_dir, meta, CPU, validate=validate)
    return model


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule():
    step = SolverConfig(max_iter=100, warmup_iters=10, warmup_factor=0.1, lr_steps=[0.5, 0.8])
    assert lr_factor(step, 0) == pytest.approx(0.1)
    assert lr_factor(step, 5) == pytest.approx(0.55)
    assert [lr_factor(step, i) for i in (10, 49, 50, 79, 80)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    cosine = step.model_copy(update={"schedule": "cosine", "warmup_iters": 0})
    assert [lr_factor(cosine, i) for i in (0, 50, 100)] == pytest.approx([1, 0.5, 0])


def test_a_few_iterations_decrease_the_loss(tmp_path):
    data, _ = dataset(tmp_path / "data")
    solver = SOLVER.model_copy(update={"max_iter": 30, "eval_period": 0})
    train(tmp_path / "run", data, solver)
    losses = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 30
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    final = read_checkpoint(tmp_path / "run" / "model_final.pth")
    assert final["iteration"] == 30 and "optimizer" not in final
    assert (tmp_path / "run" / "model_best.pth").is_file()  # no validation: the final model


def test_bfloat16_autocasts_cpu_training_and_tracks_float32(tmp_path):
    """On the CPU, amp_dtype bfloat16 autocasts the forward pass (float16 does not: it falls
    back to float32); weights stay float32 and the losses follow float32 training's."""
    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.models.flow_maps import flow_targets

    coco = tiny_coco(tmp_path / "data", n_images=2)
    mapping = ClassMapping.from_categories(coco["categories"])
    records, _ = load_records(coco, tmp_path / "data", mapping)
    data = CocoInstances(records, flow_targets)
    cfg = load_config(overrides=["model.flow_unet.channels=[8,16]"]).model
    solver = SOLVER.model_copy(
        update={"max_iter": 30, "eval_period": 0, "optimizer": "adamw", "base_lr": 3e-3}
    )
    meta = {"model_config": {}, "classes": ["a", "b"], "params": {"x": 1}}
    runs = {}
    for amp, dtype in ((False, "float32"), (True, "bfloat16"), (True, "float16")):
        torch.manual_seed(0)
        model = build_model(cfg, ["a", "b"], "flow_unet")
        seen = set()
        model.net.down[0].register_forward_hook(lambda m, args, out, seen=seen: seen.add(out.dtype))
        settings = {"amp": amp, "amp_dtype": "float16" if dtype == "float32" else dtype}
        fit(model, data, solver.model_copy(update=settings), tmp_path / dtype, meta, CPU)
        assert seen == {torch.bfloat16 if dtype == "bfloat16" else torch.float32}, dtype
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[dtype] = [m["loss"] for m in metrics(tmp_path / dtype) if "loss" in m]
    first, last = sum(runs["float32"][:5]), sum(runs["float32"][-5:])
    assert last < 0.8 * first  # training works, and bfloat16 follows it
    assert sum(runs["bfloat16"][-5:]) == pytest.approx(last, rel=0.1)
    assert runs["float16"] == runs["float32"]  # no autocast: the same computation


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.02), ("adamw", 1e-3)])
def test_resume_after_interrupt_gives_the_same_weights(tmp_path, optimizer, lr):
    data, _ = dataset(tmp_path / "data")
    solver = SOLVER.model_copy(update={"optimizer": optimizer, "base_lr": lr})
    scores = iter([0.3, 0.5, 0.6])
    straight = train(tmp_path / "a", data, solver, validate=lambda m: {"map_iou": next(scores)})

    def interrupt(model):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the loop stops after one iteration
        return {"map_iou": 0.3}

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", data, solver, validate=interrupt)
    stopped = read_checkpoint(tmp_path / "b" / "checkpoint.pth")
    assert stopped["iteration"] == 6 and not (tmp_path / "b" / "model_final.pth").exists()
    scores = iter([0.5, 0.6])
    resumed = train(tmp_path / "b", data, solver, validate=lambda m: {"map_iou": next(scores)})
    group = read_checkpoint(tmp_path / "b" / "checkpoint.pth")["optimizer"]["param_groups"][0]
    assert ("betas" in group) == (optimizer == "adamw")  # the optimizer asked for, resumed
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    log, reference = metrics(tmp_path / "b"), metrics(tmp_path / "a")
    assert [m["iteration"] for m in log if "loss" in m] == list(range(1, 13))
    assert [m.get("loss") for m in log] == [m.get("loss") for m in reference]
    best = read_checkpoint(tmp_path / "b" / "model_best.pth")
    assert (best["iteration"], best["best"]["score"]) == (12, 0.6)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data, _ = dataset(tmp_path / "data")
    solver = SOLVER.model_copy(
        update={"base_lr": 1e6, "warmup_iters": 0, "clip_grad_norm": 0, "checkpoint_period": 1}
    )
    with pytest.raises(CellpipeError, match="diverged .* the last good checkpoint is"):
        train(tmp_path / "run", data, solver)
    last = read_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_no_readable_training_image_is_an_error(tmp_path):
    data, _ = dataset(tmp_path / "data", n_images=2)
    for path in (tmp_path / "data" / "train").iterdir():
        path.write_bytes(b"garbage")
    with (
        pytest.warns(UserWarning, match="unreadable"),
        pytest.raises(CellpipeError, match="no readable training image"),
    ):
        train(tmp_path / "run", data, SOLVER)


# --- the stages --------------------------------------------------------------------------------


def workspace(tmp_path: Path) -> tuple[Path, list[str]]:
    """Data folder, COCO files, folds.csv and a tiny config; returns (config, base args)."""
    data, work = tmp_path / "data", tmp_path / "work"
    train = tiny_coco(data, n_images=6, categories=("astro", "cort"))
    write_coco(work / "coco" / "train.json", train)
    lines = {**train, "categories": [{"id": 1, "name": "A172"}, {"id": 2, "name": "SHSY5Y"}]}
    write_coco(work / "coco" / "livecell_train.json", lines)
    write_coco(work / "coco" / "livecell_val.json", lines)
    stems = [Path(im["file_name"]).stem for im in train["images"]]
    pd.DataFrame({"id": stems, "fold": [0, 1, 0, 1, 0, 1]}).to_csv(work / "folds.csv", index=False)
    solver = SOLVER.model_dump(mode="json") | {"max_iter": 6, "eval_period": 3}
    config = {
        "folds": {"n_folds": 2},  # as folds.csv has them
        "model": {"maskrcnn": TINY.model_dump(mode="json")},
        "pretrain": {"solver": solver, "val_max_images": 2},
        "finetune": {"solver": solver | {"base_lr": 0.01}},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "cfg.yaml", [f"work_dir={work}", f"data_dir={data}"]


def test_pretrain_then_finetune(tmp_path, capsys):
    config, base = workspace(tmp_path)
    work = tmp_path / "work"
    assert cli.main(["pretrain", "-c", str(config), *base]) == 0
    pretrained = read_checkpoint(work / "pretrain" / "maskrcnn" / "model_final.pth")
    assert pretrained["classes"] == ["cell"] and pretrained["family"] == "maskrcnn"
    assert (work / "pretrain" / "maskrcnn" / "config.yaml").is_file()
    assert cli.main(["finetune", "-c", str(config), *base]) == 0
    out = capsys.readouterr()
    assert "class heads new (classes ['cell'] -> ['astro', 'cort'])" in out.err + out.out
    summary = json.loads((work / "finetune" / "summary.json").read_text())["maskrcnn"]
    assert set(summary["folds"]) == {"0", "1"}
    for k in (0, 1):
        best = read_checkpoint(work / "finetune" / "maskrcnn" / f"fold{k}" / "model_best.pth")
        assert best["classes"] == ["astro", "cort"] and best["iteration"] in (3, 6)
        assert summary["folds"][str(k)]["map_iou"] == best["best"]["score"]
        val = [
            m for m in metrics(work / "finetune" / "maskrcnn" / f"fold{k}") if "val_map_iou" in m
        ]
        assert [m["val_images"] for m in val] == [3, 3]  # the fold's held-out images
    assert cli.main(["finetune", "-c", str(config), *base]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_predict_only_keys_retrain_only_runs_whose_validation_read_them(tmp_path, capsys):
    """A key of `predict_only` (here detections per image) leaves runs validated once, at the
    end, done; runs whose best model validation picked along the way are trained again."""
    config, base = workspace(tmp_path)
    base = [*base, "finetune.init=random", "finetune.folds=[0]"]
    once = [*base, "finetune.solver.eval_period=0"]
    changed = "model.maskrcnn.detections_per_image=7"
    assert "detections_per_image" in MaskRCNNConfig.predict_only
    assert cli.main(["finetune", "-c", str(config), *once]) == 0
    capsys.readouterr()
    assert cli.main(["finetune", "-c", str(config), *once, changed]) == 0
    assert "finetune_maskrcnn_fold0: up to date" in capsys.readouterr().out
    assert cli.main(["finetune", "-c", str(config), *once, "model.maskrcnn.box_head_dim=32"]) == 0
    assert "up to date" not in capsys.readouterr().out  # a key that shapes the weights
    along = base  # eval_period 3
    assert cli.main(["finetune", "-c", str(config), *along]) == 0
    capsys.readouterr()
    assert cli.main(["finetune", "-c", str(config), *along, changed]) == 0
    assert "up to date" not in capsys.readouterr().out


def test_stage_user_errors_are_one_line(tmp_path, capsys):
    config, base = workspace(tmp_path)
    cases = [
        (["finetune.folds=[4]"], r"folds \[4\] to train \(finetune.folds.*has folds \[0, 1\]"),
        (["folds.n_folds=3"], r"folds \[2\] to train .* has folds \[0, 1\]"),
        (["finetune.init=/nowhere.pth"], "missing input /nowhere.pth"),
        (["finetune.categories=[HeLa]", "finetune.folds=[0]", "finetune.init=random"], "HeLa"),
        (["model.maskrcnn.backbone=vgg", "finetune.folds=[0]", "finetune.init=random"], "vgg"),
    ]
    for overrides, message in cases:
        assert cli.main(["finetune", "-c", str(config), *base, *overrides]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and re.search(message, err), err
    (tmp_path / "work" / "folds.csv").unlink()
    assert cli.main(["finetune", "-c", str(config), *base]) == 2
    assert "missing input" in capsys.readouterr().err


def test_ddp_with_two_cpu_processes(tmp_path):
    config, base = workspace(tmp_path)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pipeline", "finetune", "-c", str(config), *base,
        "finetune.init=random", "finetune.folds=[1]", "finetune.solver.max_iter=4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "work" / "finetune" / "maskrcnn" / "fold1"
    assert read_checkpoint(run / "model_best.pth")["iteration"] in (3, 4)
    checkpoint = read_checkpoint(run / "checkpoint.pth")
    assert len(checkpoint["rng"]) == 2  # both processes' RNG, for an exact resume
    log = metrics(run)
    assert [m["iteration"] for m in log if "loss" in m] == [1, 2, 3, 4]


TRAIN_UNTIL_STOPPED = """
import sys
import time
from pathlib import Path
from test_engine import SOLVER, dataset, train
root = Path(sys.argv[1])
data, _ = dataset(root / "data")
update = {"max_iter": 100000, "num_workers": 1, "checkpoint_period": 100000, "eval_period": 0}
try:
    train(root / "run", data, SOLVER.model_copy(update=update))
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


def test_sigterm_to_the_process_group_with_loader_workers_writes_a_checkpoint(tmp_path):
    """What `docker stop`, `timeout`, SLURM and a Kaggle session's end do: SIGTERM to every
    process of the group, data-loader workers included; training stops as for Ctrl-C."""
    script = tmp_path / "train_until_stopped.py"
    script.write_text(TRAIN_UNTIL_STOPPED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a container's or a job's
    )
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in out and "killed by signal" not in err
    stopped = read_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert stopped["iteration"] >= 3
