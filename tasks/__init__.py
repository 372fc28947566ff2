"""Pipeline stages. At this level only the eight stage modules and the stage table (tasks/stages.py);
what they stand on lives in common/ (every stage), checks/ (clean, validate, split) and judging/
(evaluate, promote). Each stage has a pydantic `Params`, a pure `run(params, paths)` and `main()` for
`python -m tasks.<stage>`. Nothing here imports prefect."""
