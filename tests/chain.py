"""The stages of `make stages`, in its order, through the real CLI (`pipeline.cli.main`), for any
config: the one chain every chain test runs (tests/test_stages_chain.py checks it against
`make -n stages`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.cli import main
from pipeline.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
# what `make stages` runs, in its order, before scoring
STAGES = (
    "prepare",
    "convert",
    "pretrain",
    "folds",
    "finetune",
    "predict",
    "tune",
    "postprocess",
    "submit",
)
# each split `make stages` scores: the truth file in the data folder, the ledger note
SCORED = {"oof": ("train.csv", "out-of-fold"), "test": ("test_truth.csv", "held-out")}

TINY_DATA = [  # a few small synthetic images (and LIVECell ones), two folds
    "prepare.synthetic.train_images_per_type=2",
    "prepare.synthetic.samples_per_type=2",
    "prepare.synthetic.test_images=2",
    "prepare.synthetic.semi_supervised_images=1",
    "prepare.synthetic.livecell_train_images=2",
    "prepare.synthetic.livecell_val_images=1",
    "prepare.synthetic.livecell_test_images=1",
    "prepare.synthetic.height=96",
    "prepare.synthetic.width=128",
    "folds.n_folds=2",
]
SHORT_TRAINING = [  # two iterations on two small crops each
    f"{stage}.{key}"
    for stage in ("pretrain", "finetune")
    for key in (
        "solver.max_iter=2",
        "solver.checkpoint_period=2",
        "solver.ims_per_batch=2",
        "augment.crop=[64,64]",
    )
]


def make_config() -> Path:
    """The config `make stages` runs by default (the Makefile's `CONFIG ?=`)."""
    match = re.search(r"^CONFIG \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "the Makefile sets no default CONFIG"
    return REPO / match[1]


@dataclass
class Chain:
    """A work folder, and the config and overrides every command in it runs with."""

    work: Path
    config: Path
    overrides: list[str] = field(default_factory=list)

    def run(self, command: str, *args: str) -> int:
        """`cellpipe COMMAND ARGS --config CONFIG work_dir=WORK score.ledger=... OVERRIDES`."""
        return main([command, *args, "--config", str(self.config), *self.settings])

    @property
    def settings(self) -> list[str]:
        return [f"work_dir={self.work}", f"score.ledger={self.ledger}", *self.overrides]

    @property
    def ledger(self) -> Path:
        return self.work / "leaderboard.jsonl"

    @property
    def cfg(self) -> Config:
        return load_config(self.config, self.settings)

    def report(self, split: str, family: str | None = None) -> Path:
        """Where `make stages` writes the scores of a split: of the submission, or of a family."""
        folder = self.cfg.layout.scores_dir
        return (folder / family if family else folder) / f"{split}.json"


def run_chain(work: Path, config: Path, overrides: list[str]) -> Chain:
    """Every stage of `make stages`, then its scores: each family's final instances of each split,
    then the chosen ones; every command must succeed."""
    chain = Chain(work, config, overrides)
    torch.set_num_threads(1)
    for stage in STAGES:
        assert chain.run(stage) == 0, stage
    cfg = chain.cfg
    for split, (truth, note) in SCORED.items():
        for family in [*cfg.families, None]:
            code = chain.run(
                "score",
                "--submission",
                str(cfg.layout.postprocessed(split, family)),
                "--truth",
                str(cfg.data / truth),
                "--output",
                str(chain.report(split, family)),
                "--note",
                f"{note} {family}" if family else note,
            )
            assert code == 0, f"score {split} {family or ''}"
    return chain
