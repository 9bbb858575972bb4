"""`cellpipe score` and `cellpipe leaderboard` through the CLI, on a hand-built train.csv."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from kaggle_stub import KaggleStub, client_env, json_reply

from pipeline.cli import main
from pipeline.core import rle
from pipeline.core.ledger import apply_kaggle_scores, read_ledger
from pipeline.core.metrics import map_iou

LIST_SUBMISSIONS = "competitions.CompetitionApiService/ListSubmissions"

SHAPE = (12, 16)


def cells(rng, n) -> np.ndarray:
    labels = np.zeros(SHAPE, np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, SHAPE[0] - 4), rng.integers(0, SHAPE[1] - 4)
        labels[r : r + 4, c : c + 4] = k
    return labels


@pytest.fixture
def work(tmp_path):
    """train.csv (4 images, 2 classes), folds.csv, and label images of truth and prediction."""
    rng = np.random.default_rng(0)
    truth, pred, rows, folds = {}, {}, [], []
    for k, cell_type in enumerate(["astro", "astro", "cort", "cort"]):
        image_id = f"im{k}"
        truth[image_id] = cells(rng, 4)
        pred[image_id] = np.roll(truth[image_id], k % 2, axis=1)
        for text in rle.encode_labels(truth[image_id]).values():
            rows.append([image_id, text, SHAPE[1], SHAPE[0], cell_type, f"s{k}"])
        folds.append([image_id, k % 2])
    data = tmp_path / "data"
    data.mkdir()
    columns = ["id", "annotation", "width", "height", "cell_type", "sample_id"]
    pd.DataFrame(rows, columns=columns).to_csv(data / "train.csv", index=False)
    (tmp_path / "w").mkdir()
    pd.DataFrame(folds, columns=["id", "fold"]).to_csv(tmp_path / "w" / "folds.csv", index=False)
    return SimpleNamespace(root=tmp_path, truth=truth, pred=pred)


def write_submission(work, name, images) -> str:
    rows = [[i, t] for i, labels in images.items() for t in rle.encode_labels(labels).values()]
    path = work.root / name
    pd.DataFrame(rows, columns=["id", "predicted"]).to_csv(path, index=False)
    return str(path)


def run(work, *args):
    return main(
        [
            *args,
            f"work_dir={work.root / 'w'}",
            f"data_dir={work.root / 'data'}",
            f"score.ledger={work.root / 'ledger.jsonl'}",
        ]
    )


def test_score_prints_writes_and_records(work, capsys):
    sub = write_submission(work, "sub.csv", {k: v for k, v in work.pred.items() if k != "im3"})
    assert run(work, "score", "--submission", sub, "--note", "first try") == 0
    out = capsys.readouterr().out
    report = json.loads((work.root / "w" / "scores" / "sub.json").read_text())
    expected = [map_iou(work.truth[i], work.pred[i]) for i in ("im0", "im1", "im2")] + [0.0]
    assert report["map_iou"]["score"] == pytest.approx(np.mean(expected))
    assert report["map_iou"]["per_class"] == {
        "astro": pytest.approx(np.mean(expected[:2])),
        "cort": pytest.approx(np.mean(expected[2:])),
    }
    assert report["empty_predictions"] == ["im3"]
    assert "scored as empty, e.g. im3" in out and "0.95" in out and "astro" in out
    ledger = read_ledger(work.root / "ledger.jsonl")
    assert len(ledger) == 1
    entry = ledger[0]
    assert entry["note"] == "first try" and entry["score"] == report["map_iou"]["score"]
    assert len(entry["per_threshold"]) == 10 and entry["config_hash"]
    assert entry["public_score"] is None

    assert run(work, "score", "--submission", sub) == 0  # unchanged: not rescored, not re-recorded
    assert "up to date" in capsys.readouterr().out
    assert run(work, "score", "--submission", sub, "--force") == 0  # same key: replaced
    assert len(read_ledger(work.root / "ledger.jsonl")) == 1


def test_score_folds_and_glas(work, capsys):
    sub = write_submission(work, "sub.csv", work.pred)
    args = ["score", "--submission", sub, "--folds", "1"]
    assert run(work, *args, "score.glas_metrics=[object_f1,count]", "score.record=false") == 0
    report = json.loads((work.root / "w" / "scores" / "sub.folds1.json").read_text())
    assert [i["id"] for i in report["per_image"]] == ["im1", "im3"]
    assert set(report["glas"]["overall"]) == {"object_f1", "count"}
    assert report["glas"]["overall"]["count"] == 1.0
    assert "object_f1" in capsys.readouterr().out
    assert not (work.root / "ledger.jsonl").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,predicted\nim0,1 2\nzz,1 1\n", "sub.csv: line 3: unknown image id 'zz'"),
        (
            "id,predicted\nim0,1 4\nim0,3 2\n",
            "sub.csv: line 3 (im0): overlaps the prediction on line 2",
        ),
        ("id,predicted\nim1,190 5\n", "sub.csv: line 2: invalid RLE: run at token"),
        ("id,predicted\nim1,4 2 1 1\n", "sub.csv: line 2: invalid RLE: run at token 3"),
        ("id,predicted\nim1,1 two\n", "sub.csv: line 2: invalid RLE: token 2 ('two')"),
        ("image,rle\nim1,1 2\n", "columns must be id,predicted"),
        ('id,predicted\n"im1,1 2\n', "not a readable CSV"),
    ],
)
def test_bad_submissions_fail_in_one_line(work, capsys, content, message):
    (work.root / "sub.csv").write_text(content)
    assert run(work, "score", "--submission", str(work.root / "sub.csv")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "a,b"], "--folds 'a,b': expected comma-separated integers"),
        (["--folds", "7"], "no image in folds [7]"),
        (["--truth", "nowhere.csv"], "missing input nowhere.csv"),
    ],
)
def test_bad_arguments_fail_in_one_line(work, capsys, args, message):
    sub = write_submission(work, "sub.csv", work.pred)
    assert run(work, "score", "--submission", sub, *args) == 2
    assert message in capsys.readouterr().err


def test_missing_submission(work, capsys):
    assert run(work, "score", "--submission", str(work.root / "none.csv")) == 2
    assert "missing input" in capsys.readouterr().err


def test_leaderboard_sorts_and_plots(work, capsys):
    assert run(work, "leaderboard") == 0
    assert "no entry yet" in capsys.readouterr().out
    worse = {k: np.roll(v, 1, axis=0) for k, v in work.pred.items()}
    for name, images, note in [("a.csv", worse, "worse"), ("b.csv", work.pred, "better")]:
        assert (
            run(work, "score", "--submission", write_submission(work, name, images), "--note", note)
            == 0
        )
    capsys.readouterr()
    assert run(work, "leaderboard") == 0
    out = capsys.readouterr().out.splitlines()
    assert "score" in out[0] and "public" in out[0]
    assert "better" in out[1] and "worse" in out[2]
    for png in ("per_threshold.png", "per_class.png"):
        assert (work.root / "w" / "leaderboard" / png).read_bytes()[:4] == b"\x89PNG"


def test_leaderboard_refresh_offline_is_one_line(work, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: fails at once
    assert run(work, "score", "--submission", write_submission(work, "s.csv", work.pred)) == 0
    capsys.readouterr()
    assert run(work, "leaderboard", "--refresh") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("leaderboard: not refreshed: cannot list Kaggle submissions")
    [entry] = read_ledger(work.root / "ledger.jsonl")  # the table goes on, without Kaggle scores
    assert out[1].split()[0] == "key" and out[2].split()[:2] == ["1", entry["key"]]
    assert entry["public_score"] is None


def test_leaderboard_refresh_through_the_real_client(work, capsys, monkeypatch, tmp_path):
    assert run(work, "score", "--submission", write_submission(work, "s.csv", work.pred)) == 0
    [entry] = read_ledger(work.root / "ledger.jsonl")
    listed = {"submissions": [
        {"ref": 9, "description": f"v7 [{entry['key']}]", "publicScore": "0.312",
         "privateScore": "0.318"},
        {"ref": 10, "description": "someone else's", "publicScore": "0.1", "privateScore": "0.1"},
    ]}  # fmt: skip
    with KaggleStub() as stub:
        stub.handlers[LIST_SUBMISSIONS] = lambda request: json_reply(listed)
        client_env(monkeypatch, stub, tmp_path / "kaggle")
        assert run(work, "leaderboard", "--refresh") == 0
    [call] = stub.calls(LIST_SUBMISSIONS)
    assert call.json()["competitionName"] == "sartorius-cell-instance-segmentation"
    [entry] = read_ledger(work.root / "ledger.jsonl")
    assert (entry["public_score"], entry["private_score"], entry["kaggle_ref"]) == (
        0.312,
        0.318,
        "9",
    )
    assert "0.312" in capsys.readouterr().out


def test_bad_ledger_line(work, capsys):
    (work.root / "ledger.jsonl").write_text('{"key": "a", "score": 1}\nnot json\n')
    assert run(work, "leaderboard") == 2
    assert "ledger.jsonl: line 2 is not JSON" in capsys.readouterr().err


def test_kaggle_scores_find_their_entries():
    entries = [
        {"key": "abc123", "note": "fold ensemble"},
        {"key": "def456", "note": ""},
        {"key": "0a0a0a", "note": "tta"},
    ]
    submissions = [
        SimpleNamespace(
            description="v7 [abc123]", public_score="0.312", private_score="0.318", ref=9
        ),
        SimpleNamespace(description="tta", public_score="0.3", private_score="", ref=10),
        SimpleNamespace(description="unrelated", public_score="0.1", private_score="0.1", ref=11),
    ]
    assert apply_kaggle_scores(entries, submissions) == 2
    assert (entries[0]["public_score"], entries[0]["private_score"]) == (0.312, 0.318)
    assert entries[0]["kaggle_ref"] == "9"
    assert (entries[2]["public_score"], entries[2]["private_score"]) == (0.3, None)
    assert "public_score" not in entries[1]
