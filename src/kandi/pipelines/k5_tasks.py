"""Whole Kandinsky 5.0 Image Lite requests for the CLI, the server and the batch runner.

Same protocol as `k3_tasks`: models loaded once, `GenerationOptions` in, `Progress` events and a
`Result` of PIL images out, image k made with `torch.Generator().manual_seed(seed + k)` exactly as
`Kandinsky5T2IPipeline` makes it. Sizes snap to the model's resolution list. The only sampler is the
checkpoint's flow-match Euler (`opts.scheduler` None, "euler" or "flow-euler"): DDPM/DDIM are not
correct for a flow-matching model and are refused. Text encoders are moved back after encoding under
model offload (`placement`), and prompt encodings are cached across requests.

The editing model (kandinsky-5-i2i: a DiT with `visual_cond`) makes `image_to_image` as
`Kandinsky5I2IPipeline` does (the source image in the Qwen prompt and as the DiT's visual condition,
the whole image redrawn: there is no strength); the text-to-image model cannot edit, and the editing
model needs an image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from . import images, k5
from .common import Placement, to_output
from .k5_processor import QwenVLProcessor
from .k22_tasks import Progress, Result, _each_seed

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
SAMPLERS = (None, "euler", "flow-euler", "flowmatcheuler")


@dataclass
class K5Models:
    """Everything a Kandinsky 5 image request needs, loaded once."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any
    tokenizer_2: Any
    scheduler: Any
    placement: Placement
    resolutions: list[tuple[int, int]] = field(default_factory=lambda: list(k5.RESOLUTIONS))
    cache: k5.PromptCache = field(default_factory=k5.PromptCache)
    max_sequence_length: int = 512

    @classmethod
    def load(cls, repo: str, torch_dtype: torch.dtype | None = None, variant: str | None = None,
             **hub: Any) -> K5Models:  # fmt: skip
        from ..loading.hub import resolve_repo_dir
        from ..loading.pipeline import load_components, read_model_index

        root = resolve_repo_dir(repo, variant=variant, **hub)
        parts = load_components(root, read_model_index(root), list(PARTS), {}, torch_dtype=torch_dtype,
                                variant=variant)  # fmt: skip
        m = cls(**parts, placement=Placement())
        m.max_sequence_length = 1024 if m.edits else 512  # the pipelines' defaults (the image takes tokens)
        return m

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2, self.transformer, self.vae]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> K5Models:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.placement.execution_device([self.transformer])

    @property
    def edits(self) -> bool:
        """The editing model (its DiT takes the source image's latents and a mask as more channels)."""
        return bool(self.transformer.config.visual_cond)


def check_sampler(name: str | None) -> None:
    if name is not None and name.lower() not in SAMPLERS:
        raise ValueError(
            f"scheduler {name!r} is not available for Kandinsky 5 (a flow-matching model): use 'euler' "
            "(flow-match Euler, the checkpoint's own) or leave it unset"
        )


def _text(m: K5Models, prompt: str, image: Any = None) -> k5.K5Text:
    """The prompt's encoding (cached); editing: with the source image in the Qwen template."""

    def encode(prompts: list[str]) -> k5.K5Text:
        m.placement.use(m.text_encoder)
        dev = next(m.text_encoder.parameters()).device
        tok = getattr(m.tokenizer, "tokenizer", m.tokenizer)
        if image is None:
            states, lengths = k5.encode_qwen(tok, m.text_encoder, prompts, m.max_sequence_length, dev)
        else:
            proc = m.tokenizer if hasattr(m.tokenizer, "image_processor") else QwenVLProcessor(tok)
            states, lengths = k5.encode_qwen_edit(
                proc, m.text_encoder, prompts, image, m.max_sequence_length, dev
            )
        m.placement.use(m.text_encoder_2)
        pooled = k5.encode_clip(
            m.tokenizer_2, m.text_encoder_2, prompts, next(m.text_encoder_2.parameters()).device
        )
        out, dtype = m.device, m.transformer.dtype
        return k5.K5Text(states.to(out, dtype), pooled.to(out, dtype), lengths.to(out))

    digest = "" if image is None else k5.image_digest(image)
    return m.cache.encode(encode, k5.clean_prompt(prompt), m.max_sequence_length, digest)


@torch.no_grad()
def text_to_image(m: K5Models, opts: Any) -> Iterator[Progress | Result]:
    """Images for `opts` (a GenerationOptions), seed, seed+1, ... each (as Kandinsky5T2IPipeline)."""
    check_sampler(opts.scheduler)
    if m.edits:
        raise ValueError(
            "kandinsky-5-i2i edits images: give it an image (img2img), or use kandinsky-5 for text to image"
        )
    width, height = k5.snap_size(opts.width, opts.height, m.resolutions)

    def one(g: torch.Generator, k: int, n: int):
        x = k5.noise(1, height, width, g, m.device, m.transformer.dtype)
        return (yield from _denoise(m, opts, x, None, None, k, n))

    yield from _each_seed(opts, one)


def _denoise(m: K5Models, opts: Any, x: torch.Tensor, visual: Any, image: Any, k: int, n: int):
    """The encoded prompts (after the noise is drawn, as the pipelines), the steps, the decoded image."""
    cond = _text(m, opts.prompt, image)
    uncond = _text(m, opts.negative_prompt or "", image) if opts.guidance_scale > 1.0 else None
    m.placement.use(m.transformer)
    visual = visual() if callable(visual) else visual
    loop = k5.denoise(m.transformer, m.scheduler, x, cond, uncond, opts.guidance_scale, opts.steps, visual)
    for step in loop:
        x = step.latents
        yield Progress("decoder", step.index + 1, opts.steps, k, n)
    m.placement.use(m.vae)
    out = to_output(k5.decode(m.vae, x.to(m.vae.device)), "pil", raw_pt=False)
    m.placement.release()
    return out


@torch.no_grad()
def image_to_image(m: K5Models, opts: Any, image: Any) -> Iterator[Progress | Result]:
    """`image` edited after the prompt at opts' size (snapped to the model's sizes), seed, seed+1, ... each
    as Kandinsky5I2IPipeline makes it with that seed's generator."""
    check_sampler(opts.scheduler)
    if not m.edits:
        raise ValueError(
            "kandinsky-5 makes images from text: for img2img use the editing model kandinsky-5-i2i"
        )
    source = images.as_pil(image, "image")
    width, height = k5.snap_size(opts.width, opts.height, m.resolutions)
    pixels = k5.vae_pixels([source], height, width)

    def one(g: torch.Generator, k: int, n: int):
        x = k5.noise(1, height, width, g, m.device, m.transformer.dtype)

        def visual() -> torch.Tensor:  # the VAE draws from g after the noise, as the pipeline
            m.placement.use(m.vae)
            return k5.image_condition(m.vae, pixels, g).to(m.device, m.transformer.dtype)

        return (yield from _denoise(m, opts, x, visual, source, k, n))

    yield from _each_seed(opts, one)


def unsupported(m: K5Models, opts: Any, *args: Any, **kwargs: Any) -> Iterator[Progress | Result]:
    raise ValueError(
        "Kandinsky 5 makes images from text (kandinsky-5) and edits them after a prompt (img2img with "
        "kandinsky-5-i2i); inpainting, outpainting, mixing and ControlNet are Kandinsky 2.2 tasks"
    )
    yield  # pragma: no cover  (a generator, like the other tasks)


inpaint = outpaint = mix = controlnet = unsupported
