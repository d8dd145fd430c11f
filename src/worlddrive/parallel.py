"""Run independent jobs on a local process pool or a Ray cluster; generation and evaluation share it.

Workers are fresh interpreters (spawn), so no SUMO, zarr or torch state is copied by fork, and each dies with its
parent, so a killed run leaves no writer behind. Results arrive in order of completion.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")
PR_SET_PDEATHSIG = 1


def run_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    done: Callable[[R], Any],
    workers: int = 1,
    ray_address: str | None = None,
) -> None:
    """Call `done(fn(job))` for every job; `fn` must be a module-level function (it is pickled by reference)."""
    if ray_address is not None:
        _run_ray(fn, jobs, ray_address, done)
    elif workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done(fn(job))
    else:
        _run_local(fn, jobs, workers, done)


def _run_local(fn: Callable[[J], R], jobs: Sequence[J], workers: int, done: Callable[[R], Any]) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        try:
            for future in as_completed(futures):
                done(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # jobs in flight still finish; queued ones do not start
            raise


def _die_with_parent(parent: int) -> None:
    """Pool initializer: have Linux kill this worker when the parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _run_ray(fn: Callable[[J], R], jobs: Sequence[J], address: str, done: Callable[[R], Any]) -> None:
    """The same jobs as Ray tasks of one CPU each; joins a running Ray if there is one, else starts/connects."""
    import ray  # imported here: slow to import and only needed for clusters

    started = not ray.is_initialized()
    if started:
        ray.init(address=address)
    task = ray.remote(num_cpus=1)(fn)
    pending = [task.remote(job) for job in jobs]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done(ray.get(ready[0]))
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started:
            ray.shutdown()
