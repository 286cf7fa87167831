"""Kandinsky 3.1 requests: models loaded once; text to image, img2img, inpainting and outpainting.

The shells call these with the protocol of `k3_tasks` (`GenerationOptions` in, `Progress` events and one
`Result` out, one seed per image); the diffusers-style classes in `compat/kandinsky31.py` call the same
`*_latents` generators. A seed's image is what ai-forever's code makes after `torch.manual_seed(seed)`
(CPU), as tests/test_k31.py checks against its recorded outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..errors import warn_once
from . import images, k3, k31
from .common import Placement
from .k22 import steps_run
from .k22_tasks import Progress, Result, _each_seed, _progress

MODELS = ("base", "flash", "inpainting")
DEFAULTS = {  # (steps, guidance w) of ai-forever's pipelines
    "base": (50, 3.0),
    "flash": (len(k31.FLASH_TIMESTEPS), 0.0),
    "inpainting": (50, 4.0),
}


@dataclass
class K31Models:
    """One Kandinsky 3.1 model (`variant`: base, flash or inpainting) with its T5 and MoVQ."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    null_embedding: torch.Tensor
    movq: Any
    variant: str
    placement: Placement = field(default_factory=Placement)
    cache: k3.PromptCache = field(default_factory=k3.PromptCache)

    @classmethod
    def load(cls, repo: str = "ai-forever/Kandinsky3.1", variant: str = "base",
             torch_dtype: torch.dtype | None = None, text_encoder_dtype: torch.dtype | None = None,
             **hub: Any) -> K31Models:  # fmt: skip
        """From the hub id, its cache or a folder in its layout (only `variant`'s files are fetched)."""
        from ..loading import k31 as loader

        root = loader.resolve_root(repo, variant, **hub)
        unet, null = loader.load_unet(root, variant, torch_dtype)
        tokenizer, text_encoder = loader.load_text(root, text_encoder_dtype or torch_dtype)
        return cls(tokenizer, text_encoder, unet, null, loader.load_movq(root, torch_dtype), variant)

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.unet, self.movq]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> K31Models:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        self.null_embedding = self.null_embedding.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.placement.execution_device([self.unet])

    @property
    def flash(self) -> bool:
        return self.variant == "flash"


def _guidance(m: K31Models, guidance_scale: float | None) -> float:
    if m.flash:
        if guidance_scale:
            warn_once("Kandinsky Flash is distilled to run without guidance: guidance_scale is ignored")
        return 0.0
    return DEFAULTS[m.variant][1] if guidance_scale is None else float(guidance_scale)


def timesteps(m: K31Models, steps: int | None, strength: float = 1.0) -> list[int]:
    """The timesteps a run takes: Flash's fixed four, or the base sampler's; img2img keeps the last ones."""
    if m.flash:
        if steps not in (None, len(k31.FLASH_TIMESTEPS)):
            warn_once(
                f"Kandinsky Flash runs its 4 fixed timesteps {k31.FLASH_TIMESTEPS}: steps={steps} is ignored"
            )
        ts = list(k31.FLASH_TIMESTEPS)
    else:
        ts = k31.base_timesteps(DEFAULTS[m.variant][0] if steps is None else steps)
    return ts[len(ts) - steps_run(len(ts), strength) :]


def _text(m: K31Models, prompt: str, negative: str | None, n: int, guidance: float) -> k31.K31Text:
    return k31.encode_text(m.tokenizer, m.text_encoder, m.unet, m.null_embedding, prompt, negative, n,
                           guidance != 0, m.cache, m.placement)  # fmt: skip


def _loop(m: K31Models, text: k31.K31Text, x: torch.Tensor, ts: list[int], guidance: float, noise: k31.Noise,
          extra: torch.Tensor | None = None) -> Iterator[k31.K31State]:  # fmt: skip
    m.placement.use(m.unet)
    if m.flash:
        return (yield from k31.flash_loop(m.unet, text, x, ts, noise))
    pct = k31.INPAINT_PERCENTILE if extra is not None else k31.BASE_PERCENTILE
    return (yield from k31.base_loop(m.unet, text, x, ts, guidance, noise, pct, extra))


def text_to_image_latents(m: K31Models, prompt: str, negative: str | None, n: int, height: int, width: int,
                          steps: int | None, guidance_scale: float | None,
                          generator: torch.Generator | None) -> Iterator[k31.K31State]:  # fmt: skip
    """Latents (n, 4, h, w) for one prompt, drawn from `generator` in the original's order."""
    _check_unet(m, 4)
    w = _guidance(m, guidance_scale)
    ts = timesteps(m, steps)
    text = _text(m, prompt, negative, n, w)
    noise = k31.noise_source(generator, m.device)
    x = noise(k3.latent_shape(n, height, width))
    return (yield from _loop(m, text, x, ts, w, noise))


