"""Kandinsky 5.0 Image Lite generation core: text encoding, flow-matching denoising, VAE decoding.

Text: Qwen2.5-VL's last hidden states over a fixed chat template (the template's system part is cut
off), plus CLIP ViT-L's pooled output. Sampling: Euler on the flow ODE with classifier-free guidance
v = v_u + g (v_c - v_u), the two branches run apart as in the released code (their token counts differ).
Latents are channels-last (B, 1, H/8, W/8, 16) for the DiT and scaled by the VAE's scaling factor only.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..schedulers.flow_match import FlowMatchEulerDiscreteScheduler
from ..schedulers.noise import randn

log = logging.getLogger(__name__)

T2I_TEMPLATE = (
    "<|im_start|>system\nYou are a prompt engineer. Describe the image by detailing the color, shape, size, "
    "texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>"
)
T2I_START = 40  # template tokens before the prompt, dropped from the hidden states
# editing: the source image sits in the user turn after the prompt (diffusers' Kandinsky5I2IPipeline)
I2I_TEMPLATE = (
    "<|im_start|>system\nYou are a prompt engineer. Based on the provided source image (first image) and "
    "target image (second image), create an interesting text prompt that can be used together with the source "
    "image to create the target image:<|im_end|><|im_start|>user{}<|vision_start|><|image_pad|><|vision_end|>"
    "<|im_end|>"
)
I2I_START = 54
RESOLUTIONS = [(1024, 1024), (640, 1408), (1408, 640), (768, 1280), (1280, 768), (896, 1152), (1152, 896)]
VAE_SCALE = 8  # the FLUX VAE's spatial factor, fixed in the released pipelines
LATENT_CHANNELS = 16


def snap_size(width: int, height: int, resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) itself if listed, else the listed size whose aspect ratio is nearest (first on ties)."""
    if (width, height) in resolutions:
        return width, height
    ratio = width / height
    return min(resolutions, key=lambda r: abs(r[0] / r[1] - ratio))


def clean_prompt(text: str) -> str:
    """HTML entities unescaped (twice, as diffusers does) and whitespace runs collapsed."""
    try:
        import ftfy  # optional, as in diffusers: fixes mojibake when installed

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


@dataclass
class K5Text:
    """Encoded prompts: Qwen states (B, L, D), CLIP pooled (B, D2), per-prompt token counts (B,)."""

    qwen: torch.Tensor
    clip: torch.Tensor
    lengths: torch.Tensor

    def repeat(self, n: int) -> K5Text:
        return K5Text(
            self.qwen.repeat_interleave(n, 0),
            self.clip.repeat_interleave(n, 0),
            self.lengths.repeat_interleave(n),
        )

    def cu_seqlens(self) -> torch.Tensor:
        """diffusers' cumulative lengths [0, l1, l1+l2, ...] (int32)."""
        zero = torch.zeros(1, dtype=torch.int32, device=self.lengths.device)
        return torch.cat([zero, self.lengths.cumsum(0).to(torch.int32)])


def _fit_template(tokenizer: Any, texts: list[str], start: int, max_len: int) -> list[str]:
    """Cut prompts whose template exceeds start + max_len tokens, by their decoded tail (diffusers' rule)."""
    ids = tokenizer(texts, return_tensors="pt", padding="longest")["input_ids"]
    if ids.shape[-1] <= start + max_len:
        return texts
    out = []
    for i, text in enumerate(texts):
        removed = tokenizer.decode(ids[i][start:-2][max_len - 2 :])
        if removed:
            log.warning("prompt truncated to max_sequence_length=%d tokens; dropped: %s", max_len, removed)
            text = text[: -len(removed)]
        out.append(text)
    return out


