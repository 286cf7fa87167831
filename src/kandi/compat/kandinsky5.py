"""Kandinsky 5.0 Image Lite text to image with diffusers' name, arguments, defaults and output.

Thin over `kandi.pipelines.k5`. The Qwen2.5-VL `tokenizer` component may be a plain tokenizer
(AutoTokenizer) or a Qwen2VLProcessor: text to image needs the tokenizer only, so torchvision is not
required. Beyond diffusers: every argument is checked before model work, one negative prompt applies to
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

    def _encode(self, prompts: list[str], max_len: int) -> k5.K5Text:
        self._placement.use(self.text_encoder)
        dev = next(self.text_encoder.parameters()).device
        states, lengths = k5.encode_qwen(_tokenizer(self.tokenizer), self.text_encoder, prompts, max_len, dev)
        self._placement.use(self.text_encoder_2)
        dev2 = next(self.text_encoder_2.parameters()).device
        pooled = k5.encode_clip(self.tokenizer_2, self.text_encoder_2, prompts, dev2)
        out = self._dit_device()
        dtype = self.transformer.dtype
        return k5.K5Text(states.to(out, dtype), pooled.to(out, dtype), lengths.to(out))

    def _text(self, prompts: list[str], n: int, max_len: int) -> k5.K5Text:
        parts = [
            self.prompt_cache.encode(lambda p: self._encode(p, max_len), k5.clean_prompt(p), max_len)
            for p in prompts
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
