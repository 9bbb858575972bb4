"""`make stages` in the test suite: every stage from prepare to score through the real CLI, on tiny
synthetic data with two training iterations, for the default config file (the Makefile's CONFIG)
and for Mask R-CNN.

Only sizes are overridden in the default chain (images, folds, iterations, crops, tuning rounds):
it trains, predicts, tunes and scores the families the config names (`predict.models`, else
`model.family`), and every per-family test runs on each of them, so a family added to the default
config is tested here without a new test. The models are nearly untrained: the point is that
every stage runs for real, reads what the one before wrote and writes what the next one needs.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from chain import REPO, SCORED, SHORT_TRAINING, STAGES, TINY_DATA, Chain, make_config, run_chain

from pipeline.config import load_config
from pipeline.core.fileio import image_shape, write_png
from pipeline.core.predictions import load_predictions
from pipeline.core.submission import read_submission
from pipeline.models.checkpoints import load_model

pytestmark = pytest.mark.slow
CONFIG = make_config()
SMALL = [*TINY_DATA, *SHORT_TRAINING, "tune.rounds=1"]
# each chain: its overrides on top of SMALL
CHAINS = {
    "default": [],  # the config as `make stages` runs it
    # the light Mask R-CNN the CPU config sets up, with views merged instance by instance
    "maskrcnn": [
        "predict.models=[maskrcnn,watershed]",
        "predict.tta=[none,rot90]",
        "model.maskrcnn.detections_per_image=50",
    ],
}
SHAPE = (96, 128)  # TINY_DATA's images
CLASSES = ["astro", "cort", "shsy5y"]  # the synthetic data's cell types
# a setting that changes each trained family's architecture (its checkpoints no longer fit)
OTHER_ARCHITECTURE = {
    "maskrcnn": "model.maskrcnn.fpn_channels=32",
    "flow_unet": "model.flow_unet.channels=[8,16,32,64]",
}


def families(chain_name: str, trained: bool = False) -> list[str]:
    cfg = load_config(CONFIG, CHAINS[chain_name])
    return [f for f in cfg.families if cfg.model.block(f).trainable or not trained]


def pytest_generate_tests(metafunc):
    """A test of `chain` runs on every chain (one xdist worker builds each); a test of `family`
    (or `trained_family`) on every family (trained family) of every chain."""
    if "chain_name" not in metafunc.fixturenames:
        return
    arg = next((a for a in ("family", "trained_family") if a in metafunc.fixturenames), None)
    cases = []
    for name in CHAINS:
        group = pytest.mark.xdist_group(f"chain-{name}")
        if arg is None:
            cases.append(pytest.param(name, marks=group, id=name))
        for family in families(name, trained=arg == "trained_family") if arg else []:
            cases.append(pytest.param(name, family, marks=group, id=f"{name}-{family}"))
    metafunc.parametrize(["chain_name", arg] if arg else "chain_name", cases, scope="module")


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """Each chain, run once on first use."""
    built = {}

    def get(name: str):
        if name not in built:
            work = tmp_path_factory.mktemp(f"chain-{name}")
            built[name] = run_chain(work, CONFIG, [*SMALL, *CHAINS[name]])
        return built[name]

    return get


@pytest.fixture(scope="module")
def chain(chains, chain_name):
    return chains(chain_name)


@pytest.fixture(scope="module")
def default_chain(chains):
    return chains("default")


in_default_chain = pytest.mark.xdist_group("chain-default")


def image_ids(folder):
    return {p.stem for p in folder.glob("*.png")}


def test_the_chain_is_what_make_stages_runs(tmp_path):
    """`make -n stages` plans the stages of STAGES in that order, with the config the chain
    loads, then scores each split against the truth SCORED names, each family and the choice."""
    plan = subprocess.run(
        ["make", "-n", "stages", f"WORK={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = re.findall(r"bin/cellpipe (\S+) ", plan)
    assert list(dict.fromkeys(commands)) == [*STAGES, "score"]
    assert set(re.findall(r"--config (\S+) ", plan)) == {str(CONFIG.relative_to(REPO))}
    for split, (truth, _) in SCORED.items():
        assert f"--truth {tmp_path}/data/{truth} --output {tmp_path}/scores/$family/{split}" in plan
        assert f"--truth {tmp_path}/data/{truth} --output {tmp_path}/scores/{split}.json" in plan


def test_the_default_config_trains_a_family():
    assert families("default", trained=True), f"{CONFIG} trains no family"


def test_data_stages_write_the_competition_layout(chain):
    layout = chain.cfg.layout
    train_ids = image_ids(layout.train_images)
    test_ids = image_ids(layout.test_images)
    assert len(train_ids) == 6 and len(test_ids) == 2
    assert set(pd.read_csv(layout.train_csv)["id"]) == train_ids
    assert set(pd.read_csv(layout.sample_submission)["id"]) == test_ids
    assert set(pd.read_csv(layout.test_truth)["id"]) == test_ids
    coco = json.loads(layout.coco_train.read_text())
    assert {im["file_name"] for im in coco["images"]} == {f"train/{i}.png" for i in train_ids}
    assert sorted(c["name"] for c in coco["categories"]) == CLASSES
    for path in (layout.coco_livecell_train, layout.coco_livecell_val):
        assert json.loads(path.read_text())["annotations"]
    folds = pd.read_csv(layout.folds_csv)
    assert set(folds["id"]) == train_ids and set(folds["fold"]) == {0, 1}
    assert (folds.groupby("sample_id")["fold"].nunique() == 1).all()


def test_each_trained_family_is_pretrained_on_livecell(chain, chain_name, trained_family):
    cfg = chain.cfg
    summary = json.loads(cfg.layout.pretrain_summary.read_text())
    trained = families(chain_name, trained=True)
    assert summary["families"] == {f: str(cfg.layout.pretrain_model(f)) for f in trained}
    model = load_model(cfg.layout.pretrain_model(trained_family), expected=cfg.model)
    assert model.family == trained_family and model.classes == ["cell"]


def test_each_trained_family_is_finetuned_and_validated_per_fold(chain, chain_name, trained_family):
    cfg = chain.cfg
    summary = json.loads(cfg.layout.finetune_summary.read_text())
    assert set(summary) == set(families(chain_name, trained=True))
    folds = summary[trained_family]["folds"]
    assert set(folds) == {"0", "1"}
    for k, fold in folds.items():
        assert fold["model"] == str(cfg.layout.finetune_model(trained_family, int(k)))
        assert 0.0 <= fold["map_iou"] <= 1.0 and fold["iteration"] == 2
        model = load_model(fold["model"], expected=cfg.model)
        assert model.family == trained_family and model.classes == CLASSES
    mean = np.mean([f["map_iou"] for f in folds.values()])
    assert summary[trained_family]["mean_map_iou"] == pytest.approx(mean)


def test_each_family_predicts_every_image_box_cropped(chain, chain_name, family):
    layout = chain.cfg.layout
    index = json.loads(layout.predictions_index.read_text())
    assert set(index) == set(families(chain_name))
    for split, folder in (("oof", layout.train_images), ("test", layout.test_images)):
        assert index[family][split] == str(layout.predictions(family, split))
        predictions = load_predictions(layout.predictions(family, split))
        assert set(predictions) == image_ids(folder)
        assert sum(len(pred) for pred in predictions.values()) > 0, f"no {split} instance"
        for image_id, pred in predictions.items():
            assert pred.shape == image_shape(folder / f"{image_id}.png") == SHAPE
            assert set(pred.labels) <= {1, 2, 3}
            for box, mask in zip(pred.boxes, pred.masks):
                assert mask.shape == (box[3] - box[1], box[2] - box[0]) and mask.any()


def test_tune_never_does_worse_than_the_defaults(chain, chain_name):
    tuned = json.loads(chain.cfg.layout.thresholds.read_text())
    names = families(chain_name)
    mixes = ["ensemble"] if len(names) > 1 else []
    assert tuned["families"] == names and set(tuned["candidates"]) == {*names, *mixes}
    for candidate in tuned["candidates"].values():
        assert candidate["cv"]["tuned"] >= candidate["cv"]["default"]
        assert candidate["cv"]["images"] == 6
        assert candidate["heldout"]["images"] == 2  # test_truth.csv: reported, never tuned on
        assert set(candidate["thresholds"]["per_class"]) == {"1", "2", "3"}
    chosen = tuned["candidates"][tuned["chosen"]]
    assert chosen["cv"]["tuned"] == max(c["cv"]["tuned"] for c in tuned["candidates"].values())
    assert tuned["weights"] == chosen["weights"] and tuned["thresholds"] == chosen["thresholds"]


def test_each_family_and_the_choice_are_postprocessed_and_scored(chain, chain_name):
    cfg = chain.cfg
    ledger = [json.loads(line) for line in chain.ledger.read_text().splitlines()]
    assert len(ledger) == 2 * (len(families(chain_name)) + 1)
    for split, (truth, note) in SCORED.items():
        ids = image_ids(cfg.layout.train_images if split == "oof" else cfg.layout.test_images)
        for family in [*families(chain_name), None]:
            frame = read_submission(cfg.layout.postprocessed(split, family))
            assert set(frame["id"]) == ids
            report = json.loads(chain.report(split, family).read_text())
            assert report["truth"] == str(cfg.data / truth)
            assert {image["id"] for image in report["per_image"]} == ids
            score = report["map_iou"]["score"]
            assert isinstance(score, float) and 0.0 <= score <= 1.0
            [entry] = [e for e in ledger if e["note"] == (f"{note} {family}" if family else note)]
            assert entry["score"] == score


def test_submission_is_the_chosen_test_instances_and_valid(chain, capsys):
    layout = chain.cfg.layout
    submission = read_submission(layout.submission)
    assert set(submission["id"]) == image_ids(layout.test_images)
    chosen = read_submission(layout.postprocessed("test"))
    key = ["id", "predicted"]
    pd.testing.assert_frame_equal(
        submission.sort_values(key, ignore_index=True), chosen.sort_values(key, ignore_index=True)
    )
    capsys.readouterr()
    assert chain.run("validate", str(layout.submission)) == 0
    n = (submission["predicted"] != "").sum()
    assert f"{layout.submission}: valid, {n} instances in 2 images" in capsys.readouterr().out


def test_a_rerun_redoes_nothing(chain, chain_name, capsys):
    capsys.readouterr()
    for stage in STAGES:
        assert chain.run(stage) == 0, stage
    out = capsys.readouterr().out
    skipped = {line.split(":")[0] for line in out.splitlines() if line.endswith(": up to date")}
    trained = families(chain_name, trained=True)
    assert skipped == {
        *("prepare", "convert", "folds", "tune", "postprocess", "submit"),
        *(f"pretrain_{f}" for f in trained),
        *(f"finetune_{f}_fold{k}" for f in trained for k in (0, 1)),
        *(f"predict_{f}" for f in families(chain_name)),
    }


def one_line(capsys, text):
    """The command ended with one error line (after any progress bar), and no traceback."""
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert "Traceback" not in err and last.startswith("cellpipe ") and text in last, err


def test_checkpoints_of_another_model_are_one_line(chain, trained_family, capsys):
    assert trained_family in OTHER_ARCHITECTURE, "OTHER_ARCHITECTURE needs the new family"
    capsys.readouterr()
    assert chain.run("predict", "--force", OTHER_ARCHITECTURE[trained_family]) == 2
    one_line(capsys, "another model")


@in_default_chain
def test_test_image_changed_size_is_one_line(default_chain, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(default_chain.cfg.data, data)
    first = sorted((data / "test").glob("*.png"))[0]
    write_png(first, np.zeros((50, 60), np.uint8))
    capsys.readouterr()
    assert default_chain.run("predict", "--force", f"data_dir={data}", "predict.splits=[test]") == 2
    one_line(capsys, "50x60")


@in_default_chain
def test_broken_submission_is_rejected(default_chain, capsys, tmp_path):
    frame = pd.read_csv(default_chain.cfg.layout.submission, dtype=str, keep_default_na=False)
    frame.loc[len(frame)] = [frame["id"].iloc[0], "1 5 3 1"]
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    capsys.readouterr()
    assert default_chain.run("validate", str(bad)) == 2
    one_line(capsys, f"line {len(frame) + 1}")


def test_pseudo_labels_are_trained_on_beside_each_fold(default_chain, tmp_path, capsys):
    copy = Chain(tmp_path / "work", CONFIG, default_chain.overrides)
    shutil.copytree(default_chain.work, copy.work)  # the chain's folder stays as it was
    assert copy.run("pseudo") == 0
    pseudo = json.loads((copy.work / "coco" / "pseudo.json").read_text())
    train = json.loads((copy.work / "coco" / "train.json").read_text())
    assert pseudo["categories"] == train["categories"]
    assert pseudo["images"] and pseudo["annotations"]
    assert all(im["file_name"].startswith("train_semi_supervised/") for im in pseudo["images"])
    assert {a["image_id"] for a in pseudo["annotations"]} == {im["id"] for im in pseudo["images"]}
    assert {a["category_id"] for a in pseudo["annotations"]} <= {
        c["id"] for c in train["categories"]
    }
    capsys.readouterr()
    assert copy.run("finetune", "finetune.pseudo=true", "finetune.folds=[0]") == 0
    folds = pd.read_csv(copy.work / "folds.csv")
    expected = int((folds["fold"] != 0).sum()) + len(pseudo["images"])
    assert f"{expected} training images" in capsys.readouterr().out
    capsys.readouterr()
    assert copy.run("pseudo") == 0  # its fold 0 model changed: labelled again
    assert "pseudo: up to date" not in capsys.readouterr().out


def test_pseudo_labels_need_the_tuned_models(tmp_path, capsys):
    assert Chain(tmp_path, CONFIG, SMALL).run("pseudo") == 2
    assert "missing input" in capsys.readouterr().err
