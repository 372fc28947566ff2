"""Where the stages' per-image work runs: in this process for small data, else on Dask.

`engine:` in params.yaml (EngineParams) chooses it. A stage cuts its images into partitions of
`partition_size` and hands a module-level function plus one partition at a time to `Engine.imap`,
which yields the partition results in order. Behind it is either

- in-process: the function is called here, one partition after another (data below
  `in_process_below` images, where starting worker processes costs more than it saves: `make run`
  and the unit tests need no set-up and start nothing);
- a dask.distributed Client: to `address` (tcp://host:8786; the environment variable
  IMGCLS_DASK_ADDRESS, set by `imgcls run --cluster`, overrides it), else to the cluster of the Prefect
  flow's DaskTaskRunner when a stage runs inside `imgcls run` (one cluster for the whole flow run),
  else to a LocalCluster sized to this machine that lives as long as the stage.

Either way the results are the same, in the same order: a partition is computed by the same function
on the same inputs, and the driver consumes them in submission order. At most `window` partitions are
in flight, so the driver never holds more than that many partitions' results at once (augment writes
each decoded partition into its memory map and drops it).

Workers receive everything explicitly: a function importable from `tasks` (imgcls must be installed
on every worker, see docs/scaling.md) and plain arguments, among them the absolute store path. They
read nothing else of the driver's disk: no params file, no manifest, no relative path."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from tasks.common.errors import UserError
from tasks.common.params import Strict

log = logging.getLogger(__name__)

ADDRESS_ENV = "IMGCLS_DASK_ADDRESS"
SECTION = "engine"


class EngineParams(Strict):
    address: str | None = None  # tcp://host:8786 of a running scheduler; null: embedded
    workers: int | Literal["auto"] = "auto"  # embedded LocalCluster: worker processes (auto: usable CPUs)
    memory_limit: str = "auto"  # per embedded worker, Dask syntax ("2GiB"); auto: RAM / workers
    partition_size: int = Field(512, ge=1)  # images per task
    in_process_below: int = Field(5000, ge=0)  # fewer images than this: no cluster, work in this process
    window: int | Literal["auto"] = "auto"  # partitions in flight at once (auto: 2 per worker thread)
    # seconds a stage waits with every worker paused (Dask pauses one at 80 % of its memory limit) or
    # none connected before it fails; 0: wait for ever. A paused worker whose memory is not its data
    # (a torch model's, say) can stay paused for good, and the stage would wait in silence
    stalled_limit_s: float = Field(600.0, ge=0)

    @field_validator("address")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("must be a scheduler URL such as tcp://host:8786, or null")
        return value

    @field_validator("workers", "window")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 or auto")
        return value


_CONFIG: contextvars.ContextVar[EngineParams | None] = contextvars.ContextVar("imgcls_engine", default=None)


def use(cfg: EngineParams) -> None:
    """Make `cfg` the engine of the stages run from now on in this context. Called by
    tasks.common.params.validate_file, which every entry point (`python -m tasks.X`, DVC, the flow)
    runs on its params file before a stage starts."""
    _CONFIG.set(cfg)


@contextlib.contextmanager
def configured(cfg: EngineParams) -> Iterator[EngineParams]:
    """`cfg` in force inside the block only (tests, benchmarks)."""
    token = _CONFIG.set(cfg)
    try:
        yield cfg
    finally:
        _CONFIG.reset(token)


def current() -> EngineParams:
    """The engine settings in force: those of the params file validated last in this context
    (defaults when none was, e.g. a stage's run() called directly), with IMGCLS_DASK_ADDRESS
    overriding the address."""
    cfg = _CONFIG.get() or EngineParams()
    env = os.environ.get(ADDRESS_ENV, "").strip()
    if not env:
        return cfg
    if "://" not in env:
        raise UserError(f"{ADDRESS_ENV}={env!r}: must be a scheduler URL such as tcp://host:8786")
    return cfg.model_copy(update={"address": env})


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blocks_in_threads(measure: Callable[[int], None], total: int, block: int) -> None:
    """measure(start) for every start in range(0, total, block): here when there is one block, else on
    a thread per usable CPU. For the driver's numpy work on pairs (tasks.checks.similarity,
    tasks.checks.registration): numpy's arithmetic lets go of the GIL, so the threads use the cores the
    engine's workers leave idle."""
    starts = range(0, total, block)
    if len(starts) < 2:
        for start in starts:
            measure(start)
        return
    with ThreadPoolExecutor(usable_cpus()) as pool:
        list(pool.map(measure, starts))


