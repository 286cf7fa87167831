"""The models a server holds and one request run on them: options in, PNGs with metadata out.

Each model named at start-up is loaded once (its image decoder and prior); its inpainting and
ControlNet decoders load on first use and share the prior already in memory. A request runs one of
the `k22_tasks` / `k3_tasks` generators, so every image equals what `kandi generate` (and the
diffusers-compatible pipelines) make with the same seed.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import __version__
from ..configs import DEFAULT_MODEL, REGISTRY, GenerationOptions, ModelSpec
from ..errors import ModelNotFoundError
from ..pngmeta import describe, png_bytes

TASK_COMMANDS = {  # task function -> the kandi command recorded in the metadata (for --from-png)
    "text_to_image": "generate",
    "image_to_image": "img2img",
    "inpaint": "inpaint",
    "outpaint": "inpaint",
    "mix": "mix",
    "controlnet": "controlnet",
}
TASK_ROLES = {"inpaint": "inpaint", "outpaint": "inpaint", "controlnet": "controlnet"}


class Cancelled(Exception):
    """The request was cancelled (client gone, interrupt, or DELETE) between two steps; `images` are the
    ones finished before (A1111 clients show them after an interrupt)."""

    def __init__(self, images: list[Generated] | None = None) -> None:
        super().__init__("cancelled")
        self.images = images or []


@dataclass
class Request:
    """One generation: a task of `k22_tasks`/`k3_tasks` with its options (seed set) and inputs."""

    task: str
    opts: GenerationOptions
    kwargs: dict[str, Any] = field(default_factory=dict)  # the task's inputs: PIL images, strength...
    fields: dict[str, Any] = field(default_factory=dict)  # more A1111 fields, e.g. Denoising strength
    strength: float = 1.0  # share of the decoder steps run (for progress totals)
    prior_runs: int = 1  # prior runs per image (mix: one per text and one more)
    notes: list[str] = field(default_factory=list)  # what was adapted, e.g. a sampler kandi lacks

    @property
    def role(self) -> str:
        return TASK_ROLES.get(self.task, "decoder")


@dataclass
class Generated:
    """One image made: its seed and its PNG (with the parameters and kandi JSON text chunks)."""

    seed: int
    png: bytes
    parameters: str
    width: int
    height: int


@dataclass
class Step:
    """Where a request is: image `image` (0-based) of `num_images`, step `step` of `total` in it."""

    image: int
    num_images: int
    stage: str
    step: int
    total: int

    @property
    def fraction(self) -> float:
        return (self.image + self.step / max(self.total, 1)) / max(self.num_images, 1)


@dataclass
class Entry:
    """A model the server was started with: what clients call it and where its repos are."""

    label: str
    name: str  # as given on the command line
    spec: ModelSpec | None
    family: str = "k22"  # "k21", "k22" or "k3"; set once loaded
    loaded: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # role -> (cli._Model, models)

    def defaults(self) -> dict[str, Any]:
        s = self.spec or REGISTRY[DEFAULT_MODEL]
        d = {"width": s.default_size, "height": s.default_size, "steps": s.default_steps,
             "guidance_scale": s.default_guidance}  # fmt: skip
        if self.family != "k3":
            d |= {"prior_steps": s.default_prior_steps, "prior_guidance_scale": s.default_prior_guidance}
        return d

    def tasks(self) -> list[str]:
        if self.family == "k3":
            return ["text_to_image", "image_to_image"]
        return list(TASK_COMMANDS)


class Engine:
    """The loaded models and a `run(request)` that any number of threads may call at once."""

    def __init__(self, models: list[str], device: str | None = None, dtype: str | None = None,
                 variant: str | None = None, offline: bool = False, prior: str | None = None) -> None:  # fmt: skip
        """`models`: registry names, folders or hub ids; `prior`: the prior repo of models that name none."""
        from ..cli import _choose_model, _runtime

        self.device, self.dtype = _runtime(device, dtype, None)
        self.variant, self.hub = variant, ({"local_files_only": True} if offline else {})
        self.prior = prior
        self.entries: dict[str, Entry] = {}
        for name in models or [DEFAULT_MODEL]:
            m = _choose_model(name, None, None)
            self.entries[m.label] = Entry(m.label, name, m.spec)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @property
    def default(self) -> str:
        return next(iter(self.entries))

    def load(self) -> Engine:
        """Load every model's image decoder (and prior) now, so the first request does not wait."""
        for label in self.entries:
            self.models(label, "decoder")
        return self

    def entry(self, name: str | None) -> Entry:
        """The entry a request names (label, registry name or alias, or as given); None: the first."""
        if name is None or name == "":
            return self.entries[self.default]
        for e in self.entries.values():
            if name in (e.label, e.name) or (e.spec and name.lower() in (e.spec.name, *e.spec.aliases)):
                return e
        raise LookupError(f"model {name!r} is not loaded; this server has: {', '.join(self.entries)}")

    def models(self, label: str, role: str) -> tuple[Any, Any]:
        """(cli._Model, K22Models | K3Models) for `role` ("decoder", "inpaint", "controlnet"), loaded once."""
        entry = self.entries[label]
        with self._guard:
            lock = self._locks.setdefault((label, role), threading.Lock())
        with lock:  # two first requests for one decoder load it once
            if role not in entry.loaded:
                entry.loaded[role] = self._load(entry, role)
            return entry.loaded[role]

    def _load(self, entry: Entry, role: str) -> tuple[Any, Any]:
        from ..cli import _choose_model, _is_k3, _with_download_hint
        from ..loading.hub import connected_repos, resolve_repo_dir
        from ..pipelines.k3_tasks import K3Models
        from ..pipelines.k22_tasks import K22Models

        base = entry.loaded.get("decoder") if role != "decoder" else None
        model = _choose_model(entry.name, base[0].prior if base else self.prior, None, role)
        try:
            if _is_k3(model, self.variant, self.hub):
                entry.family = "k3"
                models = K3Models.load(
                    model.decoder, torch_dtype=self.dtype, variant=self.variant, **self.hub
                )
                return replace(model, prior=None), models.to(self.device)
            if model.prior is None:
                card = connected_repos(resolve_repo_dir(model.decoder, variant=self.variant, **self.hub))
                model = replace(model, prior=card.get("prior") or REGISTRY[DEFAULT_MODEL].prior_repo)
            shared = base[1] if base and base[0].prior == model.prior else None
            models = K22Models.load(model.decoder, model.prior, torch_dtype=self.dtype, variant=self.variant,
                                    shared_prior=shared, **self.hub)  # fmt: skip
        except ModelNotFoundError as e:
            raise _with_download_hint(e, model.spec) from None
        entry.family = "k21" if models.k21 else "k22"
        return model, models.to(self.device)

    def run(self, label: str, req: Request, progress: Callable[[Step], None],
            cancelled: Callable[[], bool]) -> list[Generated]:  # fmt: skip
        """Make the request's images one seed at a time; `progress` hears every step, and the run stops
        with `Cancelled` at the first step after `cancelled()` turns true."""
        from ..cli import image_info
        from ..pipelines.tasks import Made, each_image, steps_per_image

        model, models = self.models(label, req.role)
        # set_timesteps writes into a scheduler: each run gets its own, so runs may overlap
        own = {
            n: copy.deepcopy(getattr(models, n))
            for n in ("scheduler", "prior_scheduler")
            if hasattr(models, n)
        }
        models = replace(models, **own)
        total = steps_per_image(models, req.opts, req.prior_runs, req.strength)
        info = image_info(TASK_COMMANDS[req.task], model, models, req.opts.scheduler, self.variant, self.device,
                          self.dtype)  # fmt: skip
        out: list[Generated] = []
        done = 0
        for event in each_image(models, req.opts, req.task, **req.kwargs):
            if cancelled():
                raise Cancelled(out)
            if isinstance(event, Made):
                out.append(
                    self._png(event.image, replace(req.opts, seed=event.seed, num_images=1), info, req.fields)
                )
                done = 0
            else:
                done += 1
                progress(Step(event.image, event.num_images, event.stage, min(done, total), total))
        return out

    @staticmethod
    def _png(image: Any, opts: GenerationOptions, info: dict[str, Any], fields: dict[str, Any]) -> Generated:
        text, data = describe(opts.to_dict(), info, image.size, __version__, fields)
        return Generated(opts.seed, png_bytes(image, text, data), text, *image.size)
