"""Whole Kandinsky 3 requests for the CLI, the server and the batch runner: models loaded once,
`GenerationOptions` in, progress events and PIL images out, one seed per image.

Each image is what `Kandinsky3Pipeline` / `Kandinsky3Img2ImgPipeline` make with
`torch.Generator().manual_seed(seed_i)`. Prompt encodings are cached across requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from . import images, k3
from .common import Placement, to_output
from .k22 import decode, initial_latents, noised_latents, schedule
from .k22_tasks import Progress, Result, _decoder_scheduler, _each_seed, _progress

PARTS = ("tokenizer", "text_encoder", "unet", "scheduler", "movq")


@dataclass
class K3Models:
    """Everything a Kandinsky 3 request needs, loaded once."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    scheduler: Any
    movq: Any
    placement: Placement
    cache: k3.PromptCache = field(default_factory=k3.PromptCache)

    @classmethod
    def load(cls, repo: str, torch_dtype: torch.dtype | None = None, variant: str | None = None,
             variant_fallback: bool = False, **hub: Any) -> K3Models:  # fmt: skip
        from ..loading.hub import resolve_repo_dir
        from ..loading.pipeline import check_variant, load_components, read_model_index

        root = resolve_repo_dir(repo, variant=variant, **hub)
        index = read_model_index(root)
        variant = check_variant(root, index, variant, variant_fallback)  # no such weights: error or warning
        parts = load_components(root, index, list(PARTS), {}, torch_dtype=torch_dtype, variant=variant)
        return cls(**parts, placement=Placement())

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.unet, self.movq]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> K3Models:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.placement.execution_device([self.unet])


@torch.no_grad()
def text_to_image(m: K3Models, opts: Any) -> Iterator[Progress | Result]:
    """Images for `opts` (a GenerationOptions), seed, seed+1, ... each (as Kandinsky3Pipeline)."""
    shape = k3.latent_shape(1, opts.height, opts.width)

    def one(g: torch.Generator, k: int, n: int):
        text, scheduler = _text(m, opts), _decoder_scheduler(m.scheduler, opts.scheduler)
        ts = schedule(scheduler, opts.steps, m.device)  # before init_noise_sigma: set_timesteps changes it
        x = initial_latents(shape, g, m.device, m.unet.dtype, None, scheduler.init_noise_sigma)
        return (yield from _finish(m, opts, text, scheduler, ts, x, g, k, n, raw_pt=True))

    yield from _each_seed(opts, one)


@torch.no_grad()
def image_to_image(m: K3Models, opts: Any, image: Any, strength: float = 0.3) -> Iterator[Progress | Result]:
    """`image` (resized to opts' size, then rounded to what the UNet takes) redrawn after the prompt;
    as Kandinsky3Img2ImgPipeline on the resized image."""
    pil = images.as_pil(image, "image")
    if pil.size != (opts.width, opts.height):
        pil = pil.resize((opts.width, opts.height), resample=3, reducing_gap=1)
    sf = 2 ** (len(m.movq.config.block_out_channels) - 1)
    size = images.native_size(pil, sf * 2 ** (len(m.unet.config.block_out_channels) - 1))
    pixels = images.preprocess(pil, *size)

    def one(g: torch.Generator, k: int, n: int):
        text, scheduler = _text(m, opts), _decoder_scheduler(m.scheduler, opts.scheduler)
        x0 = k3.image_latents(m.movq, pixels.to(m.device), 1, 1, m.unet.dtype, m.placement)
        ts = schedule(scheduler, opts.steps, m.device, strength)
        x = noised_latents(scheduler, x0, ts, g)[0] if len(ts) else x0
        return (yield from _finish(m, opts, text, scheduler, ts, x, g, k, n, raw_pt=False))

    yield from _each_seed(opts, one)


def unsupported(m: K3Models, opts: Any, *args: Any, **kwargs: Any) -> Iterator[Progress | Result]:
    raise ValueError(
        "Kandinsky 3 makes images from text and redraws images (img2img); for inpainting, outpainting, "
        "mixing or ControlNet use kandinsky-2.2 (or kandinsky-2.1)"
    )
    yield  # pragma: no cover  (a generator, like the other tasks)


inpaint = outpaint = mix = controlnet = unsupported


def _text(m: K3Models, opts: Any) -> k3.K3Text:
    negative = [opts.negative_prompt] if opts.negative_prompt is not None else None
    return k3.encode_text(m.tokenizer, m.text_encoder, [opts.prompt], negative, 1, opts.guidance_scale > 1, m.device,
                          m.unet.dtype, m.cache, m.placement)  # fmt: skip


def _finish(m: K3Models, opts: Any, text, scheduler, ts, x, g, k: int, n: int, raw_pt: bool):
    if len(ts):
        loop = k3.denoise_loop(m.unet, scheduler, ts, text, x, opts.guidance_scale, g, m.placement)
        x = yield from _progress(loop, "decoder", k, n)
    out = to_output(decode(m.movq, x, m.placement), "pil", raw_pt=raw_pt)
    m.placement.release()
    return out
