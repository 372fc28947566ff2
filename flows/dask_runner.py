"""The flow's Dask: prefect-dask's DaskTaskRunner, whose cluster the stages' per-image work borrows
through tasks.common.engine (tasks/ never imports prefect, so the runner is handed over from here)."""

from __future__ import annotations

from tasks.common import engine


def flow_task_runner():
    """The Prefect flow's task runner. Its cluster starts only when a stage asks the engine for one
    (data above engine.in_process_below), then serves every later stage of the flow run;
    engine.address / IMGCLS_DASK_ADDRESS point it at a running scheduler instead of a LocalCluster."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(client_kwargs={"set_as_default": False})


def flow_client(cfg: engine.EngineParams):
    """The Client of the running flow's DaskTaskRunner (its cluster started on first use, with the
    engine's address or LocalCluster sizing), or None outside such a flow. prefect-dask 0.3.7 reads
    address and cluster_kwargs when it first builds its client, so they are set just before."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if not isinstance(runner, DaskTaskRunner):
        return None
    if runner._client is None and runner._cluster is None and not runner.address:
        if cfg.address:
            runner.address = cfg.address
        else:
            runner.cluster_kwargs = {**engine.local_cluster_kwargs(cfg), **runner.cluster_kwargs}
    return runner.client


engine.register_client_provider(flow_client)