def image_to_image_latents(m: K31Models, x0: torch.Tensor, prompt: str, negative: str | None, steps: int | None,
                           guidance_scale: float | None, strength: float,
                           generator: torch.Generator | None) -> Iterator[k31.K31State]:  # fmt: skip
    """`x0` (n, 4, h, w) image latents redrawn from `strength` (kandi's: the original has no img2img)."""
    _check_unet(m, 4)
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    w, ts = _guidance(m, guidance_scale), timesteps(m, steps, strength)
    if not ts:
        return x0
    text = _text(m, prompt, negative, x0.shape[0], w)
    noise = k31.noise_source(generator, m.device)
    x = x0 if m.flash else k31.img2img_start(x0, ts[0], noise)  # Flash noises its x0 at every step itself
    return (yield from _loop(m, text, x, ts, w, noise))


def inpaint_latents(m: K31Models, pixels: torch.Tensor, repaint: torch.Tensor, prompt: str, negative: str | None,
                    n: int, steps: int | None, guidance_scale: float | None, generator: torch.Generator | None,
                    strength: float = 1.0) -> Iterator[k31.K31State]:  # fmt: skip
    """Latents for `pixels` (1, 3, H, W) repainted where `repaint` (1, 1, H, W) is 1, as the original."""
    _check_unet(m, 9)
    w, ts = _guidance(m, guidance_scale), timesteps(m, steps, strength)
    extra = k31.inpaint_extra(m.movq, pixels, repaint, torch.float32, m.placement).repeat_interleave(n, dim=0)
    text = _text(m, prompt, negative, n, w)
    noise = k31.noise_source(generator, m.device)
    shape = (n, 4, *extra.shape[-2:])
    if strength >= 1:
        x = noise(shape)
    else:  # kandi's: start from the image's own latents noised to the first timestep run
        m.placement.use(m.movq)
        x0 = m.movq.encode(pixels.to(m.movq.device, m.movq.dtype)).latents.float().repeat_interleave(n, dim=0)
        x = k31.img2img_start(x0, ts[0], noise) if ts else x0
    return (yield from _loop(m, text, x.to(m.device), ts, w, noise, extra.to(m.device)))


def decode(m: K31Models, latents: torch.Tensor) -> torch.Tensor:
    """MoVQ decode without quantisation, images in [-1, 1] (float32)."""
    m.placement.use(m.movq)
    with torch.no_grad():
        out = m.movq.decode(latents.to(m.movq.device, m.movq.dtype), force_not_quantize=True).sample.float()
    m.placement.release()
    return out


def _check_unet(m: K31Models, channels: int) -> None:
    if m.unet.config.in_channels != channels:
        what = "inpainting (model='inpainting')" if channels == 4 else "text to image and img2img"
        raise ValueError(
            f"this Kandinsky 3.1 UNet ({m.variant}) takes {m.unet.config.in_channels} input channels: "
            f"it is not for {what}; use the {'base or flash' if channels == 4 else 'inpainting'} model"
        )


# ----------------------------------------------------------------------------- shell task protocol


@torch.no_grad()
def text_to_image(m: K31Models, opts: Any) -> Iterator[Progress | Result]:
    """Images for `opts` (a GenerationOptions), seed, seed+1, ... each."""

    def one(g: torch.Generator, k: int, n: int):
        job = text_to_image_latents(m, opts.prompt, opts.negative_prompt, 1, opts.height, opts.width, opts.steps,
                                    opts.guidance_scale, g)  # fmt: skip
        return k31.to_uint8_pil(decode(m, (yield from _progress(job, "decoder", k, n))))

    yield from _each_seed(opts, one)


@torch.no_grad()
def image_to_image(m: K31Models, opts: Any, image: Any, strength: float = 0.3) -> Iterator[Progress | Result]:
    """`image` (resized to opts' size, rounded up to multiples of 64) redrawn after the prompt."""
    _, _, h, w = k3.latent_shape(1, opts.height, opts.width)
    pixels = images.preprocess(images.as_pil(image, "image"), h * 8, w * 8)

    def one(g: torch.Generator, k: int, n: int):
        m.placement.use(m.movq)
        x0 = m.movq.encode(pixels.to(m.movq.device, m.movq.dtype)).latents.float().to(m.device)
        job = image_to_image_latents(m, x0, opts.prompt, opts.negative_prompt, opts.steps, opts.guidance_scale,
                                     strength, g)  # fmt: skip
        return k31.to_uint8_pil(decode(m, (yield from _progress(job, "decoder", k, n))))

    yield from _each_seed(opts, one)


