"""The pipeline's stages, one module each (`cellpipe <stage>`): a thin `main(cfg, args)` that reads
its declared inputs and writes its declared outputs through `pipeline.runner.run_stage`.

Stages import the library (`core`, `models`, `training`, `kaggle`), never each other.
"""
