"""Concepts spread over worker processes, each with its own copy of the model.

On a CPU one process per core with one thread each measures more concepts per minute than one
process with all threads, and keeps each run's timing its own. Shared by the convergence and the
time-to-quality benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import torch

from captinv.backends.base import ModelBackend

_WORKER: dict[str, ModelBackend] = {}
T = TypeVar("T")
R = TypeVar("R")


def _load(model: str, device: str | None, threads: int | None) -> None:
    from captinv.backends.diffusers_backend import DiffusersBackend

    if threads:
        torch.set_num_threads(threads)
    _WORKER["backend"] = DiffusersBackend.load(model, device=device)


def worker_backend() -> ModelBackend:
    """The model this process loaded (in a worker, or in the main process with one job)."""
    return _WORKER["backend"]


def map_concepts(
    model: str,
    measure: Callable[..., list[R]],
    items: Sequence[T],
    *args: Any,
    jobs: int = 1,
    device: str | None = None,
    threads: int | None = None,
) -> list[R]:
    """`measure(item, *args)` for every item, in `jobs` processes; the lists it returns, joined.

    `measure` must be a module-level function (it is pickled) and reads the model through
    `worker_backend()`. Workers run one thread each; with one job, `threads` (default: torch's).
    """
    if jobs <= 1:
        _load(model, device, threads)
        return [result for item in items for result in measure(item, *args)]
    with ProcessPoolExecutor(jobs, initializer=_load, initargs=(model, device, 1)) as pool:
        parts = pool.map(measure, items, *[[arg] * len(items) for arg in args])
        return [result for part in parts for result in part]
