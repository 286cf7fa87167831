"""Kandinsky 2.2 generation core: prior (text -> CLIP image embedding) and decoder (embedding -> image).

The loops are generators yielding a mutable state after every step: callers (the diffusers-compatible
pipelines, the CLI, the server) show progress, and may replace `state.latents` (diffusers'
`callback_on_step_end`) before the loop resumes. Draw order and shapes of every random tensor follow
diffusers, so a seed gives diffusers' image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .common import Placement, guide, randn

log = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None


# ---------------------------------------------------------------------------------------------- prior


@dataclass
class TextCond:
    """Prior text conditioning, [uncond, cond] along the batch when guided."""

    prompt_embeds: torch.Tensor  # (B, D) pooled, projected CLIP text embedding
    text_encoder_hidden_states: torch.Tensor  # (B, L, D)
    text_mask: torch.Tensor  # (B, L) bool


def _tokenize(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    n = tokenizer.model_max_length
    enc = tokenizer(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
    full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > n:
        cut = tokenizer.batch_decode(full[:, n - 1 : -1])
        log.warning("CLIP takes %d tokens: this part of the prompt was cut off: %s", n, cut)
    return enc.input_ids, enc.attention_mask.bool()


def _encode_texts(tokenizer: Any, text_encoder: Any, prompts: list[str], device: torch.device):
    ids, mask = _tokenize(tokenizer, prompts)
    out = text_encoder(ids.to(device))
    return out.text_embeds, out.last_hidden_state, mask.to(device)


def encode_prior_text(
    tokenizer: Any,
    text_encoder: Any,
    prompts: list[str],
    negative: list[str] | None,
    n: int,
    guided: bool,
    device: torch.device,
) -> TextCond:
    """CLIP text conditioning for `prompts`, each repeated `n` times; uncond from `negative` (or "")."""
    embeds, states, mask = _encode_texts(tokenizer, text_encoder, prompts, device)
    embeds, states, mask = (x.repeat_interleave(n, dim=0) for x in (embeds, states, mask))
    if guided:
        uncond = negative if negative is not None else [""] * len(prompts)
        u_embeds, u_states, u_mask = _encode_texts(tokenizer, text_encoder, uncond, device)
        u_embeds, u_states, u_mask = (x.repeat_interleave(n, dim=0) for x in (u_embeds, u_states, u_mask))
        embeds, states, mask = (
            torch.cat(p) for p in ((u_embeds, embeds), (u_states, states), (u_mask, mask))
        )
    return TextCond(embeds, states, mask)


def zero_image_embed(image_encoder: Any, device: torch.device) -> torch.Tensor:
    """CLIP embedding of an all-zero (already normalised, i.e. mean-grey) image: the prior's default negative."""
    size = image_encoder.config.image_size
    pixels = torch.zeros(1, 3, size, size, device=device, dtype=image_encoder.dtype)
    return image_encoder(pixels)["image_embeds"]


@dataclass
class PriorState:
    """The prior loop's state after step `i`; fields named as diffusers' callback tensor inputs."""

    i: int
    t: torch.Tensor
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    text_encoder_hidden_states: torch.Tensor
    text_mask: torch.Tensor
    num_steps: int


def prior_loop(
    prior: Any,
    scheduler: Any,
    cond: TextCond,
    latents: torch.Tensor,
    guidance_scale: float,
    steps: int,
    generator: Generator,
    device: torch.device,
    placement: Placement | None = None,
) -> Iterator[PriorState]:
    """Denoise CLIP image embeddings `latents` (B, D); yields after each step, ends post-processed."""
    if placement:
        placement.use(prior)
    scheduler.set_timesteps(steps, device=device)
    ts = scheduler.timesteps
    guided = guidance_scale > 1
    s = PriorState(
        -1, ts[0], latents, cond.prompt_embeds, cond.text_encoder_hidden_states, cond.text_mask, len(ts)
    )
    for i, t in enumerate(ts):
        x = torch.cat([s.latents] * 2) if guided else s.latents
        pred = prior(
            x,
            timestep=t,
            proj_embedding=s.prompt_embeds,
            encoder_hidden_states=s.text_encoder_hidden_states,
            attention_mask=s.text_mask,
        ).predicted_image_embedding
        if guided:
            u, c = pred.chunk(2)
            pred = u + guidance_scale * (c - u)
        # -1 after the last step: the UnCLIP step then returns its x0 estimate (diffusers passes None,
        # i.e. t - 1, which is the same for a schedule ending at 0 and wrong for kandi's 1-step schedule)
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        s.latents = scheduler.step(
            pred, timestep=t, sample=s.latents, generator=generator, prev_timestep=prev
        ).prev_sample
        s.i, s.t = i, t
        yield s
    s.latents = prior.post_process_latents(s.latents)


