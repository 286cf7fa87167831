"""The sampler vocabulary: AUTOMATIC1111 names, diffusers class names and k-diffusion aliases.

`make_sampler("DPM++ 2M Karras", pipe_scheduler_config)` builds the scheduler a shell asks for over a
pipeline's own base config (betas, steps_offset, ...), as diffusers' `X.from_config(pipe.scheduler.config)`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import SchedulerBase
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpm import DPMSolverMultistepScheduler
from .dpm_sde import DPMSolverSDEScheduler
from .dpm_single import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

# A1111's separate `scheduler` field; "Automatic" (or none) keeps what the sampler name says.
SCHEDULE_TYPES = ("Automatic", "Karras", "Exponential")


@dataclass(frozen=True)
class Sampler:
    name: str  # the A1111 name
    cls: type[SchedulerBase]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    karras: bool = False  # whether A1111's scheduler="Karras" applies


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DDPM", DDPMScheduler, {}, ("DDPMScheduler", "ddpm")),
    Sampler("DDIM", DDIMScheduler, {}, ("DDIMScheduler", "ddim")),
    Sampler(
        "DPM++ 2M",
        DPMSolverMultistepScheduler,
        {},
        ("DPMSolverMultistepScheduler", "k_dpmpp_2m", "dpmpp_2m"),
        True,
    ),
    Sampler("DPM++ 2M Karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, ("k_dpmpp_2m_ka",)),
    Sampler(
        "DPM++ 2M SDE",
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++"},
        ("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
        True,
    ),
    Sampler(
        "DPM++ 2M SDE Karras",
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        ("k_dpmpp_2m_sde_ka",),
    ),
    Sampler("Euler", EulerDiscreteScheduler, {}, ("EulerDiscreteScheduler", "k_euler", "euler"), True),
    Sampler(
        "Euler a",
        EulerAncestralDiscreteScheduler,
        {},
        ("EulerAncestralDiscreteScheduler", "k_euler_a", "euler_ancestral"),
    ),
    # the multistep / solver family: A1111 names where it has one; A1111 has no singlestep DPM-Solver
    # (its "DPM++ SDE" is a different, Brownian-tree sampler), so that one is named here
    Sampler("UniPC", UniPCMultistepScheduler, {}, ("UniPCMultistepScheduler", "unipc"), True),
    Sampler("DEIS", DEISMultistepScheduler, {}, ("DEISMultistepScheduler", "deis"), True),
    Sampler("DPM++ 2S", DPMSolverSinglestepScheduler, {}, ("DPMSolverSinglestepScheduler", "dpmpp_2s"), True),
    Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, ("PNDM", "PNDMScheduler", "plms")),
    Sampler("LCM", LCMScheduler, {}, ("LCMScheduler", "lcm")),
    # the k-diffusion second-order and multistep samplers (A1111's names and k_* aliases)
    Sampler("Heun", HeunDiscreteScheduler, {}, ("HeunDiscreteScheduler", "k_heun", "heun"), True),
    Sampler("DPM2", KDPM2DiscreteScheduler, {}, ("KDPM2DiscreteScheduler", "k_dpm_2", "dpm_2"), True),
    Sampler("DPM2 Karras", KDPM2DiscreteScheduler, {"use_karras_sigmas": True}, ("k_dpm_2_ka",)),
    Sampler(
        "DPM2 a",
        KDPM2AncestralDiscreteScheduler,
        {},
        ("KDPM2AncestralDiscreteScheduler", "k_dpm_2_a", "dpm_2_ancestral"),
        True,
    ),
    Sampler("DPM2 a Karras", KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": True}, ("k_dpm_2_a_ka",)),
    Sampler("LMS", LMSDiscreteScheduler, {}, ("LMSDiscreteScheduler", "k_lms", "lms"), True),
    Sampler("LMS Karras", LMSDiscreteScheduler, {"use_karras_sigmas": True}, ("k_lms_ka",)),
    # kandi's own seeded Brownian noise, not torchsde's: a seed's image differs from diffusers + torchsde
    Sampler(
        "DPM++ SDE", DPMSolverSDEScheduler, {}, ("DPMSolverSDEScheduler", "k_dpmpp_sde", "dpmpp_sde"), True
    ),
    Sampler("DPM++ SDE Karras", DPMSolverSDEScheduler, {"use_karras_sigmas": True}, ("k_dpmpp_sde_ka",)),
)


def _lookup() -> dict[str, Sampler]:
    table: dict[str, Sampler] = {}
    for s in SAMPLERS:
        for key in (s.name, *s.aliases):
            table[key.casefold()] = s
    return table


def _resolve(name: str) -> tuple[Sampler, str | None]:
    """The sampler a name means and the schedule type its suffix asks for ("UniPC Karras" -> UniPC,
    "karras"); a name in the table wins over a suffix reading ("DPM++ 2M Karras" is its own entry)."""
    if not isinstance(name, str):
        raise ValueError(f"sampler name must be a string, got {name!r}")
    table, key = _lookup(), " ".join(name.split()).casefold()
    if key in table:
        return table[key], None
    for kind in ("karras", "exponential"):
        base = key.removesuffix(" " + kind)
        if base != key and base in table:
            return table[base], kind
    known = ", ".join(s.name for s in SAMPLERS)
    raise ValueError(
        f"unknown sampler {name!r}; known samplers: {known} (or their diffusers class names; add "
        "' Karras' or ' Exponential' for that schedule type where the sampler has it)"
    )


def _find(name: str) -> Sampler:
    return _resolve(name)[0]


def canonical(name: str, scheduler: str | None = None) -> str:
    """The A1111 name of what `make_sampler(name, ..., scheduler)` builds ("unipc karras" -> "UniPC
    Karras"), checked without a config: a ValueError if the name or the schedule type is not available."""
    s, kind = _schedule(name, scheduler)
    _overrides(s, kind)
    suffix = (
        "" if kind == "automatic" or (kind == "karras" and s.overrides.get("use_karras_sigmas")) else kind
    )
    return f"{s.name} {suffix.capitalize()}" if suffix else s.name


def _schedule(name: str, scheduler: str | None) -> tuple[Sampler, str]:
    s, from_name = _resolve(name)
    kind = "automatic" if scheduler is None else str(scheduler).strip().casefold()
    if from_name is not None and kind not in ("automatic", from_name):
        raise ValueError(f"sampler {name!r} names a schedule type and scheduler={scheduler!r} another")
    return s, from_name or kind


def make_sampler(name: str, base_config: Mapping[str, Any], scheduler: str | None = None) -> SchedulerBase:
    """The scheduler `name` (A1111 or class name, any case) over a pipeline's base scheduler config.

    `scheduler` is A1111's schedule type: None or "Automatic" keeps the name's sigmas, "Karras" switches
    a sampler that has them to Karras sigmas, "Exponential" to sigmas evenly spaced in log sigma (for the
    samplers whose class takes `use_exponential_sigmas`); anything else is a ValueError.
    """
    s, kind = _schedule(name, scheduler)
    return s.cls.from_config(dict(base_config), **_overrides(s, kind))


def _overrides(s: Sampler, kind: str) -> dict[str, Any]:
    """The config overrides of sampler `s` under schedule type `kind`, or a ValueError saying why not."""
    overrides = dict(s.overrides)
    if kind == "karras":
        if not (s.karras or overrides.get("use_karras_sigmas")):
            raise ValueError(f"sampler {s.name!r} has no Karras schedule; use scheduler='Automatic'")
        overrides["use_karras_sigmas"] = True
    elif kind == "exponential":
        overrides.update(_exponential(s))
    elif kind != "automatic":
        raise ValueError(f"unknown scheduler {kind!r}; known schedule types: {', '.join(SCHEDULE_TYPES)}")
    return overrides


@functools.cache  # it builds a scheduler to find out: once per class
def _takes_exponential(cls: type[SchedulerBase]) -> bool:
    """Whether the class builds with exponential sigmas (some take the diffusers key only to refuse it)."""
    if "use_exponential_sigmas" not in cls._init_defaults():
        return False
    try:
        cls(use_exponential_sigmas=True)
    except ValueError:
        return False
    return True


def _exponential(s: Sampler) -> dict[str, bool]:
    """The overrides for scheduler="Exponential", or a ValueError naming what the sampler offers."""
    if not _takes_exponential(s.cls):
        raise ValueError(f"sampler {s.name!r} has no Exponential schedule; use scheduler='Automatic'")
    if s.overrides.get("use_karras_sigmas"):
        raise ValueError(
            f"sampler {s.name!r} already uses Karras sigmas; for Exponential name it without 'Karras'"
        )
    return {"use_exponential_sigmas": True}


def schedule_type(scheduler: SchedulerBase) -> str:
    """A1111's schedule type of a scheduler object: "Karras", "Exponential" or "Automatic"."""
    cfg = scheduler.config
    if cfg.get("use_karras_sigmas"):
        return "Karras"
    return "Exponential" if cfg.get("use_exponential_sigmas") else "Automatic"


def sampler_names() -> list[dict[str, Any]]:
    """What /sdapi/v1/samplers lists: name, aliases and options, for each sampler kandi has."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.overrides.items()}}
        for s in SAMPLERS
    ]


def a1111_name(scheduler: SchedulerBase) -> str:
    """The A1111 sampler name of a scheduler object, for the PNG `parameters` chunk."""
    cfg = scheduler.config
    best: Sampler | None = None
    for s in SAMPLERS:
        if isinstance(scheduler, s.cls) and all(cfg.get(k) == v for k, v in s.overrides.items()):
            if best is None or len(s.overrides) > len(best.overrides):
                best = s
    if best is None:
        raise ValueError(f"{type(scheduler).__name__} has no A1111 name")
    if cfg.get("use_karras_sigmas") and not best.overrides.get("use_karras_sigmas"):
        return best.name + " Karras"
    if cfg.get("use_exponential_sigmas"):
        return best.name + " Exponential"
    return best.name


def from_a1111(name: str | None, schedule: str | None = None) -> tuple[str | None, list[str]]:
    """The sampler an A1111 request or PNG asks for (its `sampler_name` and `scheduler` / "Schedule type"),
    as kandi's name, with a note for what kandi lacks: (None, [note]) means the model's own scheduler. A1111
    clients send the names of extensions' samplers too, so a miss falls back instead of failing."""
    if not name or not name.strip():
        return None, []
    kind = (schedule or "Automatic").strip()
    notes: list[str] = []
    if kind.casefold() not in {t.casefold() for t in SCHEDULE_TYPES}:
        notes.append(f"schedule type {schedule!r} is not in kandi: Automatic was used")
        kind = "Automatic"
    try:
        return canonical(name, kind), notes
    except ValueError:
        pass
    try:
        plain = canonical(name)
    except ValueError:
        return None, [*notes, f"sampler {name!r} is not in kandi: the model's own scheduler was used"]
    return plain, [*notes, f"sampler {plain!r} has no {kind} schedule in kandi: Automatic was used"]
