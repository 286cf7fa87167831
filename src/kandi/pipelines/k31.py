"""Kandinsky 3.1 generation core: the base model, Kandinsky Flash and 3.1 inpainting, as ai-forever samples.

Read from ai-forever/Kandinsky-3 (`kandinsky3/model/diffusion.py`, `t2i_pipeline.py`,
`inpainting_pipeline.py`, `condition_*.py`):
- cosine schedule over 1000 steps; the base sampler is DDIM with eta = 1 over `range(999, 0, -1000 // steps)`
  (a floored stride), x0 clipped by dynamic thresholding (0.99 quantile, floor 1; 0.95 for inpainting);
- the text is projected, then zeroed at padding, then cut to the longest prompt + 1 token; the unguided
  row is zeros with the learned null embedding at token 0 (mask: that token only); guidance is
  (w + 1) * cond - w * uncond with the cond row first;
- Flash: at 979, 729, 479, 229 the current x0 estimate is noised to t and the UNet's noise gives the
  next x0 estimate; no guidance;
- noise: the initial latents, then one draw per step of the same shape (the base sampler draws at the
  last step too and multiplies it by 0), which kandi takes from the caller's generator in that order.
One change: the base sampler's sqrt(1 - a_prev - sigma^2) is clamped at 0, where the original rounds
to a negative number and returns NaN images (1 and 3 steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..schedulers.noise import randn
from .common import Placement

T5_TOKENS = 128
FLASH_TIMESTEPS = (979, 729, 479, 229)
BASE_PERCENTILE = 0.99
INPAINT_PERCENTILE = 0.95
TRAIN_STEPS = 1000


def cosine_betas(n: int = TRAIN_STEPS) -> torch.Tensor:
    """Nichol & Dhariwal (2021) Eq. 17, betas capped at 0.999, in float32 as the original."""
    bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor(
        [min(1 - bar((i + 1) / n) / bar(i / n), 0.999) for i in range(n)], dtype=torch.float32
    )


@dataclass(frozen=True)
class Schedule:
    """The original's float32 tables (computed with the same ops, so equal to the bit)."""

    ac: torch.Tensor
    sqrt_ac: torch.Tensor
    sqrt_1m_ac: torch.Tensor

    @classmethod
    def cosine(cls) -> Schedule:
        ac = torch.cumprod(1.0 - cosine_betas(), dim=0)
        return cls(ac, torch.sqrt(ac), torch.sqrt(1.0 - ac))


def base_timesteps(steps: int) -> list[int]:
    """`range(999, 0, -1000 // steps)`: the stride is floored (6 steps: stride 167, 6 timesteps)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= TRAIN_STEPS:
        raise ValueError(f"num_inference_steps must be a whole number from 1 to {TRAIN_STEPS}, got {steps!r}")
    return list(range(TRAIN_STEPS - 1, 0, -TRAIN_STEPS // steps))


def threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022): clip to the per-image |x0| quantile (at least 1), rescale."""
    q = torch.quantile(x0.flatten(1).abs(), percentile, dim=-1).clip(min=1.0)
    q = q.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.clip(x0, -q, q) / q


