"""Config system: defaults, YAML with _base_, command-line overrides, one-line errors."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.cli import main as cellpipe
from pipeline.config import CellposeConfig, Config, load_config, parse_overrides
from pipeline.core.errors import CellpipeError

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_and_layout():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data == Path("work/data")
    assert cfg.layout.coco_train == Path("work/coco/train.json")
    assert load_config(overrides=["data_dir=/x"]).layout.train_csv == Path("/x/train.csv")


def test_overrides_reach_the_typed_fields():
    cfg = load_config(
        overrides=[
            "pretrain.solver.max_iter=7",
            "finetune.solver.base_lr=0.02",
            "finetune.augment.crop=[64,80]",
            "predict.tta=[none,rot90]",
            "model.flow_unet.thresholds.max_error=null",
            "submit.copy_to=/kaggle/working/submission.csv",
            "kernels.public=true",
        ]
    )
    assert cfg.pretrain.solver.max_iter == 7 and cfg.finetune.solver.max_iter == 3000
    assert cfg.finetune.solver.base_lr == 0.02 and cfg.pretrain.solver.base_lr == 5e-3
    assert cfg.finetune.augment.crop == (64, 80) and cfg.pretrain.augment.crop is None
    assert cfg.predict.tta == ["none", "rot90"]
    assert cfg.model.flow_unet.thresholds.max_error is None
    assert cfg.submit.copy_to == Path("/kaggle/working/submission.csv")
    assert cfg.kernels.public is True
    with pytest.raises(ValidationError, match="frozen"):
        cfg.folds.n_folds = 3  # the resolved config is frozen


def test_families_are_predict_models_else_the_family():
    assert load_config(overrides=["model.family=flow_unet"]).families == ["flow_unet"]
    cfg = load_config(overrides=["predict.models=[watershed,flow_unet,watershed]"])
    assert cfg.families == ["watershed", "flow_unet"]
    assert cfg.trained_families == ["flow_unet"]
    assert cfg.fold_models() == {
        "flow_unet": [cfg.layout.finetune_model("flow_unet", k) for k in range(5)]
    }


def test_init_is_one_start_for_every_family_or_one_per_family():
    cfg = load_config(overrides=["pretrain.init=w.pth", "finetune.init=random"])
    assert [cfg.pretrain.start(f) for f in ("cellpose", "maskrcnn")] == ["w.pth", "w.pth"]
    assert cfg.finetune.start("cellpose") == "random"
    cfg = load_config(
        overrides=["pretrain.init={cellpose: cp.pth}", "finetune.init={maskrcnn: random}"]
    )
    assert [cfg.pretrain.start(f) for f in ("cellpose", "maskrcnn")] == ["cp.pth", "random"]
    assert [cfg.finetune.start(f) for f in ("cellpose", "maskrcnn")] == ["pretrain", "random"]


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "folds:\n  n_folds: 3\n  seed: 7\npredict:\n  tta: [none, hflip, vflip]\n"
    )
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "exp.yaml").write_text(  # _base_ is relative to the file's folder
        "_base_: ../base.yaml\nfolds:\n  seed: 8\npredict:\n  tta: [rot90]\n"
    )
    cfg = load_config(tmp_path / "exp" / "exp.yaml", ["folds.stratify_by=plate", "work_dir=/w"])
    # nested blocks merge key by key; a list replaces the base's; overrides go last
    assert (cfg.folds.n_folds, cfg.folds.seed, cfg.folds.stratify_by) == (3, 8, "plate")
    assert cfg.predict.tta == ["rot90"]
    assert cfg.work_dir == Path("/w")
    assert load_config(tmp_path / "exp" / "exp.yaml", ["folds.seed=9"]).folds.seed == 9


def leaves(data: dict, prefix: tuple = ()) -> dict[tuple, object]:
    """Every value of a nested mapping that is not itself a mapping, by its key path."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def written(path: Path) -> dict[tuple, object]:
    """What a config file sets, its `_base_` chain's settings under its own."""
    data = yaml.safe_load(path.read_text())
    base = data.pop("_base_", None)
    own = leaves(data)
    inherited = written(path.parent / base) if base else {}
    # a key the file sets replaces the base's value whole, even a value of another shape (a
    # string replaced by a mapping: pretrain.init)
    replaced = {k for k in inherited for o in own if k[: len(o)] == o or o[: len(k)] == k}
    return {**{k: v for k, v in inherited.items() if k not in replaced}, **own}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_shipped_config_holds_what_its_file_says(path):
    settings = written(path)
    assert settings, f"{path.name} sets nothing"
    loaded = load_config(path).model_dump(mode="json")
    for keys, value in settings.items():
        got = loaded
        for key in keys:
            got = got[key]
        assert got == value, ".".join(keys)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=3", "a.c=true", "d=x y"]) == {"a": {"b": 3, "c": True}, "d": "x y"}
    assert parse_overrides(["a=[1, 2.5]", "b=null", "c="]) == {"a": [1, 2.5], "b": None, "c": ""}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["folds.n_folds=many"], "config folds.n_folds: Input should be a valid integer"),
        (["folds.nfolds=3"], "config folds.nfolds: Extra inputs are not permitted"),
        (["finetun.init=random"], "config finetun: Extra inputs are not permitted"),
        (
            ["pretrain.solver.maxiter=3"],
            "config pretrain.solver.maxiter: Extra inputs are not permitted",
        ),
        (
            ["model.flow_unet.thresholds.max_eror=1"],
            "config model.flow_unet.thresholds.max_eror: Unexpected keyword argument",
        ),
        (["prepare.source=web"], "config prepare.source: Input should be 'synthetic' or 'kaggle'"),
        (["model.family=unet"], "config model: unknown family 'unet'; known: maskrcnn"),
        (["predict.models=[unet]"], "config: predict.models: unknown family 'unet'"),
        (["finetune.init={unet: a.pth}"], "config: finetune.init: unknown family 'unet'"),
        (
            ["model.maskrcnn.grid.score=[0.01,0.5]"],
            "model.maskrcnn.grid.score has 0.01, below the score floor 0.05",
        ),
        (["folds"], "expected key.sub=value"),
        (["folds=3", "folds.seed=1"], "override 'folds.seed=1': folds is set twice"),
    ],
)
def test_bad_overrides_are_one_line(overrides, message):
    with pytest.raises(CellpipeError) as err:
        load_config(overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_several_errors_are_counted_on_the_one_line():
    with pytest.raises(CellpipeError, match=r"n_folds: .* \(\+1 more\)$"):
        load_config(overrides=["folds.n_folds=x", "folds.seed=y"])


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
    (tmp_path / "typo.yaml").write_text("folds:\n  n_fold: 3\n")
    with pytest.raises(CellpipeError, match="config folds.n_fold: Extra inputs are not permitted"):
        load_config(tmp_path / "typo.yaml")


def _cellpipe_config(capsys, *argv: str) -> tuple[int, str, str]:
    code = cellpipe(["config", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_explain_prints_type_default_value_and_meaning(tmp_path, capsys):
    experiment = tmp_path / "x.yaml"
    experiment.write_text("model:\n  cellpose:\n    size: labels\n")
    code, out, _ = _cellpipe_config(
        capsys, "--explain", "model.cellpose.size", "-c", str(experiment)
    )
    assert code == 0
    assert out.splitlines()[:4] == [
        "model.cellpose.size",
        "  type: Literal['first_pass', 'labels', 'exemplar', 'exemplar_first_pass', 'none']",
        "  default: first_pass",
        "  value: labels",
    ]
    assert "how images are sized so that cells are diam_mean wide" in out
    code, out, _ = _cellpipe_config(
        capsys, "--explain", "finetune.solver.max_iter", "finetune.solver.max_iter=12"
    )
    assert out.splitlines()[1:4] == ["  type: int", "  default: 3000", "  value: 12"]
    # a threshold's default is its family's, the description the core dataclass's
    code, out, _ = _cellpipe_config(capsys, "--explain", "model.flow_unet.thresholds.score")
    assert "  default: 0.6" in out and "keep instances scoring at least this" in out


def test_config_explain_of_a_block_lists_its_keys(capsys):
    code, out, _ = _cellpipe_config(capsys, "--explain", "model.cellpose", "model.cellpose.tile=0")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("model.cellpose: Family `cellpose`")
    keys = [line.split(" = ")[0].strip() for line in lines if line.startswith("  ")]
    assert keys == list(CellposeConfig.model_fields)
    assert "  tile = 0  # px: larger images are seen in overlapping tiles" in out


def test_config_explain_of_an_unknown_key_names_the_closest(capsys):
    code, out, err = _cellpipe_config(capsys, "--explain", "model.cellpose.siz")
    assert code == 2 and out == ""
    assert err == (
        "cellpipe config: error: unknown config key 'model.cellpose.siz'; closest: "
        "model.cellpose.size, model.cellpose.min_size, model.cellpose\n"
    )


def test_config_prints_the_resolved_config_as_yaml(capsys):
    code, out, _ = _cellpipe_config(capsys, "folds.n_folds=3", "model.family=watershed")
    assert code == 0
    assert load_config(overrides=["folds.n_folds=3", "model.family=watershed"]) == Config(
        **yaml.safe_load(out)
    )
    assert yaml.safe_load(out)["folds"]["n_folds"] == 3
