"""The one run loop: a Plan on loaded models -> each image, as soon as it is made, with its PNG metadata.

Each image is made by its own task run (one seed at a time), so it equals what that seed makes alone and
a shell can save or send it at once. `describe` is what every image's PNG records: the A1111
`parameters` text and the kandi JSON chunk (command, input files, repos, device, dtype, sampler), so
`--from-png` works on what any shell wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from .. import __version__
from ..configs import GenerationOptions
from ..pngmeta import describe, png_bytes
from .models import ModelChoice
from .plan import Plan


class Cancelled(Exception):
    """The run was cancelled between two steps; `images` are those finished before."""

    def __init__(self, images: list[Image] | None = None) -> None:
        super().__init__("cancelled")
        self.images = images or []


@dataclass
class Image:
    """One image made: its seed, the PIL image, and its PNG (with the parameters and kandi chunks)."""

    index: int
    seed: int
    image: Any
    png: bytes
    parameters: str

    @property
    def width(self) -> int:
        return self.image.size[0]

    @property
    def height(self) -> int:
        return self.image.size[1]


@dataclass
class Step:
    """Where a run is: image `image` (0-based) of `num_images`, step `step` of `total` in it."""

    image: int
    num_images: int
    stage: str
    step: int
    total: int

    @property
    def fraction(self) -> float:
        return (self.image + self.step / max(self.total, 1)) / max(self.num_images, 1)


def sampler_name(models: Any, scheduler: str | None) -> str:
    """A1111's `Sampler`: the sampler asked for by its A1111 name (DPM++ 2M Karras, Euler a...), else the
    model's own scheduler class without `Scheduler` (DDPM)."""
    if scheduler is not None:
        from ..schedulers.names import canonical

        return canonical(scheduler)
    if getattr(models, "variant", None) is not None and not hasattr(models, "scheduler"):  # Kandinsky 3.1
        return "Kandinsky Flash" if models.variant == "flash" else "DDIM"
    if type(models.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        return "Euler"
    return type(models.scheduler).__name__.removesuffix("Scheduler").upper()


def image_info(command: str, model: ModelChoice, models: Any, scheduler: str | None, variant: str | None,
               inputs: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the kandi chunk of each image records besides its options (`pngmeta.describe`'s `info`)."""
    unet = getattr(models, "unet", None) or models.transformer  # Kandinsky 5 has a DiT
    return {
        "command": command,
        **({"inputs": inputs} if inputs else {}),
        "repos": {"decoder": model.decoder, "prior": model.prior},
        "variant": variant,
        "device": unet.device.type,
        "dtype": str(unet.dtype).removeprefix("torch."),
        "sampler": sampler_name(models, scheduler),
    }


def make_png(index: int, image: Any, opts: GenerationOptions, info: dict[str, Any],
             fields: dict[str, Any], size: tuple[int, int] | None = None) -> Image:  # fmt: skip
    """`size`: what `Size` says, when not the image's (a hi-res pass records the first pass's, as A1111)."""
    text, data = describe(opts.to_dict(), info, size or image.size, __version__, fields)
    return Image(index, opts.seed, image, png_bytes(image, text, data), text)


def own_schedulers(models: Any) -> Any:
    """The models with their own scheduler copies: set_timesteps writes into a scheduler, so each run
    gets its own and runs may overlap on one set of weights."""
    own = {
        n: copy.deepcopy(getattr(models, n)) for n in ("scheduler", "prior_scheduler") if hasattr(models, n)
    }
    return replace(models, **own)


def total_steps(models: Any, plan: Plan) -> int:
    from ..pipelines.tasks import steps_per_image

    if plan.hires is not None:
        from ..pipelines.hires import hires_steps_per_image

        return hires_steps_per_image(models, plan.opts, plan.hires)
    return steps_per_image(models, plan.opts, plan.prior_runs, plan.strength)


def apply_loras(models: Any, plan: Plan) -> None:
    """The plan's LoRAs on the models, exactly those (none: any loaded before are switched off)."""
    from .. import lora

    if plan.loras or any(lora.adapter_names(m) for m in lora.lora_models(models).values()):
        lora.apply_loras(models, plan.loras)


def _task(plan: Plan) -> tuple[Any, dict[str, Any]]:
    """The task generator and its inputs: a hi-res pass runs hires.hires_fix instead of text_to_image."""
    if plan.hires is not None:
        from ..pipelines.hires import hires_fix

        return hires_fix, {"hires": plan.hires}
    return plan.task, plan.kwargs


def run(models: Any, plan: Plan, variant: str | None = None, on_step: Callable[[Step], None] | None = None,
        cancelled: Callable[[], bool] | None = None, info: dict[str, Any] | None = None) -> Iterator[Image]:  # fmt: skip
    """Each image of the plan as it is made; `on_step` hears every step, and the run stops with
    `Cancelled` at the first step after `cancelled()` turns true. `info` adds to the kandi chunk."""
    from ..pipelines.tasks import Made, each_image

    apply_loras(models, plan)
    models = own_schedulers(models)
    total = total_steps(models, plan)
    meta = _meta(plan, models, variant) | (info or {})
    made: list[Image] = []
    done = 0
    task, kwargs = _task(plan)
    opts = plan.opts if plan.prompt is None else replace(plan.opts, prompt=plan.prompt)
    size = (plan.opts.width, plan.opts.height) if plan.hires is not None else None
    for event in each_image(models, opts, task, **kwargs):
        if cancelled is not None and cancelled():
            raise Cancelled(made)
        if isinstance(event, Made):
            one = replace(plan.opts, seed=event.seed, num_images=1)
            made.append(make_png(event.index, event.image, one, meta, plan.fields, size))
            done = 0
            yield made[-1]
        else:
            done += 1
            if on_step is not None:
                on_step(Step(event.image, event.num_images, event.stage, min(done, total), total))


def _meta(plan: Plan, models: Any, variant: str | None) -> dict[str, Any]:
    meta = image_info(plan.command, plan.model, models, plan.opts.scheduler, variant, plan.inputs)
    return meta | ({"loras": plan.lora_info} if plan.lora_info else {})


def run_batch(models: Any, plans: list[Plan], variant: str | None = None,
              on_step: Callable[[Any], None] | None = None,
              infos: list[dict[str, Any]] | None = None) -> list[list[Image]]:  # fmt: skip
    """Text-to-image plans of one model and size through the decoder together (pipelines.k22_batch):
    each plan's images, with the metadata `run` writes plus the decoder batch each was made in."""
    from ..pipelines.k22_batch import text_to_image_batch
    from ..pipelines.k22_tasks import Result

    if any(p.loras != plans[0].loras or p.hires is not None or p.prompt is not None for p in plans):
        raise ValueError("a decoder batch takes plain text-to-image plans of one set of LoRAs")
    apply_loras(models, plans[0])
    images: list[Any] = []
    for event in text_to_image_batch(models, [p.opts for p in plans]):
        if isinstance(event, Result):
            images = list(event.images)
        elif on_step is not None:
            on_step(event)
    out = []
    for p, more in zip(plans, infos or [{}] * len(plans)):
        mine, images = images[: p.opts.num_images], images[p.opts.num_images :]
        meta = _meta(p, models, variant) | more
        out.append([make_png(k, im, replace(p.opts, seed=p.opts.seed + k, num_images=1), meta, p.fields)
                    for k, im in enumerate(mine)])  # fmt: skip
    return out
