"""The sampler vocabulary: AUTOMATIC1111 names, diffusers class names and k-diffusion aliases.

`make_sampler("DPM++ 2M Karras", pipe_scheduler_config)` builds the scheduler a shell asks for over a
pipeline's own base config (betas, steps_offset, ...), as diffusers' `X.from_config(pipe.scheduler.config)`.
"""

from __future__ import annotations

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


def _find(name: str) -> Sampler:
    if not isinstance(name, str):
        raise ValueError(f"sampler name must be a string, got {name!r}")
    hit = _lookup().get(name.strip().casefold())
    if hit is None:
        known = ", ".join(s.name for s in SAMPLERS)
        raise ValueError(
            f"unknown sampler {name!r}; known samplers: {known} (or their diffusers class names)"
        )
    return hit


def make_sampler(name: str, base_config: Mapping[str, Any], scheduler: str | None = None) -> SchedulerBase:
    """The scheduler `name` (A1111 or class name, any case) over a pipeline's base scheduler config.

    `scheduler` is A1111's schedule type: None or "Automatic" keeps the name's sigmas, "Karras" switches
    a sampler that has them to Karras sigmas, "Exponential" to sigmas evenly spaced in log sigma (for the
    samplers whose class takes `use_exponential_sigmas`); anything else is a ValueError.
    """
    s = _find(name)
    overrides = dict(s.overrides)
    kind = "automatic" if scheduler is None else str(scheduler).strip().casefold()
    if kind == "karras":
        if not (s.karras or overrides.get("use_karras_sigmas")):
            raise ValueError(f"sampler {s.name!r} has no Karras schedule; use scheduler='Automatic'")
        overrides["use_karras_sigmas"] = True
    elif kind == "exponential":
        overrides.update(_exponential(s))
    elif kind != "automatic":
        raise ValueError(
            f"unknown scheduler {scheduler!r}; known schedule types: {', '.join(SCHEDULE_TYPES)}"
        )
    return s.cls.from_config(dict(base_config), **overrides)


def _exponential(s: Sampler) -> dict[str, bool]:
    """The overrides for scheduler="Exponential", or a ValueError naming what the sampler offers."""
    if "use_exponential_sigmas" not in s.cls._init_defaults():
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
    if (
        best.cls is DPMSolverMultistepScheduler
        and cfg.get("use_karras_sigmas")
        and not best.overrides.get("use_karras_sigmas")
    ):
        return best.name + " Karras"
    return best.name
