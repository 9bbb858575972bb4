"""Config system: defaults, YAML with _base_, command-line overrides, one-line errors."""

from pathlib import Path

import pytest

from pipeline.config import Config, load_config, parse_overrides
from pipeline.core.errors import CellpipeError


def test_defaults_and_layout():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data == Path("work/data")
    assert cfg.layout.coco_train == Path("work/coco/train.json")
    assert load_config(overrides=["data_dir=/x"]).layout.train_csv == Path("/x/train.csv")


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("folds:\n  n_folds: 3\n  seed: 7\n")
    (tmp_path / "exp.yaml").write_text("_base_: base.yaml\nfolds:\n  seed: 8\n")
    cfg = load_config(tmp_path / "exp.yaml", ["folds.stratify_by=plate", "work_dir=/w"])
    assert (cfg.folds.n_folds, cfg.folds.seed, cfg.folds.stratify_by) == (3, 8, "plate")
    assert cfg.work_dir == Path("/w")


def test_repo_configs_load():
    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        load_config(path)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=3", "a.c=true", "d=x y"]) == {"a": {"b": 3, "c": True}, "d": "x y"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["folds.n_folds=many"], "config folds.n_folds: Input should be a valid integer"),
        (["folds.nfolds=3"], "config folds.nfolds: Extra inputs are not permitted"),
        (["prepare.source=web"], "config prepare.source: Input should be 'synthetic' or 'kaggle'"),
        (["folds"], "expected key.sub=value"),
    ],
)
def test_bad_overrides_are_one_line(overrides, message):
    with pytest.raises(CellpipeError, match=message.replace("(", r"\(")) as err:
        load_config(overrides=overrides)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(CellpipeError, match="missing config file"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("folds: [1, 2\n")
    with pytest.raises(CellpipeError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(CellpipeError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(CellpipeError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
