"""Functions the cluster tests hand to Dask workers. They live here, not in a test module, so a
worker that unpickles one imports this small module only (not the test module and all it imports)."""

from __future__ import annotations

import time


def worker_and_items(items):
    from distributed import get_worker

    time.sleep(0.05)
    return get_worker().address, list(items)


def items_after(items, seconds: float):
    time.sleep(seconds)
    return list(items)


_HELD: list = []  # memory a task keeps in its worker's process after it returns


def items_after_filling_memory(items, share: float):
    """Grow this worker's process to `share` of its memory limit and keep it that way, as a trained
    model's tensors would stay: memory that is not Dask's data, so spilling cannot free it, and the
    worker pauses (80 % by default) once its monitor sees it."""
    import numpy as np
    import psutil
    from distributed import get_worker
    from distributed.core import Status

    worker = get_worker()
    limit = worker.memory_manager.memory_limit
    _HELD.append(np.ones(max(0, int(share * limit) - psutil.Process().memory_info().rss), dtype=np.uint8))
    # return only once the monitor has paused the worker: on a loaded machine a task returning at once
    # let the worker start the next partition before its monitor (every 100 ms) saw the memory
    deadline = time.monotonic() + 30
    while worker.status != Status.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(items)
