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
