"""`cellpipe convert` and `cellpipe folds` through the CLI on a hand-built competition folder."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.core import rle
from pipeline.core.fileio import write_png


def make_competition(root, n_samples=3, images_per_sample=2, shape=(24, 32)):
    """train/, test/ and train.csv with two cell types and square cells."""
    rows = []
    rng = np.random.default_rng(0)
    for cell_type in ("astro", "cort"):
        for s in range(n_samples):
            for k in range(images_per_sample):
                image_id = f"{cell_type}{s}{k}"
                write_png(root / "train" / f"{image_id}.png", rng.integers(0, 255, shape, np.uint8))
                labels = np.zeros(shape, np.int32)
                for j in range(1, 4):
                    y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
                    labels[y : y + 4, x : x + 4] = j
                for text in rle.encode_labels(labels).values():
                    rows.append(
                        {
                            "id": image_id,
                            "annotation": text,
                            "width": shape[1],
                            "height": shape[0],
                            "cell_type": cell_type,
                            "sample_id": f"{cell_type}-{s}",
                        }
                    )
    write_png(root / "test" / "t1.png", np.zeros(shape, np.uint8))
    df = pd.DataFrame(rows)
    df.to_csv(root / "train.csv", index=False)
    return df


@pytest.fixture
def work(tmp_path):
    make_competition(tmp_path / "data")
    return tmp_path


def run(work, *args):
    return main([*args, f"work_dir={work / 'w'}", f"data_dir={work / 'data'}"])


def test_convert_folds_and_rerun(work, capsys):
    assert run(work, "convert") == 0
    train = json.loads((work / "w" / "coco" / "train.json").read_text())
    test = json.loads((work / "w" / "coco" / "test.json").read_text())
    assert len(train["images"]) == 12
    assert [c["name"] for c in test["categories"]] == ["astro", "cort"]
    assert test["images"][0]["file_name"] == "test/t1.png"

    assert run(work, "folds", "folds.n_folds=3") == 0
    folds = pd.read_csv(work / "w" / "folds.csv")
    assert folds.columns.tolist() == ["id", "fold", "cell_type", "sample_id", "instances"]
    assert (folds.groupby("sample_id")["fold"].nunique() == 1).all()
    assert folds["instances"].sum() == len(train["annotations"])

    capsys.readouterr()
    assert run(work, "convert") == 0
    assert "convert: up to date" in capsys.readouterr().out
    assert run(work, "convert", "convert.livecell=false") == 0  # config changed: runs again
    assert "up to date" not in capsys.readouterr().out
    (work / "w" / "coco" / "train.json").write_text("{}")  # output edited by hand: runs again
    assert run(work, "convert", "convert.livecell=false") == 0
    assert "up to date" not in capsys.readouterr().out


def test_coco_back_to_csv_is_pixel_exact(work):
    assert run(work, "convert") == 0
    out = work / "back.csv"
    assert run(work, "convert", "--to-csv", str(work / "w" / "coco" / "train.json"), str(out)) == 0
    original = pd.read_csv(work / "data" / "train.csv")
    back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back[original.columns], original)


def one_line_error(capsys, match):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err


def test_missing_input_is_one_line(tmp_path, capsys):
    assert main(["convert", f"work_dir={tmp_path}/w", f"data_dir={tmp_path}/none"]) == 2
    one_line_error(capsys, "missing input")


def test_bad_rle_leaves_no_output(work, capsys):
    df = pd.read_csv(work / "data" / "train.csv")
    df.loc[5, "annotation"] = "3 1 1 1"
    df.to_csv(work / "data" / "train.csv", index=False)
    assert run(work, "convert") == 2
    one_line_error(capsys, "unsorted or overlaps")
    assert not (work / "w" / "coco" / "train.json").exists()
    assert not list((work / "w").rglob("*.tmp"))


def test_image_size_mismatch(work, capsys):
    write_png(work / "data" / "train" / "astro00.png", np.zeros((10, 10), np.uint8))
    assert run(work, "convert") == 2
    one_line_error(capsys, "image is 10x10 (HxW) but the annotations say 24x32")


def test_corrupt_image(work, capsys):
    (work / "data" / "train" / "astro00.png").write_bytes(b"not a png")
    assert run(work, "convert") == 2
    one_line_error(capsys, "cannot read image")


def test_too_many_folds(work, capsys):
    assert run(work, "convert") == 0
    assert run(work, "folds", "folds.n_folds=9") == 2
    one_line_error(capsys, "cannot split 6 sample_id groups into 9 folds")


def test_bad_config_is_one_line(work, capsys):
    assert run(work, "folds", "folds.n_folds=x") == 2
    one_line_error(capsys, "config folds.n_folds")


def test_replaced_test_images_make_every_later_stage_rerun(work, capsys):
    """New images in test/ (same train.csv): convert, predict, tune, postprocess and submit all
    run again, and the submission is for the images that are there now."""
    chain = ["convert", "folds", "predict", "tune", "postprocess", "submit"]
    settings = ["folds.n_folds=2", "predict.models=[watershed]", "predict.tta=[none]"]

    def run_chain() -> str:
        capsys.readouterr()
        for stage in chain:
            assert run(work, stage, *settings) == 0, stage
        said = capsys.readouterr()
        return [line for line in (said.out + said.err).splitlines() if "up to date" in line]

    run_chain()
    assert len(run_chain()) == len(chain)  # nothing changed: every stage is skipped
    (work / "data" / "test" / "t1.png").unlink()
    cell = np.zeros((24, 32), np.uint8)
    cell[4:12, 4:12] = 200
    write_png(work / "data" / "test" / "t2.png", cell)
    assert run_chain() == ["folds: up to date"]  # the training data did not change
    assert set(pd.read_csv(work / "w" / "submission.csv")["id"]) == {"t2"}
    # the same name, other pixels: still stale
    write_png(work / "data" / "test" / "t2.png", np.roll(cell, 12, axis=1))
    assert run_chain() == ["folds: up to date"]


def test_an_edited_livecell_annotation_file_makes_convert_rerun(tmp_path, capsys):
    data = tmp_path / "data"
    settings = [f"work_dir={tmp_path / 'w'}", f"data_dir={data}"]
    synthetic = ["prepare.synthetic.train_images_per_type=1", "prepare.synthetic.test_images=1"]
    synthetic += ["prepare.synthetic.height=64", "prepare.synthetic.width=64"]
    synthetic += [
        "prepare.synthetic.livecell_train_images=2",
        "prepare.synthetic.livecell_val_images=1",
    ]
    assert main(["prepare", *settings, *synthetic]) == 0
    assert main(["convert", *settings]) == 0
    annotations = next(data.rglob("livecell_coco_train.json"))
    coco = json.loads(annotations.read_text())
    coco["annotations"].pop()
    annotations.write_text(json.dumps(coco))
    capsys.readouterr()
    assert main(["convert", *settings]) == 0
    assert "up to date" not in capsys.readouterr().out
    converted = json.loads((tmp_path / "w" / "coco" / "livecell_train.json").read_text())
    assert len(converted["annotations"]) == len(coco["annotations"])
