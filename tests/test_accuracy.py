"""benchmarks/accuracy.py on tiny synthetic data: two training iterations, every stage for real.

The point is the report, not the score: its per-image scores must reproduce `tune`'s figures,
its seen/unseen groups `tune`'s per-class ones, and --report must join runs in one table.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main as cellpipe
from pipeline.core.fileio import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cpu.yaml"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


realdata = load("realdata")
accuracy = load("accuracy")

DATA = [  # a few small synthetic images (shsy5y, astro, cort), two folds, no LIVECell
    "prepare.synthetic.train_images_per_type=2",
    "prepare.synthetic.samples_per_type=2",
    "prepare.synthetic.test_images=3",
    "prepare.synthetic.semi_supervised_images=1",
    "prepare.synthetic.height=96",
    "prepare.synthetic.width=128",
    "convert.livecell=false",
    "folds.n_folds=2",
]
TINY = [
    *DATA,
    "finetune.init=random",
    "finetune.solver.max_iter=2",
    "finetune.solver.checkpoint_period=2",
    "finetune.solver.num_workers=0",
    "finetune.augment.crop=null",
    "model.flow_unet.channels=[8,16]",
    "tune.ensemble.weights=[0,1]",
    "tune.rounds=1",
]
UNSEEN = "astro"  # marked as a set cellpose cannot have seen


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One accuracy.py run (flow_unet, watershed, their ensemble) with `UNSEEN` marked unseen."""
    work = tmp_path_factory.mktemp("accuracy")
    torch.set_num_threads(1)
    assert cellpipe(["prepare", "--config", str(CONFIG), f"work_dir={work}", *DATA]) == 0
    sets = pd.DataFrame({"set": ["shsy5y", "astro", "cort"]})
    sets["seen_by_cellpose"] = sets["set"] != UNSEEN
    sets.to_csv(work / "data" / realdata.SETS_CSV, index=False)
    args = ["--config", str(CONFIG), "--data", str(work / "data"), "--work", str(work)]
    assert accuracy.main([*args, "--name", "tiny", *TINY]) == 0
    return work


def test_image_scores_reproduce_tune(run):
    record = read_json(run / accuracy.RECORD)
    thresholds = read_json(run / "thresholds.json")
    assert (
        set(record["scores"])
        == set(thresholds["candidates"])
        == {
            "flow_unet",
            "watershed",
            "ensemble",
        }
    )
    for name, candidate in thresholds["candidates"].items():
        scores = record["scores"][name]
        for split, key in (("oof", "cv"), ("heldout", "heldout")):
            assert len(scores[split]["tuned"]) == candidate[key]["images"]
            for kind in ("default", "tuned"):
                mean = np.mean(list(scores[split][kind].values()))
                assert mean == pytest.approx(candidate[key][kind], abs=1e-12), (name, split, kind)


def test_seen_and_unseen_groups_are_tunes_per_class_scores(run):
    record = read_json(run / accuracy.RECORD)
    thresholds = read_json(run / "thresholds.json")
    assert record["seen_by_cellpose"] == {"shsy5y": True, "astro": False, "cort": True}
    table = accuracy.summary_table([record]).set_index("candidate")
    oof_types = pd.Series(record["cell_types"])[list(record["scores"]["watershed"]["oof"]["tuned"])]
    counts = oof_types.value_counts()
    for name, candidate in thresholds["candidates"].items():
        row = table.loc[name + (" (chosen)" if name == thresholds["chosen"] else "")]
        per_class = candidate["cv"]["tuned_per_class"]
        assert row["oof unseen"] == pytest.approx(per_class[UNSEEN])
        seen = [c for c in counts.index if c != UNSEEN]
        expected = sum(per_class[c] * counts[c] for c in seen) / counts[seen].sum()
        assert row["oof seen"] == pytest.approx(expected)
        assert row["oof all"] == pytest.approx(candidate["cv"]["tuned"])
        assert row["held-out all"] == pytest.approx(candidate["heldout"]["tuned"])
    assert table.loc["watershed", "vs floor"] == 0


def test_report_joins_runs(run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    record = read_json(run / accuracy.RECORD)
    write_json(other / accuracy.RECORD, {**record, "name": "zero-shot"})
    capsys.readouterr()
    assert accuracy.main(["--report", str(run), str(other)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "zero-shot" in out and "held-out tuned per set" in out
    table = accuracy.summary_table([record, {**record, "name": "zero-shot"}])
    assert list(table["run"]) == ["tiny"] * 3 + ["zero-shot"] * 3
    per_set = accuracy.set_table([record])
    assert {s: per_set.loc[s, "seen"] for s in per_set.index} == {
        s: s != UNSEEN for s in per_set.index
    }
    heldout = pd.Series(record["scores"]["watershed"]["heldout"]["tuned"])
    types = heldout.index.map(record["cell_types"])
    for cell_type, value in heldout.groupby(types).mean().items():
        assert per_set.loc[cell_type, "tiny: watershed"] == pytest.approx(value)
    with pytest.raises(SystemExit, match="two runs named 'tiny'"):
        accuracy.main(["--report", str(run), str(run)])
    shutil.rmtree(other)
    with pytest.raises(SystemExit, match="no accuracy.json"):
        accuracy.main(["--report", str(other)])
