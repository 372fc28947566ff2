"""Orchestration: the Prefect flow over tasks.<stage>.run, the `imgcls` CLI and the prediction server."""
