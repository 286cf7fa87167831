"""Kandinsky 5.0 Image Lite text to image and image editing with diffusers' names, arguments, defaults
and outputs (`Kandinsky5T2IPipeline`, `Kandinsky5I2IPipeline`).

Thin over `kandi.pipelines.k5`. The Qwen2.5-VL `tokenizer` component may be a plain tokenizer
(AutoTokenizer), kandi's QwenVLProcessor (what loading gives: tokenizer plus a PIL/numpy image
processor) or a transformers Qwen2VLProcessor: torchvision is not required. Beyond diffusers: every argument is checked before model work, one negative prompt applies to
every prompt, recent prompts' encodings are cached, and the text encoders may live on another device or
dtype than the transformer (e.g. on the CPU in bf16 while the DiT runs on the GPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..pipelines import k5
from ..pipelines.common import to_output
from . import checks
from .base import DiffusionPipeline
from .outputs import BaseOutput

log = logging.getLogger(__name__)


@dataclass
class KandinskyImagePipelineOutput(BaseOutput):
    image: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def _tokenizer(tok: Any) -> Any:
    """The text tokenizer inside a processor, or the tokenizer itself."""
    return getattr(tok, "tokenizer", tok)


class Kandinsky5T2IPipeline(DiffusionPipeline):
    """Kandinsky 5.0 T2I Lite: `guidance_scale` g gives v_u + g (v_c - v_u) (active for g > 1)."""

    _components = (
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
    )
    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    _callback_tensor_inputs = (
        "latents",
        "prompt_embeds_qwen",
        "prompt_embeds_clip",
        "negative_prompt_embeds_qwen",
        "negative_prompt_embeds_clip",
    )
    _output_types = ("pil", "np", "pt", "latent")

    def __init__(
        self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler
    ) -> None:
        super().__init__(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, scheduler=scheduler)  # fmt: skip
        self.prompt_template = k5.T2I_TEMPLATE
        self.prompt_template_encode_start_idx = k5.T2I_START
        self.vae_scale_factor_spatial = k5.VAE_SCALE
        self.resolutions = list(k5.RESOLUTIONS)
        self.prompt_cache = k5.PromptCache()

    def _dit_device(self) -> torch.device:
        return self._placement.execution_device([self.transformer])

    def _qwen(self, prompts: list[str], max_len: int, image: Any, dev: torch.device):
        return k5.encode_qwen(_tokenizer(self.tokenizer), self.text_encoder, prompts, max_len, dev)

    def _encode(self, prompts: list[str], max_len: int, image: Any = None) -> k5.K5Text:
        self._placement.use(self.text_encoder)
        dev = next(self.text_encoder.parameters()).device
        states, lengths = self._qwen(prompts, max_len, image, dev)
        self._placement.use(self.text_encoder_2)
        dev2 = next(self.text_encoder_2.parameters()).device
        pooled = k5.encode_clip(self.tokenizer_2, self.text_encoder_2, prompts, dev2)
        out = self._dit_device()
        dtype = self.transformer.dtype
        return k5.K5Text(states.to(out, dtype), pooled.to(out, dtype), lengths.to(out))

    def _text(self, prompts: list[str], n: int, max_len: int, images: list | None = None) -> k5.K5Text:
        """Each prompt encoded alone (cached), padded to the longest, each repeated n times."""
        images = images or [None] * len(prompts)
        parts = [
            self.prompt_cache.encode(
                lambda p, im=im: self._encode(p, max_len, im),
                k5.clean_prompt(p),
                max_len,
                "" if im is None else k5.image_digest(im),
            )  # fmt: skip
            for p, im in zip(prompts, images)
        ]
        width = max(t.qwen.shape[1] for t in parts)
        qwen = torch.cat([torch.nn.functional.pad(t.qwen, (0, 0, 0, width - t.qwen.shape[1])) for t in parts])
        text = k5.K5Text(qwen, torch.cat([t.clip for t in parts]), torch.cat([t.lengths for t in parts]))
        return text.repeat(n)

    @torch.no_grad()
    def encode_prompt(
        self, prompt, num_images_per_prompt=1, max_sequence_length=512, device=None, dtype=None
    ):
        """(prompt_embeds_qwen, prompt_embeds_clip, cu_seqlens), as diffusers."""
        prompts = checks.check_prompts("prompt", prompt)
        t = self._text(
            prompts, checks.check_int("num_images_per_prompt", num_images_per_prompt), max_sequence_length
        )
        return t.qwen, t.clip, t.cu_seqlens()

    def _check(self, prompt, negative_prompt, height, width, steps, scale, n, output_type, inputs, max_len):
        if prompt is None:
            raise ValueError("prompt is required (a str or a list of str)")
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        checks.check_size("height", height)
        checks.check_size("width", width)
        checks.check_steps("num_inference_steps", steps, self.scheduler)
        checks.check_number("guidance_scale", scale)
        checks.check_int("num_images_per_prompt", n)
        checks.check_output_type(output_type, self._output_types)
        checks.check_callback_inputs(inputs, self._callback_tensor_inputs)
        checks.check_int("max_sequence_length", max_len, 1, 1024)
        if not self.resolutions:
            raise ValueError(
                "pipe.resolutions is empty: list the (width, height) pairs the model may generate"
            )
        return prompts, negs

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        max_sequence_length: int = 512,
    ) -> KandinskyImagePipelineOutput | tuple:
        """Generate images; sizes not in `self.resolutions` snap to the listed one of nearest aspect ratio."""
        inputs = getattr(callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs)
        prompts, negs = self._check(prompt, negative_prompt, height, width, num_inference_steps, guidance_scale,
                                    num_images_per_prompt, output_type, inputs, max_sequence_length)  # fmt: skip
        if (width, height) not in self.resolutions:
            log.warning("%dx%d is not one of the model's sizes %s: snapping", width, height, self.resolutions)
            width, height = k5.snap_size(width, height, self.resolutions)
        batch = len(prompts) * num_images_per_prompt
        shape = k5.latent_shape(batch, height, width)
        checks.check_latents(latents, shape)
        checks.check_generator(generator, batch)
        device = self._prepare_run()
        guided = guidance_scale > 1.0
        cond = self._text(prompts, num_images_per_prompt, max_sequence_length)
        uncond = (
            self._text(negs or [""] * len(prompts), num_images_per_prompt, max_sequence_length)
            if guided
            else None
        )
        self._placement.use(self.transformer)
        device = self._dit_device()
        dtype = self.transformer.dtype
        x = (
            latents.to(device, dtype)
            if latents is not None
            else k5.noise(batch, height, width, generator, device, dtype)
        )
        self._guidance_scale, self._num_timesteps = guidance_scale, num_inference_steps
        bar = self.progress_bar(total=num_inference_steps)
        for step in k5.denoise(
            self.transformer, self.scheduler, x, cond, uncond, guidance_scale, num_inference_steps
        ):
            if callback_on_step_end is not None:
                _step_callback(self, callback_on_step_end, step, inputs)
            x = step.latents
            bar.update()
        bar.close()
        if output_type == "latent":
            image: Any = x
        else:
            self._placement.use(self.vae)
            image = to_output(k5.decode(self.vae, x.to(self.vae.device)), output_type, raw_pt=False)
        self.maybe_free_model_hooks()
        return KandinskyImagePipelineOutput(image=image) if return_dict else (image,)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps


def _step_callback(pipe: Any, callback: Any, step: k5.K5Step, inputs: Any) -> None:
    """diffusers' callback_on_step_end: it sees the named tensors and may replace any of them for the next
    step (the prompt embeddings too; a negative set to None turns guidance off, as in diffusers)."""
    cond, uncond = step.cond, step.uncond
    named = {"latents": step.latents, "prompt_embeds_qwen": cond.qwen, "prompt_embeds_clip": cond.clip,
             "negative_prompt_embeds_qwen": None if uncond is None else uncond.qwen,
             "negative_prompt_embeds_clip": None if uncond is None else uncond.clip}  # fmt: skip
    out = callback(pipe, step.index, step.timestep, {k: named[k] for k in inputs}) or {}
    step.latents = out.get("latents", step.latents)
    # token counts (the text RoPE positions) stay the prompt's: diffusers computes them once, too
    step.cond = k5.K5Text(out.get("prompt_embeds_qwen", cond.qwen), out.get("prompt_embeds_clip", cond.clip),
                          cond.lengths)  # fmt: skip
    if uncond is not None:
        qwen = out.get("negative_prompt_embeds_qwen", uncond.qwen)
        clip = out.get("negative_prompt_embeds_clip", uncond.clip)
        step.uncond = None if qwen is None else k5.K5Text(qwen, clip, uncond.lengths)


def _tensor_to_pil(x: torch.Tensor) -> list[PIL.Image.Image]:
    """(3, H, W) / (B, 3, H, W) images in [0, 1] (or [-1, 1], as diffusers reads a negative minimum)."""
    x = x.detach().float().cpu()
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"image: tensors must be (3, H, W) or (B, 3, H, W) in [0, 1], got shape {list(x.shape)}"
        )
    x = (x + 1) / 2 if x.min() < 0 else x
    arr = (x.expand(-1, 3, -1, -1).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in arr]


def source_images(image: Any, n_prompts: int) -> list[PIL.Image.Image]:
    """The source images as RGB PIL, one per prompt (a single image serves every prompt)."""
    from ..pipelines import images as imgs

    imgs.check_present(image, "image")
    out: list[PIL.Image.Image] = []
    for item in imgs.as_list(image):
        out += _tensor_to_pil(item) if isinstance(item, torch.Tensor) else [imgs.as_pil(item, "image")]
    if len(out) not in (1, n_prompts):
        raise ValueError(
            f"got {len(out)} source images for {n_prompts} prompts: pass one image, or one per prompt"
        )
    return out * n_prompts if len(out) == 1 else out


def edit_size(height: Any, width: Any, image: PIL.Image.Image) -> tuple[int, int]:
    """(height, width): as given, else the source image's (one side given: the other keeps its aspect)."""
    if height is not None:
        checks.check_size("height", height)
    if width is not None:
        checks.check_size("width", width)
    w, h = image.size
    if height is None and width is None:
        return h, w
    if height is None:
        return max(1, round(width * h / w)), width
    if width is None:
        return height, max(1, round(height * w / h))
    return height, width


