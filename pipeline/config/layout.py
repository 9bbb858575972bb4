"""Where every stage's declared files live under the work and data folders."""

from __future__ import annotations

from pathlib import Path


class Layout:
    """Declared files of every stage: the Makefile mirrors these names."""

    def __init__(self, work: Path, data: Path):
        self.work = work
        self.data = data
        self.train_csv = data / "train.csv"
        self.train_images = data / "train"
        self.test_images = data / "test"
        self.semi_images = data / "train_semi_supervised"  # unlabelled: pseudo-labels
        self.sample_submission = data / "sample_submission.csv"
        self.test_truth = data / "test_truth.csv"  # optional: held-out images' truth, reported
        self.livecell = data / "LIVECell_dataset_2021"
        self.coco_dir = work / "coco"
        self.coco_train = self.coco_dir / "train.json"
        self.coco_test = self.coco_dir / "test.json"
        self.coco_livecell_train = self.coco_dir / "livecell_train.json"
        self.coco_livecell_val = self.coco_dir / "livecell_val.json"
        self.coco_pseudo = self.coco_dir / "pseudo.json"  # cellpipe pseudo's labels
        self.folds_csv = work / "folds.csv"
        self.manifests = work / "manifests"
        self.pretrain_dir = work / "pretrain"
        self.pretrain_summary = self.pretrain_dir / "summary.json"  # each family's model or none
        self.finetune_dir = work / "finetune"
        self.finetune_summary = self.finetune_dir / "summary.json"  # per-fold validation scores
        self.predictions_dir = work / "predictions"  # box-cropped, one .npz a family and split
        self.predictions_index = self.predictions_dir / "index.json"  # families and their files
        self.thresholds = work / "thresholds.json"
        self.postprocess_dir = work / "postprocess"  # final instances, one CSV a split
        self.submission = work / "submission.csv"
        self.scores_dir = work / "scores"  # one JSON per scored submission
        self.leaderboard_dir = work / "leaderboard"  # leaderboard plots
        self.kernels_dir = work / "kernels"  # what `cellpipe push` uploads to Kaggle:
        self.kernels_bundle = self.kernels_dir / "bundle"  # the dataset (wheels, models, config)
        self.kernels_manifest = self.kernels_bundle / "cellpipe-bundle.json"  # how kernels find it
        self.kernels_inference = self.kernels_dir / "inference"  # the code-submission notebook
        self.kernels_train = self.kernels_dir / "train"  # the GPU fine-tuning notebook
        self.kernels_weights = self.kernels_dir / "weights"  # the Kaggle Model instance's files

    def pretrain_run(self, family: str) -> Path:
        return self.pretrain_dir / family

    def pretrain_model(self, family: str) -> Path:
        return self.pretrain_run(family) / "model_final.pth"

    def finetune_run(self, family: str, fold: int) -> Path:
        return self.finetune_dir / family / f"fold{fold}"

    def finetune_model(self, family: str, fold: int) -> Path:
        return self.finetune_run(family, fold) / "model_best.pth"

    def predictions(self, family: str, split: str) -> Path:
        return self.predictions_dir / family / f"{split}.npz"

    def postprocessed(self, split: str, family: str | None = None) -> Path:
        """The final instances of a split: of the ensemble, or of one family alone."""
        folder = self.postprocess_dir / family if family else self.postprocess_dir
        return folder / f"{split}.csv"

    def livecell_annotations(self, split: str) -> Path:
        return self.livecell / "annotations" / "LIVECell" / f"livecell_coco_{split}.json"

    def livecell_images(self, split: str) -> Path:
        sub = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        return self.livecell / "images" / sub