# -------------------------------------------------------------------------------------------- decoder


@dataclass
class DecoderState:
    """The decoder loop's state after step `i`; fields named as diffusers' callback tensor inputs."""

    i: int
    t: torch.Tensor
    latents: torch.Tensor
    image_embeds: torch.Tensor  # [negative, positive] when guided, as diffusers shows it to callbacks
    negative_image_embeds: torch.Tensor
    num_steps: int


def uses_learned_variance(scheduler: Any) -> bool:
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def decoder_loop(
    unet: Any,
    scheduler: Any,
    image_embeds: torch.Tensor,
    negative_image_embeds: torch.Tensor,
    latents: torch.Tensor,
    guidance_scale: float,
    steps: int,
    generator: Generator,
    device: torch.device,
    placement: Placement | None = None,
    hint: torch.Tensor | None = None,
) -> Iterator[DecoderState]:
    """Denoise MoVQ latents (B, C, h, w) conditioned on image embeddings (B, D) each.

    Unlike diffusers, embeddings (and the hint) are always expanded to the latent batch and cast to the
    UNet's dtype, so guidance_scale <= 1 with several images per prompt works.
    """
    if placement:
        placement.use(unet)
    guided = guidance_scale > 1
    dtype = unet.dtype
    emb = torch.cat([negative_image_embeds, image_embeds]) if guided else image_embeds
    emb = emb.to(device=device, dtype=dtype)
    if hint is not None:
        hint = (torch.cat([hint, hint]) if guided else hint).to(device=device, dtype=dtype)
    cond, cond_src = unet.condition(emb, hint=hint), emb
    scheduler.set_timesteps(steps, device=device)
    ts = scheduler.timesteps
    learned = uses_learned_variance(scheduler)
    channels = latents.shape[1]
    s = DecoderState(-1, ts[0], latents, emb, negative_image_embeds, len(ts))
    for i, t in enumerate(ts):
        if s.image_embeds is not cond_src:  # a step callback replaced the embeddings
            cond, cond_src = unet.condition(s.image_embeds.to(device, dtype), hint=hint), s.image_embeds
        x = torch.cat([s.latents] * 2) if guided else s.latents
        pred = unet.denoise(x, t, cond)
        if guided:
            pred = guide(pred, guidance_scale, channels, keep_variance=learned)
        elif not learned:
            pred = pred[:, :channels]
        s.latents = scheduler.step(pred, t, s.latents, generator=generator)[0]
        s.i, s.t = i, t
        yield s


def initial_latents(
    shape: tuple[int, ...],
    generator: Generator,
    device: torch.device,
    dtype: torch.dtype,
    latents: torch.Tensor | None,
    init_noise_sigma: float,
) -> torch.Tensor:
    """Start noise (drawn like diffusers) or the caller's latents, scaled by the scheduler's sigma."""
    if latents is None:
        latents = randn(shape, generator=generator, device=device, dtype=dtype)
    else:
        latents = latents.to(device=device, dtype=dtype)
    return latents * init_noise_sigma


def decode(movq: Any, latents: torch.Tensor, placement: Placement | None = None) -> torch.Tensor:
    """MoVQ decode without quantisation (as the Kandinsky pipelines do); images in [-1, 1]."""
    if placement:
        placement.use(movq)
    return movq.decode(latents.to(movq.dtype), force_not_quantize=True).sample