def _at(table: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    return table[t].to(x.device)


def ddim_step(s: Schedule, x: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor,
              percentile: float, eta: float = 1.0) -> torch.Tensor:  # fmt: skip
    """The original's p_sample: DDIM (Song et al. 2021, Eq. 12) from x0 thresholded, eta inside the sqrt."""
    x0 = (x - _at(s.sqrt_1m_ac, t, x) * eps) / _at(s.sqrt_ac, t, x)
    x0 = threshold(x0, percentile)
    eps = (x - _at(s.sqrt_ac, t, x) * x0) / _at(s.sqrt_1m_ac, t, x)
    a, a_prev = _at(s.ac, t, x), _at(s.ac, t_prev, x)  # t_prev = 0 reads ac[0], as the original
    sigma = torch.sqrt(eta * (1.0 - a / a_prev) * (1.0 - a_prev) / (1.0 - a))
    mean = torch.sqrt(a_prev) * x0
    mean = mean + torch.sqrt((1.0 - a_prev - sigma**2).clamp(min=0)) * eps  # the original: NaN when < 0
    return mean + (t_prev != 0) * sigma * noise


def q_sample(s: Schedule, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    return _at(s.sqrt_ac, t, x0) * x0 + _at(s.sqrt_1m_ac, t, x0) * noise


def x0_from_eps(s: Schedule, x: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    return (x - _at(s.sqrt_1m_ac, t, x) * eps) / _at(s.sqrt_ac, t, x)


# ----------------------------------------------------------------------------------------- text


@dataclass
class K31Text:
    """Projected text, one row per latent: context (B, L, D) zero at padding, mask (B, L) bool;
    uncontext / unmask: the unguided rows (None when unguided)."""

    context: torch.Tensor
    mask: torch.Tensor
    uncontext: torch.Tensor | None = None
    unmask: torch.Tensor | None = None


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, max_length=T5_TOKENS, truncation=True)["input_ids"])


def _pad(ids: list[int], pad: int) -> list[int]:
    return ids + [pad] * (T5_TOKENS - len(ids))


def t5_inputs(
    tokenizer: Any, prompt: str, negative: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ids, mask, negative ids) as T5TextConditionProcessor.encode: the negative is cut to the prompt's
    length, ends with </s>, and is encoded under the *prompt's* mask."""
    ids = _ids(tokenizer, prompt)
    mask = torch.tensor([[1] * len(ids) + [0] * (T5_TOKENS - len(ids))])
    pos = torch.tensor([_pad(ids, tokenizer.pad_token_id)])
    neg = None
    if negative is not None:
        nids = _ids(tokenizer, negative)[: len(ids)]
        nids[-1] = tokenizer.eos_token_id
        neg = torch.tensor([_pad(nids, tokenizer.pad_token_id)])
    return pos, mask, neg


def _project(unet: Any, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 states -> the UNet's width; padding zeroed after the projection; cut to the longest + 1 tokens."""
    proj = unet.encoder_hid_proj
    ctx = proj(states.to(proj.projection_norm.weight.device, proj.projection_norm.weight.dtype))
    mask = mask.to(ctx.device)
    ctx = ctx * (mask != 0).unsqueeze(-1).to(ctx.dtype)
    keep = int(mask.sum(-1).max()) + 1
    return ctx[:, :keep], mask[:, :keep].bool()


def encode_text(tokenizer: Any, text_encoder: Any, unet: Any, null: torch.Tensor, prompt: str,
                negative: str | None, n: int, guided: bool, cache: Any = None,
                placement: Placement | None = None) -> K31Text:  # fmt: skip
    """Conditioning for one prompt, `n` rows; `cache` is a k3.PromptCache (the prompt's T5 rows)."""
    if placement:
        placement.use(text_encoder)
    ids, mask, neg = t5_inputs(tokenizer, prompt, negative)
    dev = text_encoder.device
    if cache is not None:
        states, _ = cache.encode(tokenizer, text_encoder, [prompt])
    else:
        states = text_encoder(ids.to(dev), attention_mask=mask.to(dev))[0]
    if placement:
        placement.use(unet)
    ctx, cmask = _project(unet, states, mask)
    out = K31Text(ctx, cmask)
    if guided and neg is not None:
        if placement:
            placement.use(text_encoder)
        nstates = text_encoder(neg.to(dev), attention_mask=mask.to(dev))[0]
        if placement:
            placement.use(unet)
        out.uncontext, out.unmask = _project(unet, nstates, mask)
    elif guided:
        out.uncontext = torch.zeros_like(ctx)
        out.uncontext[:, 0] = null.to(ctx)
        out.unmask = torch.zeros_like(cmask)
        out.unmask[:, 0] = True
    rows = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
    return K31Text(rows(out.context), rows(out.mask), rows(out.uncontext), rows(out.unmask))


# ------------------------------------------------------------------------------------- sampling


@dataclass
class K31State:
    i: int
    t: int
    latents: torch.Tensor
    num_steps: int


Noise = Callable[[tuple[int, ...]], torch.Tensor]


def noise_source(generator: torch.Generator | list[torch.Generator] | None, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> Noise:  # fmt: skip
    """Standard normal draws in the original's order: CPU generator(s), then moved (schedulers.noise)."""
    return lambda shape: randn(shape, generator, device, dtype)


def _uncond_cond(unet: Any, text: K31Text, guided: bool) -> Any:
    if guided:  # the original batches [cond, uncond]
        return unet.condition_projected(torch.cat([text.context, text.uncontext]),
                                        torch.cat([text.mask, text.unmask]).long())  # fmt: skip
    return unet.condition_projected(text.context, text.mask.long())


def base_loop(unet: Any, text: K31Text, latents: torch.Tensor, ts: list[int], guidance_scale: float,
              noise: Noise, percentile: float = BASE_PERCENTILE, extra: torch.Tensor | None = None,
              eta: float = 1.0) -> Iterator[K31State]:  # fmt: skip
    """DDIM with thresholding over `ts` (each then the next, the last to 0); `extra` (B, 5, h, w) is the
    inpainting mask and masked-image latents put after x. Returns the final latents."""
    s, guided = Schedule.cosine(), guidance_scale != 0
    cond = _uncond_cond(unet, text, guided)
    x = latents
    pairs = list(zip(ts, [*ts[1:], 0]))
    for i, (t, t_prev) in enumerate(pairs):
        inp = x if extra is None else torch.cat([x, extra.to(x)], dim=1)
        inp = torch.cat([inp, inp]) if guided else inp
        tt = torch.full((inp.shape[0],), float(t), device=x.device)
        eps = unet.denoise(inp.to(unet.dtype), tt, cond).float()
        if guided:
            c, u = eps.chunk(2)
            eps = (guidance_scale + 1.0) * c - guidance_scale * u
        x = ddim_step(s, x, eps, t, t_prev, noise(tuple(x.shape)), percentile, eta)
        yield K31State(i, t, x, len(pairs))
    return x


def flash_loop(
    unet: Any, text: K31Text, latents: torch.Tensor, ts: list[int], noise: Noise
) -> Iterator[K31State]:
    """Kandinsky Flash: noise the x0 estimate to t, predict x0 again, at each of `ts`; no guidance."""
    s = Schedule.cosine()
    cond = _uncond_cond(unet, text, False)
    x = latents
    for i, t in enumerate(ts):
        xt = q_sample(s, x, t, noise(tuple(x.shape)))
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        eps = unet.denoise(xt.to(unet.dtype), tt, cond).float()
        x = x0_from_eps(s, xt, t, eps)
        yield K31State(i, t, x, len(ts))
    return x


def img2img_start(x0: torch.Tensor, t: int, noise: Noise) -> torch.Tensor:
    """Base img2img: the image's latents noised to the first timestep run (kandi's; the original has none)."""
    return q_sample(Schedule.cosine(), x0, t, noise(tuple(x0.shape)))


# ------------------------------------------------------------------------------------ inpainting


def diffusion_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) as resize_image_for_diffusion: area brought down to about 1024^2, sides floored to 64."""
    reduce = max(1.0, (width * height / 1024**2) ** 0.5)
    w, h = (round(width / reduce) // 64) * 64, (round(height / reduce) // 64) * 64
    if w < 64 or h < 64:
        raise ValueError(
            f"image {width}x{height} is too small for Kandinsky 3.1 inpainting: sides of 64 px or more"
        )
    return w, h


def inpaint_inputs(image: PIL.Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (1, 3, H, W) in [-1, 1], repaint mask (1, 1, H, W) in [0, 1]) at the diffusion size."""
    w, h = diffusion_size(*image.size)
    img = image.convert("RGB").resize((w, h))  # PIL's default filter, as the original
    pixels = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255.0) * 2 - 1
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    if m.shape != (h, w):
        m = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return pixels[None], m[None, None]


def inpaint_extra(movq: Any, pixels: torch.Tensor, repaint: torch.Tensor, dtype: torch.dtype,
                  placement: Placement | None = None) -> torch.Tensor:  # fmt: skip
    """[keep mask, masked-image latents] at latent size (B, 1 + latent, h, w), as the original's shared_step."""
    if placement:
        placement.use(movq)
    dev = movq.device
    keep = (1.0 - repaint).to(dev)
    masked = pixels.to(dev).masked_fill((1.0 - keep).bool(), 0.0)  # the repainted pixels are zeroed
    lat = movq.encode(masked.to(movq.dtype)).latents.to(dtype)
    keep = F.interpolate(keep, size=lat.shape[-2:])  # nearest, as F.interpolate's default
    return torch.cat([keep.to(lat), lat], dim=1)


def to_uint8_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """Decoded images in [-1, 1] -> PIL as the original (ToPILImage: x * 255 truncated, not rounded)."""
    x = torch.clip((images.float() + 1.0) / 2.0, 0.0, 1.0).mul(255).byte().cpu()
    return [PIL.Image.fromarray(a.permute(1, 2, 0).numpy()) for a in x]
