"""`kandi batch --ray`: the same job on a Ray cluster (or a local Ray instance).

Each model replica is a Ray actor holding a `batch.Worker` (one per GPU; without GPUs, one per node or
`--workers N`, sharing the CPUs), which loads each model once. This process stays the driver: it hands
out the same chunks as a local run, a few at a time per actor, and writes every image and manifest line
itself as results come back, so the output folder, the manifest and the resume rules are exactly the
local ones, and no shared file system is needed for the outputs. A killed worker loses nothing
finished: Ray restarts its actor and runs the chunk again, and a chunk whose actor is gone for good
goes to a fresh one (an item fails only after `TRIES` lost runs).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from ..engine import UsageError
from ..errors import KandiError
from .job import Request
from .runner import Driver, Outcome, Runtime, Worker, chunks

IN_FLIGHT = 2  # chunks queued on each actor, so it never waits while the driver writes
TRIES = 3  # runs of a chunk lost to dead workers before its items fail (Ray's own restarts not counted)


def run_on_ray(driver: Driver, requests: list[Request], runtime: Runtime, address: str | None,
               workers: int | None) -> None:  # fmt: skip
    """Every chunk of the job on Ray actors; `address` None starts (or joins, with RAY_ADDRESS) a local one."""
    ray = _import_ray()
    started = _connect(ray, address)
    try:
        shape = _replicas(ray, workers, runtime.device)
        runtime = replace(runtime, batch_size=runtime.batch_size or (4 if shape.gpus else 1))
        work = [c for c in chunks(requests, runtime.batch_size) if any(r.write for r in c)]
        pool = _Pool(ray, runtime, shape)
        try:
            pool.drive(work, driver)
        finally:
            pool.stop()
    finally:
        if started:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'kandi[ray]'") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster (or start a local instance); False if this process was already connected."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError, ValueError...)
        where = f" at {address}" if address else ""
        raise KandiError(f"cannot start or reach Ray{where}: {_first_line(e)}") from None
    return True


@dataclass(frozen=True)
class _Shape:
    workers: int
    gpus: bool  # one GPU per worker
    cpus: int  # CPUs per worker (its torch threads when it has no GPU)


def _replicas(ray: Any, workers: int | None, device: str | None) -> _Shape:
    """How many workers and what each takes: a GPU each when the cluster has GPUs (and --device is not
    cpu); else one per node, or `workers`, each with an equal share of the CPUs."""
    resources = ray.cluster_resources()
    gpus = 0 if (device or "").startswith("cpu") else int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus:
        n = workers or gpus
        if n > gpus:
            raise UsageError(f"--workers {n}: the Ray cluster has {gpus} GPUs, one per worker")
        return _Shape(n, True, 1)
    n = workers or max(1, len([node for node in ray.nodes() if node.get("Alive")]))
    if n > cpus:
        raise UsageError(f"--workers {n}: the Ray cluster has {cpus} CPUs, at least one per worker")
    return _Shape(n, False, cpus // n)


class _Pool:
    """The actors, and the chunks on their way through them."""

    def __init__(self, ray: Any, runtime: Runtime, shape: _Shape) -> None:
        self.ray, self.runtime, self.shape = ray, runtime, shape
        options = {"num_cpus": shape.cpus, "num_gpus": 1 if shape.gpus else 0,
                   "max_restarts": TRIES, "max_task_retries": TRIES}  # fmt: skip
        self._actor_class = ray.remote(Worker).options(**options)
        self.actors = [self._new() for _ in range(shape.workers)]
        self.pending: dict[
            Any, tuple[int, Any, list[Request], int]
        ] = {}  # ref -> (slot, actor, chunk, tries)

    def _new(self) -> Any:
        return self._actor_class.remote(self.runtime, None if self.shape.gpus else self.shape.cpus)

    def drive(self, work: list[list[Request]], driver: Driver) -> None:
        queue = deque((chunk, 0) for chunk in work)
        for slot in range(len(self.actors)):
            self._feed(slot, queue)
        while self.pending:
            (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
            slot, actor, chunk, tries = self.pending.pop(ref)
            try:
                outcomes = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                self._lost(slot, actor, chunk, tries, e, queue, driver)
            else:
                for req, outcome in zip(chunk, outcomes):
                    driver.take(req, outcome)
            self._feed(slot, queue)

    def _feed(self, slot: int, queue: deque) -> None:
        actor = self.actors[slot]
        while queue and sum(p[0] == slot for p in self.pending.values()) < IN_FLIGHT:
            chunk, tries = queue.popleft()
            self.pending[actor.run.remote(chunk)] = (slot, actor, chunk, tries)

    def _lost(self, slot: int, actor: Any, chunk: list[Request], tries: int, error: Exception, queue: deque,
              driver: Driver) -> None:  # fmt: skip
        """A chunk whose run failed on Ray's side: again on a fresh actor, or its items fail after TRIES."""
        if isinstance(error, self.ray.exceptions.RayActorError) and self.actors[slot] is actor:
            self.ray.kill(actor, no_restart=True)
            self.actors[slot] = self._new()  # past Ray's restarts: a new replica in its place
        if tries + 1 < TRIES:
            queue.appendleft((chunk, tries + 1))
            return
        for req in chunk:
            driver.take(req, Outcome(req.id, error=f"lost on Ray {TRIES} times: {_first_line(error)}"))

    def stop(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
