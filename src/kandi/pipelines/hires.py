"""A hi-res pass (AUTOMATIC1111's "hires fix") for Kandinsky 2.1, 2.2 and 3.

Each image is made at the base size of `opts`, upscaled (Lanczos or nearest in pixels, a learned upscaler
from `kandi.upscale`, or the latents interpolated), then redrawn by img2img at the target size with
`strength` (A1111's denoising strength) over `steps` hires steps, with the same image embeddings (2.x) or
text (3) and the same generator, which goes on from the first pass. The events are the task generators'
(`k22_tasks` / `k3_tasks`): Progress with stage "prior", "decoder" (first pass) and "hires", then Result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from . import images, k3, k3_tasks, k22_tasks
from .common import to_output
from .k22 import (
    decode,
    decoder_job,
    decoder_loop,
    encode_decoder_text,
    img2img_start,
    initial_latents,
    noised_latents,
    schedule,
    steps_run,
)
from .k22_tasks import Progress, Result, _decoder_scheduler, _each_seed, _progress

# kandi's upscaler names -> (kind, interpolation mode, antialias); A1111's names are accepted too
PIXEL_UPSCALERS = {"lanczos": "Lanczos", "nearest": "Nearest"}
LATENT_UPSCALERS = {
    "latent": ("bilinear", False, "Latent"),
    "latent-antialiased": ("bilinear", True, "Latent (antialiased)"),
    "latent-bicubic": ("bicubic", False, "Latent (bicubic)"),
    "latent-bicubic-antialiased": ("bicubic", True, "Latent (bicubic antialiased)"),
    "latent-nearest": ("nearest", False, "Latent (nearest)"),
    "latent-nearest-exact": ("nearest-exact", False, "Latent (nearest-exact)"),
}
MAX_SCALE = 8.0


@dataclass(frozen=True)
class HiresOptions:
    """The second pass: A1111's hr_scale, denoising_strength, hr_second_pass_steps, hr_upscaler,
    hr_resize_x / hr_resize_y and hr_sampler_name."""

    scale: float = 2.0
    strength: float = 0.5
    steps: int = 0  # 0: as many as the first pass (A1111)
    upscaler: str = "lanczos"
    model_path: str | None = None  # the file of a learned upscaler (see kandi.upscale.list_upscalers)
    resize_x: int = 0  # a target width and/or height instead of `scale` (0: from scale / aspect ratio)
    resize_y: int = 0
    sampler: str | None = None  # None: the first pass's scheduler

    def validate(self) -> None:
        """ValueError naming the field that is out of range, before any model work."""
        if not 1.0 <= float(self.scale) <= MAX_SCALE:
            raise ValueError(f"hires scale {self.scale} is out of range; accepted: 1 to {MAX_SCALE:g}")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"hires denoising strength {self.strength} is out of range; accepted: 0 to 1")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(
                f"hires steps {self.steps} must be a whole number >= 0 (0: the first pass's steps)"
            )
        for name in ("resize_x", "resize_y"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise ValueError(f"hires {name} {v} must be a whole number of pixels >= 0 (0: not set)")
        kind = upscaler_kind(self.upscaler)
        if kind == "model" and not self.model_path:
            raise ValueError(
                f"hires upscaler {self.upscaler!r} is not built in ({', '.join(builtin_upscalers())}); a learned "
                "upscaler needs its model file (model_path)"
            )


def builtin_upscalers() -> list[str]:
    return [*PIXEL_UPSCALERS, *LATENT_UPSCALERS]


def canonical_upscaler(name: str) -> str:
    """kandi's name for an upscaler given by kandi's or A1111's name ("Latent (bicubic)" -> "latent-bicubic",
    "None" -> "lanczos", as A1111 resizes with Lanczos then); other names (learned upscalers) as given."""
    key = name.strip().lower().replace(" (", "-").replace(")", "").replace(" ", "-")
    if key in ("none", ""):
        return "lanczos"
    return key if key in PIXEL_UPSCALERS or key in LATENT_UPSCALERS else name.strip()


def upscaler_kind(name: str) -> str:
    """ "pixel", "latent" or "model" (a learned upscaler)."""
    key = canonical_upscaler(name)
    return "pixel" if key in PIXEL_UPSCALERS else "latent" if key in LATENT_UPSCALERS else "model"


def target_size(width: int, height: int, hires: HiresOptions) -> tuple[int, int]:
    """(width, height) of the second pass, before rounding to the model's multiple: resize_x/y when set
    (one of them: the other keeps the aspect ratio), else the base size times scale."""
    rx, ry = int(hires.resize_x), int(hires.resize_y)
    if rx and ry:
        return rx, ry
    if rx:
        return rx, max(1, round(height * rx / width))
    if ry:
        return max(1, round(width * ry / height)), ry
    return max(1, int(width * hires.scale)), max(1, int(height * hires.scale))


def hires_steps_per_image(models: Any, opts: Any, hires: HiresOptions) -> int:
    """Progress steps of one image: the prior (2.x), the first pass and the hires steps run at strength."""
    prior = 0 if isinstance(models, k3_tasks.K3Models) else opts.prior_steps
    return prior + opts.steps + steps_run(hires.steps or opts.steps, hires.strength)


@torch.no_grad()
def hires_fix(models: Any, opts: Any, hires: HiresOptions) -> Iterator[Progress | Result]:
    """Images for `opts` (a GenerationOptions) with a hi-res pass, one per seed (seed, seed+1, ...).

    As `pipelines.tasks.each_image(models, opts, hires_fix, hires=...)` runs any other task. The Result's
    images have the target size rounded up to the model's multiple (64 px for the official models).
    """
    hires.validate()
    if isinstance(models, k3_tasks.K3Models):
        yield from _each_seed(opts, lambda g, k, n: _k3_one(models, opts, hires, g, k, n))
    else:
        k22_tasks._check_unet(models, 4, k22_tasks.IMAGE_DECODER)
        yield from _each_seed(opts, lambda g, k, n: _k22_one(models, opts, hires, g, k, n))


def _k22_one(m: Any, opts: Any, hires: HiresOptions, g: torch.Generator, k: int, n: int):
    emb, neg = yield from k22_tasks._prior_progress(m, opts, g, k, n)
    inputs: dict[str, Any] = {}
    if m.k21:  # the 2.1 decoder reads the prompt ("" as its negative)
        m.placement.use(m.decoder_text_encoder)
        text = encode_decoder_text(m.decoder_tokenizer, m.decoder_text_encoder, [opts.prompt], None, 1,
                                   opts.guidance_scale > 1, m.device)  # fmt: skip
        inputs = {"text": text, "k21": True}
    size = k22_tasks._size(m, opts)
    job = decoder_job(m.unet, _decoder_scheduler(m.scheduler, opts.scheduler), m.movq, emb, neg, 1, size,
                      opts.steps, opts.guidance_scale, g, m.device, m.placement, **inputs)  # fmt: skip
    x = yield from _progress(job, "decoder", k, n)
    tw, th = target_size(size[1], size[0], hires)
    big = k22_tasks._size(m, replace(opts, width=tw, height=th))  # (H, W)
    scheduler = _decoder_scheduler(m.scheduler, hires.sampler or opts.scheduler)
    steps = hires.steps or opts.steps
    if upscaler_kind(hires.upscaler) == "latent":
        sf = 2 ** (len(m.movq.config.block_out_channels) - 1)
        x0 = _resize_latents(x, (big[0] // sf, big[1] // sf), hires.upscaler)
        ts = schedule(scheduler, steps, m.device, hires.strength)
        if not len(ts):
            x = x0
        else:
            start = img2img_start(scheduler, x0, ts, hires.strength, g, m.k21)
            loop = decoder_loop(m.unet, scheduler, ts, emb, neg, start, opts.guidance_scale, g, m.placement,
                                text=inputs.get("text"))  # fmt: skip
            x = yield from _progress(loop, "hires", k, n)
    else:
        first = to_output(decode(m.movq, x, m.placement), "pil")[0]
        pixels = images.preprocess(_upscale(first, (big[1], big[0]), hires, m.device), *big)
        job = decoder_job(m.unet, scheduler, m.movq, emb, neg, 1, big, steps, opts.guidance_scale, g, m.device,
                          m.placement, strength=hires.strength, image=pixels, **inputs)  # fmt: skip
        x = yield from _progress(job, "hires", k, n)
    out = to_output(decode(m.movq, x, m.placement), "pil")
    m.placement.release()
    return out


def _k3_one(m: Any, opts: Any, hires: HiresOptions, g: torch.Generator, k: int, n: int):
    text, scheduler = k3_tasks._text(m, opts), _decoder_scheduler(m.scheduler, opts.scheduler)
    ts = schedule(scheduler, opts.steps, m.device)  # before init_noise_sigma: set_timesteps changes it
    x = initial_latents(k3.latent_shape(1, opts.height, opts.width), g, m.device, m.unet.dtype, None,
                        scheduler.init_noise_sigma)  # fmt: skip
    x = yield from _progress(k3.denoise_loop(m.unet, scheduler, ts, text, x, opts.guidance_scale, g, m.placement),
                             "decoder", k, n)  # fmt: skip
    sf = 2 ** (len(m.movq.config.block_out_channels) - 1)
    tw, th = target_size(x.shape[-1] * sf, x.shape[-2] * sf, hires)
    mult = 2 ** (len(m.unet.config.block_out_channels) - 1)  # the UNet halves the latents that often
    lat = tuple(-(-v // (sf * mult)) * mult for v in (th, tw))  # rounded up: (h, w) latents
    if upscaler_kind(hires.upscaler) == "latent":
        x0 = _resize_latents(x, lat, hires.upscaler)
    else:
        first = to_output(decode(m.movq, x, m.placement), "pil")[0]
        big = (lat[0] * sf, lat[1] * sf)
        pixels = images.preprocess(_upscale(first, (big[1], big[0]), hires, m.device), *big)
        x0 = k3.image_latents(m.movq, pixels.to(m.device), 1, 1, m.unet.dtype, m.placement)
    scheduler = _decoder_scheduler(m.scheduler, hires.sampler or opts.scheduler)
    ts = schedule(scheduler, hires.steps or opts.steps, m.device, hires.strength)
    x = x0
    if len(ts):
        start = noised_latents(scheduler, x0, ts, g)[0]
        loop = k3.denoise_loop(m.unet, scheduler, ts, text, start, opts.guidance_scale, g, m.placement)
        x = yield from _progress(loop, "hires", k, n)
    out = to_output(decode(m.movq, x, m.placement), "pil", raw_pt=False)
    m.placement.release()
    return out


def _resize_latents(x: torch.Tensor, hw: tuple[int, int], upscaler: str) -> torch.Tensor:
    mode, antialias, _ = LATENT_UPSCALERS[canonical_upscaler(upscaler)]
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(x, size=hw, mode=mode)
    return F.interpolate(x, size=hw, mode=mode, align_corners=False, antialias=antialias)


def _upscale(image: Any, size: tuple[int, int], hires: HiresOptions, device: torch.device) -> Any:
    """The first-pass image at `size` (W, H); a differing aspect ratio (both resize_x/y set) is filled
    and centre-cropped, as A1111 does."""
    from ..upscale import resize_cover

    name = canonical_upscaler(hires.upscaler)
    kind = name if name in PIXEL_UPSCALERS else "model"
    return resize_cover(image, size, kind, hires.model_path, device=device)


# --------------------------------------------------------------------------------- PNG parameters


def hires_fields(hires: HiresOptions) -> dict[str, Any]:
    """A1111's `parameters` fields of a hi-res image (pass as `extra` to pngmeta.format_parameters, with
    the first pass's size as `Size`, as A1111 writes it)."""
    name = canonical_upscaler(hires.upscaler)
    shown = PIXEL_UPSCALERS.get(name) or (LATENT_UPSCALERS[name][2] if name in LATENT_UPSCALERS else name)
    fields: dict[str, Any] = {"Denoising strength": float(hires.strength)}
    if hires.resize_x or hires.resize_y:
        fields["Hires resize"] = f"{int(hires.resize_x)}x{int(hires.resize_y)}"
    else:
        s = float(hires.scale)
        fields["Hires upscale"] = int(s) if s.is_integer() else s  # "2", as A1111's infotexts show it
    if hires.steps:
        fields["Hires steps"] = int(hires.steps)
    fields["Hires upscaler"] = shown
    if hires.sampler:
        fields["Hires sampler"] = hires.sampler
    return fields


