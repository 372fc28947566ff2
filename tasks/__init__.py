"""Pipeline stages. One module per stage; each has a pydantic `Params`, a pure `run(params, paths)`
and `main()` for `python -m tasks.<stage>`. Nothing here imports prefect."""

STAGES = ("ingest", "clean", "validate", "split", "augment", "train", "evaluate", "promote")
