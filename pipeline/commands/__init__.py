"""Commands that are not pipeline stages, one module each (`cellpipe <command>`): they inspect or
convert files on demand (a submission, a score report, the ledger, weights, the model families)
with a `main(cfg, args)`, and nothing in the pipeline reads what they write.

Commands import the library (`core`, `models`, `kaggle`), never a stage or each other.
"""