def local_cluster_kwargs(cfg: EngineParams) -> dict[str, Any]:
    """LocalCluster arguments: one single-threaded worker process per usable CPU (decoding is
    CPU-bound Python/PIL work that a thread per process runs without contending for the GIL)."""
    workers = usable_cpus() if cfg.workers == "auto" else cfg.workers
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "memory_limit": cfg.memory_limit,
        "dashboard_address": None,
    }


def partitions(items: Sequence, size: int) -> list[Sequence]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def absolute(path: str | Path) -> str:
    """A path as workers must receive it: absolute, not relative to the driver's working directory."""
    return str(Path(path).resolve())


class _Done:
    """A finished in-process "future"."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


class InProcess:
    """The in-process executor: submit/map/gather like a distributed.Client, computed on the spot."""

    def submit(self, fn: Callable, *args, **kwargs) -> _Done:
        kwargs.pop("pure", None)
        return _Done(fn(*args, **kwargs))

    def map(self, fn: Callable, *iterables: Iterable, **kwargs) -> list[_Done]:
        return [self.submit(fn, *args, **kwargs) for args in zip(*iterables)]

    def gather(self, futures: Iterable[_Done]) -> list:
        return [f.result() for f in futures]


class Engine:
    # seconds without a partition result before the driver says what the workers are doing: a
    # cluster whose workers died or paused (memory) would otherwise leave a stage waiting in silence
    stall_warning_s: float = 300.0

    def __init__(self, executor: Any, kind: str, threads: int, cfg: EngineParams) -> None:
        self.executor = executor  # InProcess or a distributed.Client
        self.kind = kind  # "in-process" | "local-cluster" | "flow-cluster" | "cluster"
        self.threads = threads  # worker threads behind the executor (1 in-process)
        # a running cluster named by engine.address / IMGCLS_DASK_ADDRESS (directly or through the flow's
        # runner): its workers may be other machines; an embedded LocalCluster shares this one's cores
        self.running_cluster = not isinstance(executor, InProcess) and cfg.address is not None
        self.partition_size = cfg.partition_size
        self.window = max(2, 2 * threads) if cfg.window == "auto" else cfg.window
        self.stalled_limit_s = cfg.stalled_limit_s

    @property
    def client(self):
        """The distributed.Client, or None in-process."""
        return None if isinstance(self.executor, InProcess) else self.executor

    def imap(self, fn: Callable, parts: Iterable, *args, **kwargs) -> Iterator:
        """fn(part, *args, **kwargs) for every part, yielded in order, at most `window` in flight.
        `args`/`kwargs` are the same for every part: keep them small (they travel with each task)."""
        if self.client is None:
            for part in parts:
                yield fn(part, *args, **kwargs)
            return
        pending: collections.deque = collections.deque()
        parts = iter(parts)
        try:
            for part in parts:
                pending.append(self.executor.submit(fn, part, *args, pure=False, **kwargs))
                if len(pending) >= self.window:
                    yield self.result(pending.popleft())
            while pending:
                yield self.result(pending.popleft())
        finally:
            for future in pending:  # an error or an abandoned generator: stop the rest
                future.cancel()

    def result(self, future) -> Any:
        """future.result(), looking at the workers every stall_warning_s while none comes: each look is
        logged, and a cluster whose workers have all been paused or gone for stalled_limit_s fails the
        stage with one line instead of waiting for ever."""
        stalled_since = None
        while True:
            try:
                return future.result(timeout=self.stall_warning_s)
            except TimeoutError:
                if future.done():  # finished as the wait ran out, or the task raised it: its own outcome
                    return future.result()
            workers = list(self.client.scheduler_info().get("workers", {}).values())
            if any(w.get("status") != "paused" for w in workers):
                stalled_since = None
            else:
                stalled_since = stalled_since or time.monotonic()
                stalled_for = time.monotonic() - stalled_since
                if self.stalled_limit_s and stalled_for >= self.stalled_limit_s:
                    raise UserError(
                        f"the Dask workers have been paused or gone for {stalled_for:.0f} s "
                        f"(engine.stalled_limit_s) and no task finished; {describe_workers(workers)}. "
                        "A worker pauses at 80 % of its memory limit: give it more (engine.memory_limit, "
                        "`dask worker --memory-limit`), or fewer threads per worker"
                    )
            log.warning("no result for %.0f s, still waiting; %s", self.stall_warning_s, describe_workers(workers))

    def map_partitions(self, fn: Callable, items: Sequence, *args, **kwargs) -> Iterator:
        return self.imap(fn, partitions(items, self.partition_size), *args, **kwargs)


def describe_workers(workers: Iterable[dict]) -> str:
    """Workers as in scheduler_info(): how many, their status and memory."""
    states = [
        f"{w.get('status', '?')} {w.get('metrics', {}).get('memory', 0) / 2**30:.1f}"
        f"/{(w.get('memory_limit') or 0) / 2**30:.1f} GiB"
        for w in workers
    ]
    return f"{len(states)} workers: " + (", ".join(states) if states else "none (start `dask worker`)")


# Who may lend a running cluster to the stages (the Prefect flow's DaskTaskRunner, flows/dask_runner.py).
# Registered from flows/, because tasks/ never imports prefect: cfg -> a distributed.Client or None.
_CLIENT_PROVIDERS: list[Callable[[EngineParams], Any]] = []


def register_client_provider(provider: Callable[[EngineParams], Any]) -> None:
    if provider not in _CLIENT_PROVIDERS:
        _CLIENT_PROVIDERS.append(provider)


def _provided_client(cfg: EngineParams):
    for provider in _CLIENT_PROVIDERS:
        client = provider(cfg)
        if client is not None:
            return client
    return None


def _threads(client) -> int:
    return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()))


@contextlib.contextmanager
def session(n_items: int, cfg: EngineParams | None = None, what: str = "") -> Iterator[Engine]:
    """An Engine for `n_items` images of per-image work."""
    cfg = cfg or current()
    if n_items < cfg.in_process_below:
        yield Engine(InProcess(), "in-process", 1, cfg)
        return
    import distributed

    with contextlib.ExitStack() as stack:
        client = _provided_client(cfg)
        kind = "flow-cluster"
        if client is None and cfg.address:
            kind = "cluster"
            try:
                client = stack.enter_context(distributed.Client(cfg.address, timeout="20s", set_as_default=False))
            except (OSError, TimeoutError) as exc:
                raise UserError(
                    f"cannot reach the Dask scheduler at {cfg.address} ({exc}); start it "
                    f"(`dask scheduler`) or unset engine.address / {ADDRESS_ENV}"
                ) from None
        elif client is None:
            kind = "local-cluster"
            cluster = stack.enter_context(distributed.LocalCluster(**local_cluster_kwargs(cfg)))
            client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        engine = Engine(client, kind, _threads(client), cfg)
        log.info(
            "%s: %d images on %s (%d worker threads, %d per task)",
            what or "engine",
            n_items,
            kind,
            engine.threads,
            engine.partition_size,
        )
        yield engine
