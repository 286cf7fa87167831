"""Whole Kandinsky 2.2 requests for the CLI, the server and the batch runner: models loaded once,
`GenerationOptions` in, progress events and PIL images out, one seed per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .common import Placement, downscale_hw, to_output
from .k22 import (
    PriorState,
    decode,
    decoder_job,
    encode_prior_text,
    initial_latents,
    prior_loop,
    schedule,
    zero_image_embed,
)

PRIOR_PARTS = ("prior", "image_encoder", "text_encoder", "tokenizer", "scheduler", "image_processor")
DECODER_PARTS = ("unet", "scheduler", "movq")


@dataclass
class K22Models:
    """Everything a Kandinsky 2.2 text-to-image request needs, loaded once."""

    prior: Any
    image_encoder: Any
    text_encoder: Any
    tokenizer: Any
    prior_scheduler: Any
    image_processor: Any
    unet: Any
    scheduler: Any
    movq: Any
    placement: Placement

    @classmethod
    def load(cls, decoder: str, prior: str, torch_dtype: torch.dtype | None = None, variant: str | None = None,
             **hub: Any) -> K22Models:  # fmt: skip
        """Load the decoder and prior repos (folders or hub ids) named by a `ModelSpec` or the user."""
        from ..loading.hub import resolve_repo_dir
        from ..loading.pipeline import load_components, read_model_index

        parts = {}
        for repo, names in ((prior, PRIOR_PARTS), (decoder, DECODER_PARTS)):
            root = resolve_repo_dir(repo, variant=variant, **hub)
            loaded = load_components(root, read_model_index(root), list(names), {}, torch_dtype=torch_dtype,
                                     variant=variant)  # fmt: skip
            if repo == prior:
                loaded["prior_scheduler"] = loaded.pop("scheduler")
            parts.update(loaded)
        return cls(**parts, placement=Placement())

    def modules(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "image_encoder", "prior", "unet", "movq")
        return [getattr(self, n) for n in names]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> K22Models:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.placement.execution_device(self.modules())


@dataclass
class Progress:
    stage: str  # "prior" or "decoder"
    step: int  # 1-based
    total: int
    image: int  # index of the image being made
    num_images: int


@dataclass
class Result:
    images: list  # PIL images
    seeds: list[int]


def _seeds(seed: int | None, n: int) -> list[int]:
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return [seed + i for i in range(n)]


@torch.no_grad()
@torch.no_grad()
def text_to_image(m: K22Models, opts: Any) -> Iterator[Progress | Result]:
    """Images for `opts` (a GenerationOptions), one at a time with seed, seed+1, ... each.

    Each image is exactly what `KandinskyV22CombinedPipeline` makes with
    `generator=torch.Generator().manual_seed(seed_i)`, so any one can be regenerated alone.
    """
    seeds = _seeds(opts.seed, opts.num_images)
    images = []
    for k, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        emb, neg = yield from _prior_progress(m, opts, g, k, len(seeds))
        images += yield from _decode(m, opts, emb, neg, g, k, len(seeds))
    yield Result(images, seeds)


def _prior_progress(m: K22Models, opts: Any, g: torch.Generator, k: int, n: int):
    """Run the prior for image k, yielding progress; returns (image_embeds, negative_image_embeds)."""
    for s in _prior(m, opts, g, m.device):
        if isinstance(s, PriorState):
            yield Progress("prior", s.i + 1, s.num_steps, k, n)
        else:
            return s


def _decode(m: K22Models, opts: Any, emb, neg, g: torch.Generator, k: int, n: int, **inputs: Any):
    """Run the decoder for image k (img2img / inpaint / hint `inputs` as `decoder_job` takes them),
    yielding progress; returns the decoded PIL images."""
    scheduler = _decoder_scheduler(m.scheduler, opts.scheduler)
    sf = 2 ** (len(m.movq.config.block_out_channels) - 1)
    size = tuple(v * sf for v in downscale_hw(opts.height, opts.width, sf))
    job = decoder_job(m.unet, scheduler, m.movq, emb, neg, 1, size, opts.steps, opts.guidance_scale, g, m.device,
                      m.placement, **inputs)  # fmt: skip
    latents = yield from _progress(job, "decoder", k, n)
    out = to_output(decode(m.movq, latents, m.placement), "pil")
    m.placement.release()
    return out


def _progress(job: Iterator[Any], stage: str, k: int, n: int):
    """Forward a loop's states as Progress events; returns the loop's return value."""
    while True:
        try:
            s = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(stage, s.i + 1, s.num_steps, k, n)


def _prior(m: K22Models, opts: Any, g: torch.Generator, device: torch.device) -> Iterator[Any]:
    """The prior of one image: yields its states, then (image_embeds, negative_image_embeds)."""
    texts = [opts.prompt] + ([opts.negative_prompt] if opts.negative_prompt is not None else [])
    uncond = [opts.negative_prompt] * 2 if opts.negative_prompt is not None else None
    guided = opts.prior_guidance_scale > 1
    m.placement.use(m.text_encoder)
    cond = encode_prior_text(m.tokenizer, m.text_encoder, texts, uncond, 1, guided, device)
    x = initial_latents((len(texts), m.prior.config.embedding_dim), g, device, cond.prompt_embeds.dtype, None,
                        m.prior_scheduler.init_noise_sigma)  # fmt: skip
    ts = schedule(m.prior_scheduler, opts.prior_steps, device)
    loop = prior_loop(m.prior, m.prior_scheduler, ts, cond, x, opts.prior_guidance_scale, g, m.placement)
    for s in loop:
        yield s
    if opts.negative_prompt is None:
        m.placement.use(m.image_encoder)
        yield s.latents, zero_image_embed(m.image_encoder, device).to(s.latents.dtype)
    else:
        yield s.latents.chunk(2)


def _decoder_scheduler(default: Any, name: str | None) -> Any:
    if name is None:
        return default
    from .. import schedulers

    classes = {"ddpm": schedulers.DDPMScheduler, "ddim": schedulers.DDIMScheduler}
    if name.lower() not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(classes)}")
    return classes[name.lower()].from_config(default.config)
