"""Named models (short name -> official repos and defaults) and the options of one generation request.

The CLI, the server, the web UI and the batch runner all speak `GenerationOptions`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "k21", "k22", "k3", "k31", "k5" (text to image), "k5i2i" (editing)
    decoder_repo: str
    prior_repo: str | None
    inpaint_repo: str | None = None
    controlnet_repo: str | None = None
    default_size: int = 512
    default_steps: int = 50
    default_guidance: float = 4.0
    default_prior_steps: int = 25
    default_prior_guidance: float = 4.0
    aliases: tuple[str, ...] = ()
    k31_model: str | None = (
        None  # Kandinsky 3.1: which UNet of ai-forever/Kandinsky3.1 (base, flash, inpainting)
    )


def _k31(name: str, model: str, steps: int, guidance: float, aliases: tuple[str, ...]) -> ModelSpec:
    """One of the three Kandinsky 3.1 models: one repo, 1024² by default, the UNet `model`."""
    repo = "ai-forever/Kandinsky3.1"
    return ModelSpec(name=name, family="k31", decoder_repo=repo, prior_repo=None, inpaint_repo=repo,
                     default_size=1024, default_steps=steps, default_guidance=guidance, aliases=aliases,
                     k31_model=model)  # fmt: skip


REGISTRY: dict[str, ModelSpec] = {
    "kandinsky-2.1": ModelSpec(
        name="kandinsky-2.1",
        family="k21",
        decoder_repo="kandinsky-community/kandinsky-2-1",
        prior_repo="kandinsky-community/kandinsky-2-1-prior",
        inpaint_repo="kandinsky-community/kandinsky-2-1-inpaint",
        aliases=("2.1", "k21", "kandinsky-2-1", "kandinsky21"),
    ),
    "kandinsky-2.2": ModelSpec(
        name="kandinsky-2.2",
        family="k22",
        decoder_repo="kandinsky-community/kandinsky-2-2-decoder",
        prior_repo="kandinsky-community/kandinsky-2-2-prior",
        inpaint_repo="kandinsky-community/kandinsky-2-2-decoder-inpaint",
        controlnet_repo="kandinsky-community/kandinsky-2-2-controlnet-depth",
        aliases=("2.2", "k22", "kandinsky-2-2", "kandinsky22"),
    ),
    "kandinsky-3": ModelSpec(
        name="kandinsky-3",
        family="k3",
        decoder_repo="kandinsky-community/kandinsky-3",
        prior_repo=None,
        default_size=1024,
        default_steps=25,
        default_guidance=3.0,
        aliases=("3", "k3", "kandinsky3", "kandinsky-3.0"),
    ),
    # ai-forever's own release (no diffusers layout): loaded by kandi.pipelines.k31_tasks.load_for_task;
    # the inpainting model serves `inpaint` / `outpaint` for all three names
    **{
        name: _k31(name, model, steps, guidance, aliases)
        for name, model, steps, guidance, aliases in (
            ("kandinsky-3.1", "base", 50, 3.0, ("3.1", "k31", "kandinsky3.1", "kandinsky-3-1")),
            ("kandinsky-3.1-flash", "flash", 4, 0.0, ("3.1-flash", "k31-flash", "kandinsky-flash", "flash")),
            (
                "kandinsky-3.1-inpainting",
                "inpainting",
                50,
                4.0,
                ("3.1-inpainting", "k31-inpainting", "kandinsky-3.1-inpaint"),
            ),
        )
    },
    "kandinsky-5": ModelSpec(
        name="kandinsky-5",
        family="k5",  # pipelines/k5_tasks.py (K5Models, text_to_image)
        decoder_repo="kandinskylab/Kandinsky-5.0-T2I-Lite-sft-Diffusers",
        prior_repo=None,
        default_size=1024,
        default_steps=50,
        default_guidance=3.5,
        aliases=("5", "k5", "kandinsky5", "kandinsky-5.0", "kandinsky-5-t2i"),
    ),
    # the editing model: its own family, since it only edits and the text-to-image model cannot
    "kandinsky-5-i2i": ModelSpec(
        name="kandinsky-5-i2i",
        family="k5i2i",  # pipelines/k5_tasks.py (K5Models, image_to_image)
        decoder_repo="kandinskylab/Kandinsky-5.0-I2I-Lite-sft-Diffusers",
        prior_repo=None,
        default_size=1024,
        default_steps=50,
        default_guidance=3.5,
        aliases=("5-i2i", "k5-i2i", "k5i2i", "kandinsky5-i2i", "kandinsky-5.0-i2i", "kandinsky-5-edit"),
    ),
}
DEFAULT_MODEL = "kandinsky-2.2"
# repos a short name may stand for, by the role a loader asks for
ROLES = ("decoder_repo", "prior_repo", "inpaint_repo", "controlnet_repo")


def resolve_model(name: str) -> ModelSpec:
    """A registry entry by short name or alias; a hub id or folder of a known decoder maps to its entry."""
    key = name.strip().lower()
    for spec in REGISTRY.values():
        if key == spec.name or key in spec.aliases or key == spec.decoder_repo.lower():
            return spec
    known = ", ".join(sorted(REGISTRY))
    raise ValueError(f"unknown model {name!r}; known models: {known}")


def short_name_repo(name: str, role: str = "decoder_repo") -> str | None:
    """The official repo a short model name (`kandinsky-2.1`, `2.2`, ...) stands for in `role`, else None.

    A prior pipeline asks for the prior repo, an inpainting one for the inpainting repo; a model without
    such a repo falls back to its main (decoder) repo.
    """
    if "/" in name:
        return None
    key = name.strip().lower()
    for spec in REGISTRY.values():
        if key == spec.name or key in spec.aliases:
            return getattr(spec, role, None) or spec.decoder_repo
    return None


@dataclass
class GenerationOptions:
    """One text-to-image request, as the CLI and server take it."""

    prompt: str
    negative_prompt: str | None = None
    model: str = DEFAULT_MODEL
    width: int = 512
    height: int = 512
    steps: int = 50
    guidance_scale: float = 4.0
    prior_steps: int = 25
    prior_guidance_scale: float = 4.0
    seed: int | None = None
    num_images: int = 1
    scheduler: str | None = None  # None: the checkpoint's own; else a sampler name (schedulers.names)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