def inpaint_inputs(image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, repaint mask) at the diffusion size of `image`; masks: white / 1 = repaint."""
    images.check_present(image, "image")
    images.check_present(mask, "mask_image")
    pil = images.as_pil(image, "image")
    if isinstance(mask, torch.Tensor):
        arr = mask.detach().float().cpu().squeeze().numpy()
    elif isinstance(mask, np.ndarray):
        arr = mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
    else:
        pil_mask = mask if isinstance(mask, PIL.Image.Image) else images.open_image(mask, "mask_image")
        arr = np.asarray(images.mask_to_l(pil_mask), dtype=np.float32) / 255.0
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1)
    if arr.ndim != 2:
        raise ValueError(f"mask_image must be one (H, W) mask, got shape {list(np.shape(mask))}")
    return k31.inpaint_inputs(pil, arr)


@torch.no_grad()
def inpaint(m: K31Models, opts: Any, image: Any, mask: Any, strength: float = 1.0, paste_back: bool = False,
            feather: int = 0) -> Iterator[Progress | Result]:  # fmt: skip
    """`image` repainted where `mask` is white, at the image's own size brought to about 1024^2 (as the
    original); `paste_back` puts the kept pixels back exactly (as kandi's 2.2 inpainting)."""
    pixels, repaint = inpaint_inputs(image, mask)

    def one(g: torch.Generator, k: int, n: int):
        job = inpaint_latents(m, pixels, repaint, opts.prompt, opts.negative_prompt, 1, opts.steps,
                              opts.guidance_scale, g, strength)  # fmt: skip
        out = decode(m, (yield from _progress(job, "decoder", k, n)))
        if paste_back:
            out = images.paste_back(pixels.to(out), out, (1 - (repaint >= 0.5).float()).to(out), feather)
        return k31.to_uint8_pil(out)

    yield from _each_seed(opts, one)


@torch.no_grad()
def outpaint(m: K31Models, opts: Any, image: Any, left: int, top: int, right: int, bottom: int,
             strength: float = 1.0, feather: int = 8) -> Iterator[Progress | Result]:  # fmt: skip
    """`image` extended by the margins (pixels); exactly (left + w + right) x (top + h + bottom) comes out."""
    original = images.as_pil(image, "image")
    w, h = original.size
    canvas, mask = images.outpaint_canvas(original, *images.outpaint_margins(w, h, left, top, right, bottom))
    box = (0, 0, left + w + right, top + h + bottom)
    for event in inpaint(m, opts, canvas, mask, strength, True, feather):
        if isinstance(event, Result):  # inpainting works at about 1024^2: back to the canvas, then cut
            event = Result([_fit(im, canvas.size).crop(box) for im in event.images], event.seeds)
        yield event


def _fit(im: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    return im if im.size == size else im.resize(size, resample=PIL.Image.BICUBIC)


def unsupported(m: K31Models, opts: Any, *args: Any, **kwargs: Any) -> Iterator[Progress | Result]:
    raise ValueError("Kandinsky 3.1 makes images from text, redraws, inpaints and outpaints; for mixing or "
                     "ControlNet use kandinsky-2.2")  # fmt: skip
    yield  # pragma: no cover  (a generator, like the other tasks)


mix = controlnet = unsupported


def steps_per_image(m: K31Models, opts: Any, strength: float = 1.0) -> int:
    """Progress steps of one image (Flash: its 4 timesteps whatever opts.steps says)."""
    return len(timesteps(m, None if m.flash else opts.steps, strength))


def options_for(m: K31Models, opts: Any) -> Any:
    """`opts` with Flash's step count, for shells that show it."""
    return replace(opts, steps=len(k31.FLASH_TIMESTEPS), guidance_scale=0.0) if m.flash else opts


def load_for_task(name: str, task: str = "text_to_image", torch_dtype: torch.dtype | None = None,
                  text_encoder_dtype: torch.dtype | None = None, **hub: Any) -> K31Models:  # fmt: skip
    """The models a shell needs for `task` under a registry name (kandinsky-3.1, kandinsky-3.1-flash,
    kandinsky-3.1-inpainting): inpaint and outpaint take the inpainting UNet whatever the name."""
    from ..configs import resolve_model

    spec = resolve_model(name)
    if spec.family != "k31":
        raise ValueError(f"{name!r} is not a Kandinsky 3.1 model (family {spec.family})")
    variant = "inpainting" if task in ("inpaint", "outpaint") else spec.k31_model or "base"
    if variant == "inpainting" and task not in ("inpaint", "outpaint"):
        raise ValueError(
            f"{spec.name} inpaints and outpaints only; for {task} use kandinsky-3.1 or kandinsky-3.1-flash"
        )
    return K31Models.load(spec.decoder_repo, variant, torch_dtype, text_encoder_dtype, **hub)
