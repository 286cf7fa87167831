"""Kandinsky 2.x generation core: prior (text -> CLIP image embedding) and decoder (embedding -> image).

2.1 and 2.2 share it: the 2.1 decoder also reads the prompt through M-CLIP (`DecoderText`), starts img2img
from its own noise table and does not re-inject the known region when inpainting (`k21=True`).

The loops are generators yielding a mutable state after every step: callers (the diffusers-compatible
pipelines, the CLI, the server) show progress, and may replace `state.latents` (diffusers'
`callback_on_step_end`) before the loop resumes. Draw order and shapes of every random tensor follow
diffusers, so a seed gives diffusers' image.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .common import Placement, guide, randn
from .images import grow_repaint, match_batch

log = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None


# ---------------------------------------------------------------------------------------------- prior


@dataclass
class TextCond:
    """Prior text conditioning, [uncond, cond] along the batch when guided."""

    prompt_embeds: torch.Tensor  # (B, D) pooled, projected CLIP text embedding
    text_encoder_hidden_states: torch.Tensor  # (B, L, D)
    text_mask: torch.Tensor  # (B, L) bool


# A fast tokenizer keeps its padding/truncation settings as shared state: two threads (the server's
# workers) tokenizing at once could get each other's padding. Tokenizing is cheap; serialise it.
_TOKENIZER_LOCK = threading.Lock()


def tokenize(tokenizer: Any, prompts: list[str], **kwargs: Any) -> Any:
    """`tokenizer(prompts, **kwargs)`, safe to call from several threads."""
    with _TOKENIZER_LOCK:
        return tokenizer(prompts, **kwargs)


def cut_off(tokenizer: Any, full: torch.Tensor, n: int, shown: int = 60) -> str:
    """One short line on what a prompt lost: how many tokens, and how the cut part begins (a 1 MB prompt
    must not become a 1 MB log line)."""
    lost = int(full.shape[-1]) - n
    start = tokenizer.decode(full[0, n - 1 : n - 1 + 16], skip_special_tokens=True).strip()
    start = start if len(start) <= shown else start[: shown - 1] + "…"
    return f"{lost} more token(s) were cut off, from {start!r}"


def _tokenize(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    n = tokenizer.model_max_length
    enc = tokenize(
        tokenizer, prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt"
    )
    full = tokenize(tokenizer, prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > n:
        log.warning("CLIP reads %d tokens: %s", n, cut_off(tokenizer, full, n))
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


def steps_run(steps: int, strength: float = 1.0) -> int:
    """How many of `steps` an img2img-style run at `strength` takes (diffusers' get_timesteps)."""
    return min(int(steps * strength), steps)


def schedule(scheduler: Any, steps: int, device: torch.device, strength: float = 1.0) -> torch.Tensor:
    """The timesteps to run: the last `int(steps * strength)` of a `steps`-step schedule (img2img)."""
    scheduler.set_timesteps(steps, device=device)
    # a multistep or 2nd-order sampler has `order` entries per step; it starts at the begin index
    start = (steps - steps_run(steps, strength)) * getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def prior_loop(
    prior: Any,
    scheduler: Any,
    ts: torch.Tensor,
    cond: TextCond,
    latents: torch.Tensor,
    guidance_scale: float,
    generator: Generator,
    placement: Placement | None = None,
) -> Iterator[PriorState]:
    """Denoise CLIP image embeddings `latents` (B, D) over timesteps `ts`; ends post-processed."""
    if placement:
        placement.use(prior)
    ts_host = ts.tolist()  # the scheduler indexes its tables with python ints: no device sync per step
    guided = guidance_scale > 1
    t0 = ts[0] if len(ts) else None
    s = PriorState(
        -1, t0, latents, cond.prompt_embeds, cond.text_encoder_hidden_states, cond.text_mask, len(ts)
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
        prev = ts_host[i + 1] if i + 1 < len(ts_host) else -1
        s.latents = scheduler.step(
            pred, timestep=ts_host[i], sample=s.latents, generator=generator, prev_timestep=prev
        ).prev_sample
        s.i, s.t = i, t
        yield s
    s.latents = prior.post_process_latents(s.latents)
    return s.latents


# -------------------------------------------------------------------------------------------- decoder


@dataclass
class DecoderText:
    """2.1 decoder text conditioning, one row per latent ([uncond, cond] along the batch when guided)."""

    embeds: torch.Tensor  # (B, D) pooled, projected M-CLIP embedding
    states: torch.Tensor  # (B, L, hidden) XLM-R hidden states
    mask: torch.Tensor  # (B, L) the tokenizer's attention mask (the UNet reads all L states)

    def to(self, device: torch.device, dtype: torch.dtype) -> DecoderText:
        return DecoderText(self.embeds.to(device, dtype), self.states.to(device, dtype), self.mask.to(device))


MCLIP_TOKENS = 77  # the 2.1 decoder pads and cuts prompts to 77 XLM-R tokens


def _encode_mclip(tokenizer: Any, text_encoder: Any, prompts: list[str], device: torch.device):
    enc = tokenize(tokenizer, prompts, padding="max_length", max_length=MCLIP_TOKENS, truncation=True,
                   return_attention_mask=True, add_special_tokens=True, return_tensors="pt")  # fmt: skip
    full = tokenize(tokenizer, prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > MCLIP_TOKENS:
        log.warning(
            "the 2.1 decoder reads %d tokens: %s", MCLIP_TOKENS, cut_off(tokenizer, full, MCLIP_TOKENS)
        )
    mask = enc.attention_mask.to(device)
    embeds, states = text_encoder(input_ids=enc.input_ids.to(device), attention_mask=mask)
    return embeds, states, mask


def encode_decoder_text(
    tokenizer: Any,
    text_encoder: Any,
    prompts: list[str],
    negative: list[str] | None,
    n: int,
    guided: bool,
    device: torch.device,
) -> DecoderText:
    """M-CLIP conditioning for `prompts`, each repeated `n` times; uncond from `negative` (or "")."""
    rows = [x.repeat_interleave(n, dim=0) for x in _encode_mclip(tokenizer, text_encoder, prompts, device)]
    if guided:
        uncond = negative if negative is not None else [""] * len(prompts)
        u = [x.repeat_interleave(n, dim=0) for x in _encode_mclip(tokenizer, text_encoder, uncond, device)]
        rows = [torch.cat([a, b]) for a, b in zip(u, rows)]
    return DecoderText(*rows)


@dataclass
class DecoderState:
    """The decoder loop's state after step `i`; fields named as diffusers' callback tensor inputs."""

    i: int
    t: torch.Tensor | None
    latents: torch.Tensor
    image_embeds: torch.Tensor  # [negative, positive] when guided, as diffusers shows it to callbacks
    negative_image_embeds: torch.Tensor
    num_steps: int
    masked_image: torch.Tensor | None = None  # inpainting inputs, doubled when guided (as diffusers)
    mask_image: torch.Tensor | None = None


@dataclass
class Inpaint:
    """What the 9-channel inpainting UNet reads besides the latents, one row per latent."""

    # known and keep have one row per latent, or a single row shared by all (kept as one row: the
    # broadcasting then follows diffusers' arithmetic, memory layout included, so results match bit for bit)
    known: torch.Tensor  # (B or 1, 4, h, w) latents of the input image
    keep: torch.Tensor  # (B or 1, 1, h, w) 1 = keep, 0 = repaint (already grown by a latent pixel)
    noise: torch.Tensor  # (B, 4, h, w) start noise, reused to noise `known` to each step's level
    reinject: bool = True  # 2.2 puts the known region back after every step; 2.1 does not


def uses_learned_variance(scheduler: Any) -> bool:
    """Only DDPM samples with the predicted variance; every other sampler gets the eps half alone."""
    learned = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
    return learned and type(scheduler).__name__ == "DDPMScheduler"


def step_kwargs(scheduler: Any, generator: Generator) -> dict[str, Any]:
    """`generator=` only for samplers whose step takes one (diffusers passes it to all, and UniPC raises)."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def decoder_loop(
    unet: Any,
    scheduler: Any,
    ts: torch.Tensor,
    image_embeds: torch.Tensor,
    negative_image_embeds: torch.Tensor,
    latents: torch.Tensor,
    guidance_scale: float,
    generator: Generator,
    placement: Placement | None = None,
    hint: torch.Tensor | None = None,
    inpaint: Inpaint | None = None,
    text: DecoderText | None = None,
) -> Iterator[DecoderState]:
    """Denoise MoVQ latents (B, C, h, w) over timesteps `ts`, conditioned on image embeddings (B, D)
    (and, for 2.1, on the prompt's M-CLIP `text`, already laid out like the guided batch).

    Unlike diffusers, embeddings and hints are always expanded to the latent batch and cast to the
    UNet's dtype (so guidance_scale <= 1 with several images per prompt works), and inpainting keeps
    each image's own known region (diffusers re-injects the first image's into the whole batch).
    """
    if placement:
        placement.use(unet)
    guided, device, dtype = guidance_scale > 1, latents.device, unet.dtype
    emb = torch.cat([negative_image_embeds, image_embeds]) if guided else image_embeds
    emb = emb.to(device=device, dtype=dtype)
    if hint is not None:
        hint = (torch.cat([hint, hint]) if guided else hint).to(device=device, dtype=dtype)
    if text is not None:
        text = text.to(device, dtype)
    tkw = {"text_embeds": text.embeds, "text_states": text.states} if text is not None else {}
    cond, cond_src = unet.condition(emb, hint=hint, **tkw), emb
    ts_host = ts.tolist()  # python ints for the scheduler (no sync); the UNet takes the device tensor
    learned, channels = uses_learned_variance(scheduler), latents.shape[1]
    draw = step_kwargs(scheduler, generator)
    s = DecoderState(-1, ts[0] if len(ts) else None, latents, emb, negative_image_embeds, len(ts))
    if inpaint is not None:
        rows = (latents.shape[0], -1, -1, -1)
        masked, keep = (inpaint.known * inpaint.keep).expand(rows), inpaint.keep.expand(rows)
        s.masked_image, s.mask_image = (
            torch.cat([x, x]) if guided else x.contiguous() for x in (masked, keep)
        )
    for i, t in enumerate(ts):
        if s.image_embeds is not cond_src:  # a step callback replaced the embeddings
            cond, cond_src = (
                unet.condition(s.image_embeds.to(device, dtype), hint=hint, **tkw),
                s.image_embeds,
            )
        x = scheduler.scale_model_input(s.latents, ts_host[i])
        x = torch.cat([x] * 2) if guided else x
        if inpaint is not None:
            x = torch.cat([x, s.masked_image, s.mask_image], dim=1)
        pred = unet.denoise(x, t, cond)
        if guided:
            pred = guide(pred, guidance_scale, channels, keep_variance=learned)
        elif not learned:
            pred = pred[:, :channels]
        s.latents = scheduler.step(pred, ts_host[i], s.latents, **draw)[0]
        if inpaint is not None and inpaint.reinject:
            nxt = ts[i + 1 : i + 2] if i + 1 < len(ts_host) else None  # a view: no tensor made per step
            s.latents = _reinject(scheduler, inpaint, s.latents, nxt, s.mask_image[: len(s.latents)])
        s.i, s.t = i, t
        yield s
    if inpaint is not None and inpaint.reinject:
        # with the mask a step callback may have replaced (as diffusers): a callback that zeroes the
        # latents and the mask at the last step gets its zeros back
        keep = s.mask_image[: len(s.latents)]
        s.latents = keep * inpaint.known + (1 - keep) * s.latents
    return s.latents


def _reinject(
    scheduler: Any, inp: Inpaint, latents: torch.Tensor, t_next: torch.Tensor | None, keep: torch.Tensor
) -> torch.Tensor:
    """Put the known region (`keep`: the current mask) back, noised to the next step's level
    (`t_next`: a 1-element tensor on the latents' device, so no host tensor is made per step)."""
    known = inp.known
    if t_next is not None:
        known = scheduler.add_noise(known, inp.noise, t_next)
    return keep * known + (1 - keep) * latents


def noised_latents(
    scheduler: Any, latents: torch.Tensor, ts: torch.Tensor, generator: Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """img2img start: encoded image latents noised to the first timestep of `ts`; also the noise."""
    noise = randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = ts[:1].repeat(latents.shape[0])
    return scheduler.add_noise(latents, noise, t), noise


def img2img_start(
    scheduler: Any, x0: torch.Tensor, ts: torch.Tensor, strength: float, generator: Generator, k21: bool
) -> torch.Tensor:
    """The first latents of an img2img run over `ts`: the image latents `x0` noised to `ts[0]`.

    2.1 noises with the original repo's table (as diffusers) when the sampler works in that
    variance-preserving space (init_noise_sigma 1); a sigma sampler (Euler, ...) expects x0 + sigma * noise
    at its first sigma, which only its own add_noise gives.
    """
    if not len(ts):
        return x0
    if k21 and float(scheduler.init_noise_sigma) == 1.0:
        num_train = scheduler.config.num_train_timesteps
        return k21_noised_latents(x0, strength, num_train, 1.0, generator)
    return noised_latents(scheduler, x0, ts, generator)[0]


def _k21_alphas_cumprod() -> torch.Tensor:
    # the original 2.1 repo's q_sample table (linear betas 1e-4..0.02), which diffusers' 2.1 img2img keeps
    return torch.cumprod(1.0 - torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32), dim=0)


def k21_noised_latents(
    latents: torch.Tensor, strength: float, num_train_timesteps: int, sigma: float, generator: Generator
) -> torch.Tensor:
    """2.1 img2img start: the image latents noised at t = int(T * strength) - 2 with the 2.1 table."""
    latents = latents * sigma
    noise = randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = max(int(num_train_timesteps * strength) - 2, 0)  # diffusers indexes from the end below strength 0.002
    a = _k21_alphas_cumprod().to(device=latents.device, dtype=latents.dtype)[t]
    return a**0.5 * latents + (1 - a) ** 0.5 * noise


def encode(movq: Any, pixels: torch.Tensor, placement: Placement | None = None) -> torch.Tensor:
    """MoVQ latents (pre-quantisation) of images in [-1, 1]."""
    if placement:
        placement.use(movq)
    return movq.encode(pixels.to(device=movq.device, dtype=movq.dtype)).latents


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


def decoder_job(
    unet: Any,
    scheduler: Any,
    movq: Any,
    image_embeds: torch.Tensor,
    negative_image_embeds: torch.Tensor,
    n: int,
    size: tuple[int, int],
    steps: int,
    guidance_scale: float,
    generator: Generator,
    device: torch.device,
    placement: Placement | None = None,
    *,
    strength: float = 1.0,
    image: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    hint: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    text: DecoderText | None = None,
    k21: bool = False,
) -> Iterator[DecoderState]:
    """Every 2.x decoder task as one generator; returns (StopIteration.value) the final latents.

    `image_embeds` / `negative_image_embeds` (B, D) are one per prompt, each made into `n` images of
    `size` (H, W; multiples of the UNet's 64 px). Text to image without `image`; img2img with `image`
    ((B or 1, 3, H, W) in [-1, 1]) and `strength`; inpainting adds `keep` ((B or 1, 1, H, W), 1 = keep);
    ControlNet adds `hint` ((B or 1, 3, H, W) in [0, 1]). 2.1 passes its prompt's `text` and `k21=True`.
    Random draws follow diffusers' order.
    """
    b = image_embeds.shape[0]
    sf = 2 ** (len(movq.config.block_out_channels) - 1)
    shape = (b * n, movq.config.latent_channels, size[0] // sf, size[1] // sf)
    per_latent = lambda x, name: x if x.shape[0] == 1 else match_batch(x, b, name).repeat_interleave(n, dim=0)  # noqa: E731
    dtype = unet.dtype  # init_noise_sigma is read after set_timesteps: sigma samplers change it there
    inpaint = None
    if keep is not None:
        known = encode(movq, image.to(device), placement)
        grown = grow_repaint(F.interpolate(keep.to(device, known.dtype), known.shape[-2:], mode="nearest"))
        known, grown = per_latent(known, "image"), per_latent(grown, "mask")
        ts = schedule(scheduler, steps, device, strength)
        # unit noise: the start is it scaled by init_noise_sigma, but add_noise takes it as drawn (diffusers
        # re-noises with the scaled copy, ~14.6x too much for sigma samplers such as Euler)
        noise = initial_latents(shape, generator, device, dtype, latents, 1.0)
        x = noise * scheduler.init_noise_sigma
        if strength < 1:  # start from the image noised to the first step (as img2img), or the image itself
            x = scheduler.add_noise(known, noise, ts[:1].repeat(shape[0])) if len(ts) else known.expand(shape)
        inpaint = Inpaint(known.to(x.dtype), grown.to(x.dtype), noise, reinject=not k21)
    elif image is not None:
        x0 = match_batch(encode(movq, image.to(device), placement), b, "image").repeat_interleave(n, dim=0)
        ts = schedule(scheduler, steps, device, strength)
        x = img2img_start(scheduler, x0, ts, strength, generator, k21)
    else:
        ts = schedule(scheduler, steps, device)
        x = initial_latents(shape, generator, device, dtype, latents, scheduler.init_noise_sigma)
    if hint is not None:
        hint = match_batch(hint, b, "hint").repeat_interleave(n, dim=0)
    emb, neg = image_embeds.repeat_interleave(n, dim=0), negative_image_embeds.repeat_interleave(n, dim=0)
    loop = decoder_loop(
        unet, scheduler, ts, emb, neg, x, guidance_scale, generator, placement, hint, inpaint, text
    )
    return (yield from loop) if len(ts) else x
