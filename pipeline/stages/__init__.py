"""The pipeline's stages, one module each (`cellpipe <stage>`): a thin `main(cfg, args)` that reads
its declared inputs, calls the library and writes its declared outputs through
`pipeline.runner.run_stage`. A stage module holds only its docstring, imports, constants,
`add_arguments(parser)` and `main` (tests/test_architecture.py checks it).

Stages import the library (`core`, `models`, `training`, `kaggle`), never each other.
"""
