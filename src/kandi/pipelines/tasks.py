"""One request's images, one seed at a time, for the shells (CLI, server, batch runner).

Each image is made by its own task run with `num_images=1`, so it can be saved (or sent) as soon as it
is done and equals what that seed makes alone. The task functions are those of `k22_tasks` (2.x) or
`k3_tasks` (Kandinsky 3), chosen by the models given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from . import k3_tasks, k5_tasks, k22_tasks, k31_tasks
from .k22 import steps_run
from .k22_tasks import Progress, Result


@dataclass
class Made:
    """Image `index` of a request, made with `seed`."""

    index: int
    seed: int
    image: Any  # PIL image


def steps_per_image(models: Any, opts: Any, prior_runs: int = 1, strength: float = 1.0) -> int:
    """The progress steps of one image: the prior's runs (2.x) and the decoder steps run at `strength`."""
    if isinstance(models, k31_tasks.K31Models):
        return k31_tasks.steps_per_image(models, opts, strength)
    prior = 0 if isinstance(models, k3_tasks.K3Models | k5_tasks.K5Models) else opts.prior_steps * prior_runs
    return prior + steps_run(opts.steps, strength)


def each_image(
    models: Any, opts: Any, task: str | Callable[..., Iterator[Any]], **kwargs: Any
) -> Iterator[Progress | Made]:
    """Progress events (with the image's index and the request's count) and each image as it is made."""
    if callable(task):  # a task function of its own, e.g. hires.hires_fix
        run = task
    else:
        family = {
            k3_tasks.K3Models: k3_tasks,
            k31_tasks.K31Models: k31_tasks,
            k5_tasks.K5Models: k5_tasks,
        }.get(type(models), k22_tasks)
        run = getattr(family, task)
    n = opts.num_images
    for k in range(n):
        seed = opts.seed + k
        for event in run(models, replace(opts, seed=seed, num_images=1), **kwargs):
            yield (
                Made(k, seed, event.images[0])
                if isinstance(event, Result)
                else replace(event, image=k, num_images=n)
            )
