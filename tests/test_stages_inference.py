"""The chain finetune -> predict -> tune -> postprocess -> submit -> score on tiny synthetic data.

The models train for two iterations from random weights: the point is that every stage runs for
real, reads what the previous one wrote and writes what the next one needs, not the score.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.core.fileio import write_png
from pipeline.core.predictions import load_predictions
from pipeline.core.submission import read_submission

REPO = Path(__file__).parents[1]
TINY_DATA = [  # a few small synthetic images, two folds, no LIVECell
    "prepare.synthetic.train_images_per_type=2",
    "prepare.synthetic.samples_per_type=2",
    "prepare.synthetic.test_images=2",
    "prepare.synthetic.semi_supervised_images=1",
    "prepare.synthetic.height=96",
    "prepare.synthetic.width=128",
    "convert.livecell=false",
    "folds.n_folds=2",
]
TINY = [
    *TINY_DATA,
    "finetune.init=random",
    "finetune.solver.max_iter=2",
    "finetune.solver.eval_period=0",
    "finetune.solver.checkpoint_period=2",
    "finetune.solver.num_workers=0",
    "finetune.augment.crop=null",
    "predict.tta=[none,rot90]",
    "predict.models=[maskrcnn,watershed]",
    "tune.ensemble.weights=[0,1]",
    "model.maskrcnn.grid.score=[0.05,0.9]",
    "model.maskrcnn.grid.mask=[0.5]",
    "model.maskrcnn.grid.min_area=[0,10]",
    "model.maskrcnn.grid.min_keep=[0.0]",
    "tune.rounds=1",
]


def cellpipe(work: Path, command: str, *args: str) -> int:
    return main(
        [
            command,
            *args,
            "--config",
            str(REPO / "configs" / "cpu.yaml"),
            f"work_dir={work}",
            f"score.ledger={work / 'ledger.jsonl'}",
            *TINY,
        ]
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("chain")
    torch.set_num_threads(1)
    for command in (
        "prepare",
        "convert",
        "folds",
        "finetune",
        "predict",
        "tune",
        "postprocess",
        "submit",
    ):
        assert cellpipe(work, command) == 0, command
    return work


def test_predictions_are_box_cropped_per_split(work):
    oof = load_predictions(work / "predictions" / "maskrcnn" / "oof.npz")
    test = load_predictions(work / "predictions" / "maskrcnn" / "test.npz")
    assert len(oof) == 6 and len(test) == 2
    for pred in [*oof.values(), *test.values()]:
        assert pred.shape == (96, 128)
        for box, mask in zip(pred.boxes, pred.masks):
            assert mask.shape == (box[3] - box[1], box[2] - box[0])


def test_thresholds_never_worse_than_defaults(work):
    tuned = json.loads((work / "thresholds.json").read_text())
    assert set(tuned["candidates"]) == {"maskrcnn", "watershed", "ensemble"}
    assert tuned["candidates"]["ensemble"]["weights"] == {"maskrcnn": 1.0, "watershed": 1.0}
    for candidate in tuned["candidates"].values():
        assert candidate["cv"]["tuned"] >= candidate["cv"]["default"]
        assert candidate["cv"]["images"] == 6
        assert candidate["heldout"]["images"] == 2  # test_truth.csv: reported, never tuned on
        assert set(candidate["thresholds"]["per_class"]) == {"1", "2", "3"}
    chosen = tuned["candidates"][tuned["chosen"]]
    assert chosen["cv"]["tuned"] == max(c["cv"]["tuned"] for c in tuned["candidates"].values())
    assert tuned["weights"] == chosen["weights"] and tuned["thresholds"] == chosen["thresholds"]


def test_every_family_is_postprocessed_beside_the_choice(work):
    for split, n in (("oof", 6), ("test", 2)):
        for family in ("maskrcnn", "watershed"):
            frame = read_submission(work / "postprocess" / family / f"{split}.csv")
            assert frame["id"].nunique() == n
        assert read_submission(work / "postprocess" / f"{split}.csv")["id"].nunique() == n


def test_submission_is_valid_and_covers_every_test_image(work, capsys):
    submission = read_submission(work / "submission.csv")
    test_ids = {p.stem for p in (work / "data" / "test").glob("*.png")}
    assert set(submission["id"]) == test_ids
    capsys.readouterr()
    assert cellpipe(work, "validate", str(work / "submission.csv")) == 0
    assert "valid" in capsys.readouterr().out


def test_out_of_fold_score_is_recorded(work):
    assert (
        cellpipe(
            work,
            "score",
            "--submission",
            str(work / "postprocess" / "oof.csv"),
            "--output",
            str(work / "scores" / "oof.json"),
        )
        == 0
    )
    report = json.loads((work / "scores" / "oof.json").read_text())
    assert 0.0 <= report["map_iou"]["score"] <= 1.0
    ledger = [json.loads(line) for line in (work / "ledger.jsonl").read_text().splitlines()]
    assert ledger[-1]["score"] == report["map_iou"]["score"]


def test_rerun_is_up_to_date(work, capsys):
    capsys.readouterr()
    assert cellpipe(work, "predict") == 0
    out = capsys.readouterr().out
    assert "predict_maskrcnn: up to date" in out and "predict_watershed: up to date" in out


def one_line(capsys, text):
    """The command ended with one error line (after any progress bar), and no traceback."""
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert "Traceback" not in err and last.startswith("cellpipe ") and text in last, err


def test_checkpoint_of_another_model_is_one_line(work, capsys):
    capsys.readouterr()
    assert cellpipe(work, "predict", "--force", "model.maskrcnn.fpn_channels=32") == 2
    one_line(capsys, "another model")


def test_test_image_changed_size_is_one_line(work, capsys, tmp_path):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(work / "data", data)
    first = sorted((data / "test").glob("*.png"))[0]
    write_png(first, np.zeros((50, 60), np.uint8))
    capsys.readouterr()
    code = main(
        [
            "predict",
            "--force",
            "--config",
            str(REPO / "configs" / "cpu.yaml"),
            f"work_dir={work}",
            f"data_dir={data}",
            "predict.splits=[test]",
            *TINY,
        ]
    )
    assert code == 2
    one_line(capsys, "50x60")


def test_broken_submission_is_rejected(work, capsys, tmp_path):
    frame = pd.read_csv(work / "submission.csv", dtype=str, keep_default_na=False)
    frame.loc[len(frame)] = [frame["id"].iloc[0], "1 5 3 1"]
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    capsys.readouterr()
    assert cellpipe(work, "validate", str(bad)) == 2
    one_line(capsys, f"line {len(frame) + 1}")


def test_pseudo_labels_are_trained_on_beside_each_fold(work, tmp_path, capsys):
    copy = tmp_path / "work"  # the chain's folder stays as the other tests expect it
    shutil.copytree(work, copy)
    assert cellpipe(copy, "pseudo") == 0
    pseudo = json.loads((copy / "coco" / "pseudo.json").read_text())
    train = json.loads((copy / "coco" / "train.json").read_text())
    assert pseudo["categories"] == train["categories"]
    assert pseudo["images"] and pseudo["annotations"]
    assert all(im["file_name"].startswith("train_semi_supervised/") for im in pseudo["images"])
    assert {a["image_id"] for a in pseudo["annotations"]} == {im["id"] for im in pseudo["images"]}
    assert {a["category_id"] for a in pseudo["annotations"]} <= {
        c["id"] for c in train["categories"]
    }
    capsys.readouterr()
    assert cellpipe(copy, "finetune", "finetune.pseudo=true", "finetune.folds=[0]") == 0
    folds = pd.read_csv(copy / "folds.csv")
    expected = int((folds["fold"] != 0).sum()) + len(pseudo["images"])
    assert f"{expected} training images" in capsys.readouterr().out
    capsys.readouterr()
    assert cellpipe(copy, "pseudo") == 0  # its fold 0 model changed: labelled again
    assert "pseudo: up to date" not in capsys.readouterr().out


def test_pseudo_labels_need_the_tuned_models(tmp_path, capsys):
    assert cellpipe(tmp_path, "pseudo") == 2
    assert "missing input" in capsys.readouterr().err
