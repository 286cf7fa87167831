"""The model cache every long-lived shell runs on: models loaded once by (model, role), safe to share
between threads, with the shared prior; and `plan` + `run` against what it holds.

The server holds every model it was started with (`keep=None`); a batch worker holds the last one used
(`keep=1`), so a job of several models does not hold them all at once.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..configs import DEFAULT_MODEL, ModelSpec
from .models import ModelChoice, choose_model, defaults, family, load, runtime
from .plan import Plan, plan
from .requests import Limits, Request, RequestError, tasks_of
from .run import Image, Step, run


@dataclass
class Entry:
    """A model the engine knows: what clients call it, where its repos are, what is loaded of it."""

    label: str
    name: str  # as given
    prior: str | None
    spec: ModelSpec | None
    family: str | None = None  # "k21", "k22" or "k3"; known from the spec, else once loaded
    loaded: dict[str, tuple[ModelChoice, Any]] = field(default_factory=dict)  # role -> (choice, models)
    lora_used: bool = False  # a run applied LoRAs to its models: later runs take turns with each other

    def defaults(self) -> dict[str, Any]:
        return defaults(self.spec, self.family)

    def tasks(self) -> list[str]:
        return tasks_of(self.family or "k22")


class Engine:
    """Loaded models and `run(plan)`, which any number of threads may call at once."""

    def __init__(self, models: list[str] | None = None, device: str | None = None, dtype: str | None = None,
                 variant: str | None = None, offline: bool = False, prior: str | None = None,
                 limits: Limits | None = None, keep: int | None = None, downloads: bool = False,
                 compile: bool = False) -> None:  # fmt: skip
        """`models`: registry names, folders or hub ids (more may be added on use when `keep` is set);
        `prior`: the prior repo of models that name none; `compile`: torch.compile each loaded UNet and
        MoVQ decoder (`--compile`; models without them run as they are)."""
        self.device, self.dtype = runtime(device, dtype, None)
        self.variant, self.offline, self.prior = variant, offline, prior
        self.limits, self.keep, self.downloads = limits or Limits(), keep, downloads
        self.compile = compile
        self.entries: dict[str, Entry] = {}
        for name in models if models is not None else [DEFAULT_MODEL]:
            self.add(name)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._used: list[str] = []

    def add(self, name: str, prior: str | None = None) -> Entry:
        m = choose_model(name, prior or self.prior, None)
        if m.label not in self.entries:
            fam = m.spec.family if m.spec else None
            self.entries[m.label] = Entry(m.label, name, prior or self.prior, m.spec, fam)
        return self.entries[m.label]

    @property
    def default(self) -> str:
        return next(iter(self.entries))

    def load(self) -> Engine:
        """Load every model's image decoder (and prior) now, so the first request does not wait."""
        for label in list(self.entries):
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

    def models(self, label: str, role: str) -> tuple[ModelChoice, Any]:
        """(choice, K22Models | K3Models) for `role` ("decoder", "inpaint", "controlnet"), loaded once."""
        entry = self.entries[label]
        with self._guard:
            lock = self._locks.setdefault((label, role), threading.Lock())
        with lock:  # two first requests for one decoder load it once
            if role not in entry.loaded:
                self._evict(label)
                entry.loaded[role] = self._load(entry, role)
            self._used = [k for k in self._used if k != label] + [label]
            return entry.loaded[role]

    def _load(self, entry: Entry, role: str) -> tuple[ModelChoice, Any]:
        base = entry.loaded.get("decoder") if role != "decoder" else None
        model = choose_model(entry.name, base[0].prior if base else entry.prior, None, role)
        loaded = load(
            model,
            self.device,
            self.dtype,
            self.variant,
            self.offline,
            self.downloads,
            shared_prior=base,
            role=role,
        )
        entry.family = family(loaded[1])
        if self.compile:
            from .. import fast

            try:
                fast.compile_models(loaded[1])
            except ValueError:
                pass  # Kandinsky 3.1 / 5 have no UNet + MoVQ pair to compile: they run eagerly
        return loaded

    def _evict(self, label: str) -> None:
        """With `keep`, let go of the models used longest ago before another loads (its memory first)."""
        if self.keep is None:
            return
        others = [k for k in self._used if k != label]
        if len(others) >= self.keep:
            for k in others[: len(others) - self.keep + 1]:
                self.entries[k].loaded.clear()
                self._used.remove(k)
            gc.collect()
            _empty_cache()

    # ---------------------------------------------------------------------------------------- requests

    def plan(self, req: Request, limits: Limits | None = None) -> tuple[Entry, Plan]:
        """The request's entry (added if this engine may add models) and Plan."""
        try:
            entry = (
                self.entry(req.model)
                if self.keep is None
                else self.add(req.model or DEFAULT_MODEL, req.prior)
            )
        except LookupError as e:
            raise RequestError(str(e), "model", 404) from None

        def choose(name: Any, prior: Any, recorded: Any, role: str) -> ModelChoice:
            base = entry.loaded.get("decoder")
            return choose_model(entry.name, (base[0].prior if base else None) or entry.prior, None, role)

        p = plan(req, limits or self.limits, choose, entry.family, entry.label)
        p.opts.model = entry.label
        return entry, p

    def run(self, label: str, p: Plan, on_step: Callable[[Step], None] | None = None,
            cancelled: Callable[[], bool] | None = None, info: dict[str, Any] | None = None) -> Iterator[Image]:  # fmt: skip
        model, models = self.models(label, p.role)
        p.model = model
        entry = self.entries[label]
        if not (p.loras or entry.lora_used):
            yield from run(models, p, self.variant, on_step, cancelled, info)
            return
        # LoRAs change the shared models for the length of a run: such runs on one model take turns
        entry.lora_used = True
        with self._guard:
            lock = self._locks.setdefault((label, "lora"), threading.Lock())
        with lock:
            yield from run(models, p, self.variant, on_step, cancelled, info)


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