@torch.no_grad()
def encode_qwen(
    tokenizer: Any, text_encoder: Any, prompts: list[str], max_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL last hidden states after the template's first T2I_START tokens, and token counts."""
    texts = _fit_template(tokenizer, [T2I_TEMPLATE.format(p) for p in prompts], T2I_START, max_len)
    enc = tokenizer(texts, max_length=T2I_START + max_len, truncation=True, return_tensors="pt", padding=True)
    out = text_encoder(input_ids=enc["input_ids"].to(device), return_dict=True, output_hidden_states=True)
    states = out["hidden_states"][-1][:, T2I_START:]
    return states, enc["attention_mask"][:, T2I_START:].sum(1).to(device)


@torch.no_grad()
def encode_clip(tokenizer: Any, text_encoder: Any, prompts: list[str], device: torch.device) -> torch.Tensor:
    enc = tokenizer(prompts, max_length=77, truncation=True, padding="max_length", return_tensors="pt")
    return text_encoder(**{k: v.to(device) for k, v in enc.items()})["pooler_output"]


def encode_text(
    tok: Any,
    qwen: Any,
    tok2: Any,
    clip: Any,
    prompts: list[str],
    max_len: int,
    device: torch.device,
    dtype: torch.dtype,
) -> K5Text:
    """Both encoders on cleaned prompts, cast to the DiT's dtype."""
    prompts = [clean_prompt(p) for p in prompts]
    states, lengths = encode_qwen(tok, qwen, prompts, max_len, device)
    pooled = encode_clip(tok2, clip, prompts, device)
    return K5Text(states.to(dtype), pooled.to(dtype), lengths)


class PromptCache:
    """The last `size` encoded (prompt, max_len) pairs, so a repeated prompt skips the 7B encoder."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, str], K5Text] = OrderedDict()

    def encode(
        self, encode: Callable[[list[str]], K5Text], prompt: str, max_len: int, extra: str = ""
    ) -> K5Text:
        """`extra` keys what else the encoding depends on (editing: the source image's digest)."""
        key = (prompt, max_len, extra)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = encode([prompt])
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


def latent_shape(batch: int, height: int, width: int) -> tuple[int, ...]:
    return (batch, 1, height // VAE_SCALE, width // VAE_SCALE, LATENT_CHANNELS)


def velocity(dit: Any, x: torch.Tensor, text: K5Text, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = int(text.lengths.max())
    return dit(
        x.to(dtype), text.qwen.to(dtype), t.to(dtype), text.clip.to(dtype), text_rope_pos=torch.arange(n)
    ).sample


@dataclass
class K5Step:
    """One finished step; the caller may replace the latents, the text conditioning and (editing) the
    image condition for the steps that follow."""

    index: int
    timestep: torch.Tensor
    latents: torch.Tensor
    cond: K5Text | None = None  # what the next step reads: a step callback may replace any of these
    uncond: K5Text | None = None
    image: torch.Tensor | None = None  # editing: the visual condition (source latents and mask)


def denoise(
    dit: Any,
    scheduler: FlowMatchEulerDiscreteScheduler,
    latents: torch.Tensor,
    cond: K5Text,
    uncond: K5Text | None,
    guidance_scale: float,
    steps: int,
    image_cond: torch.Tensor | None = None,
) -> Iterator[K5Step]:
    """Euler steps over the scheduler's sigmas; yields after each step (the caller may replace the
    latents and the conditioning, as diffusers' step callbacks may; `uncond` None turns guidance off).

    `image_cond` (B, 1, h, w, 17) for editing: the encoded source image and a ones mask, appended to
    the DiT input channels at every step.
    """
    dtype = dit.dtype
    scheduler.set_timesteps(steps, device=latents.device)
    for i, t in enumerate(scheduler.timesteps):
        x = latents if image_cond is None else torch.cat([latents, image_cond.to(latents.dtype)], -1)
        tt = t.repeat(latents.shape[0])
        v = velocity(dit, x, cond, tt, dtype)
        if uncond is not None:
            vu = velocity(dit, x, uncond, tt, dtype)
            v = vu + guidance_scale * (v - vu)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        step = K5Step(i, t, latents, cond, uncond, image_cond)
        yield step
        latents, cond, uncond, image_cond = step.latents, step.cond, step.uncond, step.image


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w, C) latents -> images (B, 3, 8h, 8w) in about [-1, 1] (scaling factor only, no shift)."""
    z = latents[:, 0].permute(0, 3, 1, 2).to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(z).sample


def noise(batch: int, height: int, width: int, generator: Any, device: torch.device, dtype: torch.dtype):
    return randn(latent_shape(batch, height, width), generator=generator, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------ editing


def qwen_view(image: PIL.Image.Image) -> PIL.Image.Image:
    """The source image as Qwen2.5-VL sees it: halved (PIL's default filter), as diffusers does."""
    return image.resize((image.width // 2, image.height // 2))


def image_digest(image: PIL.Image.Image) -> str:
    """What the prompt cache keys an edit's encoding by: the image Qwen sees, bytes and size."""
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


def _fit_edit(processor: Any, prompt: str, image: PIL.Image.Image, max_len: int) -> str:
    """The prompt cut (by tokens, from its end) until template + image tokens + prompt fit I2I_START +
    max_len. diffusers cuts the end of the whole template instead, which drops the image's tokens."""

    def size(p: str) -> int:
        ids = processor(text=[I2I_TEMPLATE.format(p)], images=[image], videos=None)["input_ids"]
        return int(ids.shape[-1])

    limit, kept = I2I_START + max_len, prompt
    ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    while size(kept) > limit:
        if not ids:
            need = size("") - I2I_START
            raise ValueError(
                f"max_sequence_length={max_len} is too small for this source image: the template and the "
                f"image's tokens alone take {need}; pass at least {need}, or a smaller image"
            )
        ids = ids[: max(0, len(ids) - (size(kept) - limit))]
        kept = processor.tokenizer.decode(ids)
    if kept != prompt:
        log.warning("prompt truncated to max_sequence_length=%d tokens; dropped: %s", max_len,
                    prompt[len(kept):])  # fmt: skip
    return kept


@torch.no_grad()
def encode_qwen_edit(
    processor: Any, text_encoder: Any, prompts: list[str], image: PIL.Image.Image, max_len: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Qwen2.5-VL last hidden states of the editing template (the prompt, then the halved source image)
    after its first I2I_START tokens, and their counts."""
    view = qwen_view(image)
    texts = [I2I_TEMPLATE.format(_fit_edit(processor, p, view, max_len)) for p in prompts]
    enc = processor(text=texts, images=[view] * len(texts), videos=None, max_length=I2I_START + max_len,
                    truncation=True, return_tensors="pt", padding=True).to(device)  # fmt: skip
    out = text_encoder(**enc, return_dict=True, output_hidden_states=True)
    return out["hidden_states"][-1][:, I2I_START:], enc["attention_mask"][:, I2I_START:].sum(1)


def vae_pixels(images: list[PIL.Image.Image], height: int, width: int) -> torch.Tensor:
    """RGB images -> (B, 3, height, width) in [-1, 1], resized Lanczos as diffusers' VaeImageProcessor."""
    arr = [
        np.array(i.resize((width, height), resample=PIL.Image.LANCZOS)).astype(np.float32) / 255.0
        for i in images
    ]
    return 2.0 * torch.from_numpy(np.stack(arr).transpose(0, 3, 1, 2)) - 1.0


@torch.no_grad()
def image_condition(vae: Any, pixels: torch.Tensor, generator: Any) -> torch.Tensor:
    """The DiT's visual condition (B, 1, h, w, C + 1): a sample of the VAE posterior of the source image
    (drawn with `generator` after the noise, as diffusers), times the scaling factor, and a ones mask."""
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
    z = (z * vae.config.scaling_factor).permute(0, 2, 3, 1)[:, None]  # (B, C, h, w) -> (B, 1, h, w, C)
    return torch.cat([z, torch.ones_like(z[..., :1])], -1)