def parse_hires_fields(fields: dict[str, Any], model_path: str | None = None) -> HiresOptions | None:
    """HiresOptions from parsed `parameters` fields (pngmeta.parse_parameters), None without a hi-res pass.

    A learned upscaler is named by the file stem it was recorded with; its `model_path` is the caller's
    to find (e.g. in the upscaler folder)."""
    if not any(k in fields for k in ("Hires upscale", "Hires resize", "Hires upscaler")):
        return None
    rx = ry = 0
    if "Hires resize" in fields:
        try:
            rx, ry = (int(v) for v in str(fields["Hires resize"]).lower().split("x"))
        except ValueError:
            raise ValueError(f"Hires resize {fields['Hires resize']!r} is not WIDTHxHEIGHT") from None
    try:
        hires = HiresOptions(
            scale=float(fields.get("Hires upscale", 2.0) if not (rx or ry) else 1.0),
            strength=float(fields.get("Denoising strength", 0.7)),  # A1111's default when not recorded
            steps=int(fields.get("Hires steps", 0)),
            upscaler=canonical_upscaler(str(fields.get("Hires upscaler", "Latent"))),
            model_path=model_path,
            resize_x=rx,
            resize_y=ry,
            sampler=fields.get("Hires sampler"),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"unreadable hires fields ({e})") from None
    return hires
