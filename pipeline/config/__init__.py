"""The one config system for every stage.

Defaults live in typed pydantic blocks (`schema`), each field described. An experiment is a small
YAML file in `configs/` (optionally `_base_: other.yaml`) plus `key.sub=value` overrides from the
command line (`loader`). The resolved config is frozen; each stage saves the part it read beside
its outputs, in the files `layout` declares.
"""

from pipeline.config.layout import Layout
from pipeline.config.loader import dump_yaml, load_config, parse_overrides
from pipeline.config.schema import (
    AugmentConfig,
    CellposeConfig,
    Config,
    ConvertConfig,
    Detectron2Config,
    EnsembleConfig,
    FinetuneConfig,
    FinetuneSolverConfig,
    FlowConfig,
    FlowUNetConfig,
    FoldsConfig,
    GridConfig,
    KernelsConfig,
    MaskRCNNConfig,
    ModelConfig,
    PredictConfig,
    PrepareConfig,
    PretrainConfig,
    RCNNConfig,
    RleOrder,
    ScoreConfig,
    Section,
    SolverConfig,
    SubmitConfig,
    SyntheticConfig,
    TrainConfig,
    TuneConfig,
    View,
    WatershedConfig,
    WeightsConfig,
)

__all__ = [
    "AugmentConfig",
    "CellposeConfig",
    "Config",
    "ConvertConfig",
    "Detectron2Config",
    "EnsembleConfig",
    "FinetuneConfig",
    "FinetuneSolverConfig",
    "FlowConfig",
    "FlowUNetConfig",
    "FoldsConfig",
    "GridConfig",
    "KernelsConfig",
    "Layout",
    "MaskRCNNConfig",
    "ModelConfig",
    "PredictConfig",
    "PrepareConfig",
    "PretrainConfig",
    "RCNNConfig",
    "RleOrder",
    "ScoreConfig",
    "Section",
    "SolverConfig",
    "SubmitConfig",
    "SyntheticConfig",
    "TrainConfig",
    "TuneConfig",
    "View",
    "WatershedConfig",
    "WeightsConfig",
    "dump_yaml",
    "load_config",
    "parse_overrides",
]
