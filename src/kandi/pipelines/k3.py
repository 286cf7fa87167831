"""Kandinsky 3 generation core: T5 prompt encoding (cached) and the denoising loop, no prior.

As diffusers: prompts are cut to the longest prompt's tokens + 1 ("cut context"), padding is zeroed, a
missing negative prompt is an all-zero embedding with an all-zero mask, and guidance is
`(g + 1) * cond - g * uncond`. Unlike diffusers, each prompt's mask stays with its prompt when several
images are made per prompt, one negative prompt applies to every prompt, and the text encoder may live
on another device or dtype than the UNet (its output is moved over once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .common import Placement
from .images import match_batch
from .k22 import Generator, encode, step_kwargs, tokenize

T5_TOKENS = 128  # Kandinsky 3 pads and cuts prompts to 128 T5 tokens
LATENT_FACTOR = 8  # diffusers sizes Kandinsky 3 latents with a fixed factor 8 (the real MoVQ's)


def latent_shape(batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Text-to-image latents for an image of (height, width): sides rounded up to multiples of 64 px
    (the UNet halves the latents three times), as diffusers does, whatever the MoVQ's own factor."""
    side = lambda v: -(-v // LATENT_FACTOR**2) * LATENT_FACTOR  # noqa: E731
    return (batch, 4, side(height), side(width))


@dataclass
class K3Text:
    """Prompt conditioning, one row per latent: embeds (B, L, D) zero at padding, mask (B, L)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    negative_embeds: torch.Tensor | None = None  # None when unguided
    negative_mask: torch.Tensor | None = None


class PromptCache:
    """T5 outputs of recent prompts (the 8.6B encoder is the slowest part of a short run).

    Keyed by the encoder object and the prompt text; entries hold the full 128-token rows, so the
    cut to a batch's longest prompt happens after lookup and cached rows equal freshly computed ones.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._rows: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()  # the server runs requests in several threads

    def encode(
        self, tokenizer: Any, text_encoder: Any, prompts: list[str], placement: Placement | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds (B, 128, D), mask (B, 128)) on the device the encoder runs on, padding rows zeroed.
        Under model offload the encoder is moved to the device only when a prompt is not cached."""
        offloaded = placement is not None and placement.mode == "model"
        device = placement.device if offloaded else text_encoder.device  # where it runs, parked or not
        enc_key = (id(text_encoder), text_encoder.dtype, str(device))
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if (enc_key, p) not in self._rows))
            if missing:
                if placement is not None:
                    placement.use(text_encoder)
                embeds, mask = _t5(tokenizer, text_encoder, missing)
                for i, p in enumerate(missing):
                    self._rows[(enc_key, p)] = (embeds[i], mask[i])
            rows = [self._rows[(enc_key, p)] for p in prompts]
            for p in prompts:
                self._rows.move_to_end((enc_key, p))
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def clear(self) -> None:
        self._rows.clear()


def _t5(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenize(tokenizer, prompts, padding="max_length", max_length=T5_TOKENS, truncation=True,
                   return_tensors="pt")  # fmt: skip
    device = text_encoder.device
    mask = ids.attention_mask.to(device)
    embeds = text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]
    return embeds * mask.unsqueeze(2).to(embeds.dtype), mask


def _cut(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the longest prompt's tokens + 1 (diffusers' cut_context)."""
    keep = int(mask.sum(-1).max()) + 1
    return embeds[:, :keep], mask[:, :keep]


def encode_text(
    tokenizer: Any,
    text_encoder: Any,
    prompts: list[str],
    negative: list[str] | None,
    n: int,
    guided: bool,
    device: torch.device,
    dtype: torch.dtype,
    cache: PromptCache | None = None,
    placement: Placement | None = None,
    cut: bool = True,
) -> K3Text:
    """Conditioning for `prompts` (each repeated `n` times), on `device` in `dtype` (the UNet's); `cut`
    keeps only the longest prompt's tokens + 1 (the generation's saving), else all 128 padded tokens.

    Under model offload (`placement`) the T5 comes onto the device only for prompts not in `cache`, and
    goes back to the CPU as soon as they are encoded: the UNet then never shares the device with it.
    """
    cache = cache or PromptCache(0)
    try:
        return _encode_text(tokenizer, text_encoder, prompts, negative, n, guided, device, dtype, cache,
                            placement, cut)  # fmt: skip
    finally:
        if placement is not None:
            placement.park(text_encoder)


def _encode_text(tokenizer: Any, text_encoder: Any, prompts: list[str], negative: list[str] | None, n: int,
                 guided: bool, device: torch.device, dtype: torch.dtype, cache: PromptCache,
                 placement: Placement | None, cut: bool) -> K3Text:  # fmt: skip
    embeds, mask = cache.encode(tokenizer, text_encoder, prompts, placement)
    if cut:
        embeds, mask = _cut(embeds, mask)
    out = K3Text(embeds, mask)
    if guided:
        if negative is None:  # diffusers: all-zero embedding and mask (not the encoding of "")
            out.negative_embeds, out.negative_mask = torch.zeros_like(embeds), torch.zeros_like(mask)
        else:
            neg, nmask = cache.encode(tokenizer, text_encoder, negative, placement)
            length = embeds.shape[1]  # cut to the prompts' length
            out.negative_embeds, out.negative_mask = neg[:, :length], nmask[:, :length]
    return _expand(out, n, device, dtype)


def _expand(t: K3Text, n: int, device: torch.device, dtype: torch.dtype) -> K3Text:
    rows = lambda x, d=dtype: None if x is None else x.repeat_interleave(n, dim=0).to(device, d)  # noqa: E731
    return K3Text(rows(t.embeds), rows(t.mask, torch.long), rows(t.negative_embeds),
                  rows(t.negative_mask, torch.long))  # fmt: skip


def image_latents(
    movq: Any,
    pixels: torch.Tensor,
    batch: int,
    n: int,
    dtype: torch.dtype,
    placement: Placement | None = None,
) -> torch.Tensor:
    """img2img start: MoVQ latents of `pixels` (one image, or one per prompt), `n` per prompt.

    The repeat is a copy even for n = 1, as in diffusers: it also gives the UNet diffusers' memory layout,
    and with it the same convolution kernels and bits.
    """
    x0 = encode(movq, pixels, placement).to(dtype)
    return match_batch(x0, batch, "image").repeat_interleave(n, dim=0)


@dataclass
class K3State:
    """The loop's state after step `i`; fields named as diffusers' callback tensor inputs."""

    i: int
    t: torch.Tensor | None
    latents: torch.Tensor
    prompt_embeds: torch.Tensor  # [negative, positive] when guided, as diffusers shows it to callbacks
    negative_prompt_embeds: torch.Tensor | None
    attention_mask: torch.Tensor
    negative_attention_mask: torch.Tensor | None
    num_steps: int


def denoise_loop(
    unet: Any,
    scheduler: Any,
    ts: torch.Tensor,
    text: K3Text,
    latents: torch.Tensor,
    guidance_scale: float,
    generator: Generator,
    placement: Placement | None = None,
) -> Iterator[K3State]:
    """Denoise latents (B, 4, h, w) over timesteps `ts`; returns (StopIteration.value) the final latents."""
    if placement:
        placement.use(unet)
    guided = guidance_scale > 1
    if guided:
        embeds = torch.cat([text.negative_embeds, text.embeds])
        mask = torch.cat([text.negative_mask, text.mask]).bool()
    else:
        embeds, mask = text.embeds, text.mask.bool()
    s = K3State(-1, ts[0] if len(ts) else None, latents, embeds, text.negative_embeds, mask,
                text.negative_mask, len(ts))  # fmt: skip
    cond, src = unet.condition(embeds, mask), (embeds, mask)
    ts_host = ts.tolist()  # python ints for the scheduler: no device sync per step
    draw = step_kwargs(scheduler, generator)
    for i, t in enumerate(ts):
        if s.prompt_embeds is not src[0] or s.attention_mask is not src[1]:  # a callback replaced them
            src = (s.prompt_embeds, s.attention_mask)
            cond = unet.condition(s.prompt_embeds, s.attention_mask.bool())
        x = scheduler.scale_model_input(s.latents, ts_host[i])
        x = torch.cat([x] * 2) if guided else x
        pred = unet.denoise(x, t, cond)
        if guided:
            u, c = pred.chunk(2)
            pred = (guidance_scale + 1.0) * c - guidance_scale * u
        s.latents = scheduler.step(pred, ts_host[i], s.latents, **draw)[0]
        s.i, s.t = i, t
        yield s
    return s.latents