class Kandinsky5I2IPipeline(Kandinsky5T2IPipeline):
    """Kandinsky 5.0 I2I Lite: the prompt says how to change `image`; the source image reaches the model
    twice, through Qwen2.5-VL (in the prompt template, at half size) and as the DiT's visual condition
    (its VAE latents and a ones mask, 33 input channels with the noise).

    Beyond diffusers: several prompts and `num_images_per_prompt` > 1 (one source image for all, or one
    per prompt), numpy / tensor / file inputs and any PIL mode, one side of the size given, long prompts
    cut without losing the image's tokens, and edits of a repeated (prompt, image) encoded once."""

    def __init__(
        self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler
    ) -> None:
        super().__init__(transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler)
        self.prompt_template = k5.I2I_TEMPLATE
        self.prompt_template_encode_start_idx = k5.I2I_START

    def _processor(self) -> Any:
        """The Qwen processor: the component itself when it reads images, else kandi's over its tokenizer."""
        from ..pipelines.k5_processor import QwenVLProcessor

        tok = self.tokenizer
        return tok if hasattr(tok, "image_processor") else QwenVLProcessor(_tokenizer(tok))

    def _qwen(self, prompts: list[str], max_len: int, image: Any, dev: torch.device):
        return k5.encode_qwen_edit(self._processor(), self.text_encoder, prompts, image, max_len, dev)

    @torch.no_grad()
    def encode_prompt(self, prompt, image, num_images_per_prompt=1, max_sequence_length=1024, device=None,
                      dtype=None):  # fmt: skip
        """(prompt_embeds_qwen, prompt_embeds_clip, cu_seqlens) of the prompts over `image`, as diffusers."""
        prompts = checks.check_prompts("prompt", prompt)
        n = checks.check_int("num_images_per_prompt", num_images_per_prompt)
        checks.check_int("max_sequence_length", max_sequence_length, 1, 1024)
        t = self._text(prompts, n, max_sequence_length, source_images(image, len(prompts)))
        return t.qwen, t.clip, t.cu_seqlens()

    def _given_text(self, qwen: Any, clip: Any, cu: Any, which: str) -> k5.K5Text | None:
        if qwen is None and clip is None and cu is None:
            return None
        if qwen is None or clip is None or cu is None:
            raise ValueError(f"pass all three of {which}_embeds_qwen, {which}_embeds_clip and {which}_cu_seqlens, "
                             "or none (they come together from encode_prompt)")  # fmt: skip
        dev, dtype = self._dit_device(), self.transformer.dtype
        lengths = torch.as_tensor(cu).diff()
        if qwen.ndim != 3 or clip.ndim != 2 or not qwen.shape[0] == clip.shape[0] == lengths.numel():
            raise ValueError(f"{which}_embeds_qwen (B, L, D), {which}_embeds_clip (B, D2) and {which}_cu_seqlens "
                             "(B + 1,) must agree on the batch B")  # fmt: skip
        return k5.K5Text(qwen.to(dev, dtype), clip.to(dev, dtype), lengths.to(dev))

    def _texts(
        self, prompts, negs, sources, n, guided, max_len, embeds
    ) -> tuple[k5.K5Text, k5.K5Text | None]:
        cond = self._given_text(*embeds[:3], "prompt")
        cond = cond.repeat(n) if cond is not None else self._text(prompts, n, max_len, sources)
        if not guided:
            return cond, None
        uncond = self._given_text(*embeds[3:], "negative_prompt")
        if uncond is not None:
            return cond, uncond.repeat(n)
        return cond, self._text(negs or [""] * len(prompts), n, max_len, sources)

    def _condition(self, sources: list[PIL.Image.Image], height: int, width: int, batch: int, n: int,
                   generator: Any) -> torch.Tensor:  # fmt: skip
        """The visual condition of each output image: the distinct sources encoded once, then repeated."""
        distinct = sources[:1] if all(s is sources[0] for s in sources) else sources
        self._placement.use(self.vae)
        cond = k5.image_condition(self.vae, k5.vae_pixels(distinct, height, width), generator)
        cond = cond.expand(batch, -1, -1, -1, -1) if len(distinct) == 1 else cond.repeat_interleave(n, 0)
        return cond.to(self._dit_device(), self.transformer.dtype)

    def _start(self, latents, shape, sources, height, width, n, generator):
        """(noise, visual condition): latents (B, 1, h, w, 16) replace the noise; (B, 1, h, w, 33) are the
        whole DiT input, as diffusers takes them (the image is then not encoded)."""
        device, dtype = self._dit_device(), self.transformer.dtype
        batch, channels = shape[0], shape[-1]
        if latents is not None and latents.shape[-1] == 2 * channels + 1:
            checks.check_latents(latents, (*shape[:-1], 2 * channels + 1))
            latents = latents.to(device, dtype)
            return latents[..., :channels], latents[..., channels:]
        checks.check_latents(latents, shape)
        x = latents.to(device, dtype) if latents is not None else None
        if x is None:
            x = k5.noise(batch, height, width, generator, device, dtype)
        return x, self._condition(sources, height, width, batch, n, generator)

    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds_qwen: torch.Tensor | None = None,
        prompt_embeds_clip: torch.Tensor | None = None,
        negative_prompt_embeds_qwen: torch.Tensor | None = None,
        negative_prompt_embeds_clip: torch.Tensor | None = None,
        prompt_cu_seqlens: torch.Tensor | None = None,
        negative_prompt_cu_seqlens: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        max_sequence_length: int = 1024,
    ) -> KandinskyImagePipelineOutput | tuple:
        """Edit `image` after the prompt. Without height and width the image's size is used; sizes not in
        `self.resolutions` snap to the listed one of nearest aspect ratio (the image is stretched to it)."""
        inputs = getattr(callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs)
        embeds = (prompt_embeds_qwen, prompt_embeds_clip, prompt_cu_seqlens, negative_prompt_embeds_qwen,
                  negative_prompt_embeds_clip, negative_prompt_cu_seqlens)  # fmt: skip
        if prompt is None and prompt_embeds_qwen is not None:
            prompt = [""] * prompt_embeds_qwen.shape[0]  # only counts the batch: the embeddings are used
        prompts, negs = self._check(prompt, negative_prompt, 1024, 1024, num_inference_steps, guidance_scale,
                                    num_images_per_prompt, output_type, inputs, max_sequence_length)  # fmt: skip
        sources = source_images(image, len(prompts))
        height, width = edit_size(height, width, sources[0])
        if (width, height) not in self.resolutions:
            log.warning("%dx%d is not one of the model's sizes %s: snapping", width, height, self.resolutions)
            width, height = k5.snap_size(width, height, self.resolutions)
        n = num_images_per_prompt
        batch = len(prompts) * n
        checks.check_generator(generator, batch)
        self._prepare_run()
        guided = guidance_scale > 1.0
        cond, uncond = self._texts(prompts, negs, sources, n, guided, max_sequence_length, embeds)
        x, visual = self._start(latents, k5.latent_shape(batch, height, width), sources, height, width, n,
                                generator)  # fmt: skip
        self._placement.use(self.transformer)
        self._guidance_scale, self._num_timesteps = guidance_scale, num_inference_steps
        bar = self.progress_bar(total=num_inference_steps)
        for step in k5.denoise(self.transformer, self.scheduler, x, cond, uncond, guidance_scale,
                               num_inference_steps, image_cond=visual):  # fmt: skip
            if callback_on_step_end is not None:
                self._callback(callback_on_step_end, step, inputs)
            x = step.latents
            bar.update()
        bar.close()
        if output_type == "latent":
            out: Any = x
        else:
            self._placement.use(self.vae)
            out = to_output(k5.decode(self.vae, x.to(self.vae.device)), output_type, raw_pt=False)
        self.maybe_free_model_hooks()
        return KandinskyImagePipelineOutput(image=out) if return_dict else (out,)

    def _callback(self, callback: Any, step: k5.K5Step, inputs: Any) -> None:
        """diffusers' callback sees the whole DiT input (noise and condition, 33 channels) as `latents`."""
        c, full = step.latents.shape[-1], torch.cat([step.latents, step.image], -1)
        seen = k5.K5Step(step.index, step.timestep, full, step.cond, step.uncond)
        _step_callback(self, callback, seen, inputs)
        step.cond, step.uncond, new = seen.cond, seen.uncond, seen.latents
        if new is full:
            return
        if new.shape[-1] == full.shape[-1]:
            step.latents, step.image = new[..., :c], new[..., c:]
        elif new.shape[-1] == c:
            step.latents = new
        else:
            raise ValueError(f"callback_on_step_end returned latents with {new.shape[-1]} channels; expected "
                             f"{full.shape[-1]} (noise and image condition) or {c}")  # fmt: skip
