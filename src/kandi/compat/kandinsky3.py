"""Kandinsky 3 pipelines with diffusers' names, arguments, defaults and outputs.

Thin over `kandi.pipelines.k3`. Beyond diffusers: the T5 encoder may stay on another device or dtype
than the UNet (e.g. `pipe.text_encoder.to("cpu", torch.bfloat16)` after `pipe.to("cuda")`), recent
prompts' encodings are cached, a single negative prompt applies to every prompt, each prompt keeps its
own attention mask with several images per prompt (diffusers tiles the masks in the wrong order), and
img2img sizes the UNet cannot take are rounded instead of failing in the UNet.
"""

from __future__ import annotations

from typing import Any

import torch

from ..pipelines import images, k3, k22
from ..pipelines.common import to_output
from . import checks
from .base import DiffusionPipeline
from .kandinsky22 import StepCallback, _Guided, _legacy_callback, drive
from .kandinsky22_edit import check_strength
from .outputs import ImagePipelineOutput


class Kandinsky3Pipeline(_Guided, DiffusionPipeline):
    """Kandinsky 3 text to image. `guidance_scale` g gives `(g + 1) * cond - g * uncond` (active for g > 1)."""

    _components = ("tokenizer", "text_encoder", "unet", "scheduler", "movq")
    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs = (
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "negative_attention_mask",
        "attention_mask",
    )
    _output_types = ("pil", "np", "pt", "latent")

    def __init__(self, tokenizer, text_encoder, unet, scheduler, movq) -> None:
        super().__init__(
            tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler, movq=movq
        )
        self.prompt_cache = k3.PromptCache()

    @property
    def movq_scale_factor(self) -> int:
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    def _unet_device(self) -> torch.device:
        """Where the denoising runs: the UNet's device (the text encoder may be elsewhere)."""
        return self._placement.execution_device([self.unet])

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt,
        do_classifier_free_guidance=True,
        num_images_per_prompt=1,
        device=None,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        _cut_context=False,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
    ):
        """(prompt_embeds, negative_prompt_embeds, attention_mask, negative_attention_mask), as diffusers.

        As diffusers, the embeddings are padded to 128 tokens unless `_cut_context=True` (which keeps the
        longest prompt's tokens + 1, as the generation does).
        """
        device = torch.device(device) if device is not None else self._unet_device()
        t = self._text(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
                       negative_attention_mask, num_images_per_prompt, do_classifier_free_guidance, device,
                       cut=bool(_cut_context))  # fmt: skip
        return t.embeds, t.negative_embeds, t.mask, t.negative_mask

    def _text(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
              negative_attention_mask, n, guided, device, cut: bool = True) -> k3.K3Text:  # fmt: skip
        dtype = self.unet.dtype
        if prompt_embeds is not None:
            t = k3.K3Text(prompt_embeds, attention_mask, negative_prompt_embeds, negative_attention_mask)
            if guided and negative_prompt_embeds is None:
                if negative_prompt is None:
                    t.negative_embeds = torch.zeros_like(prompt_embeds)
                    t.negative_mask = torch.zeros_like(attention_mask)
                else:
                    neg = checks.check_negative(negative_prompt, [""] * prompt_embeds.shape[0])
                    e, m = self.prompt_cache.encode(self.tokenizer, self.text_encoder, neg, self._placement)
                    self._placement.park(self.text_encoder)
                    t.negative_embeds, t.negative_mask = (
                        e[:, : prompt_embeds.shape[1]],
                        m[:, : prompt_embeds.shape[1]],
                    )
            if not guided:
                t.negative_embeds = t.negative_mask = None
            if cut and t.mask is not None:  # padded embeddings from encode_prompt(): cut as diffusers does
                keep = int(t.mask.sum(-1).max()) + 1
                t.embeds, t.mask = t.embeds[:, :keep], t.mask[:, :keep]
                if t.negative_embeds is not None:
                    t.negative_embeds = t.negative_embeds[:, :keep]
                    t.negative_mask = None if t.negative_mask is None else t.negative_mask[:, :keep]
            return k3._expand(t, n, device, dtype)
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        return k3.encode_text(self.tokenizer, self.text_encoder, prompts, negs, n, guided, device, dtype,
                              self.prompt_cache, self._placement, cut=cut)  # fmt: skip

    def prepare_latents(self, shape, dtype, device, generator, latents, scheduler) -> torch.Tensor:
        checks.check_latents(latents, tuple(shape))
        return k22.initial_latents(
            tuple(shape), generator, device, dtype, latents, scheduler.init_noise_sigma
        )

    def _check_common(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
                      negative_attention_mask, steps, scale, n, output_type, inputs) -> int:  # fmt: skip
        """Argument checks shared by both pipelines (before any model work); returns the prompt count."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(
                "pass either prompt or prompt_embeds (with attention_mask), not both and not neither"
            )
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        for e, m, name in ((prompt_embeds, attention_mask, ""), (negative_prompt_embeds, negative_attention_mask,
                                                                   "negative_")):  # fmt: skip
            if e is None:
                continue
            if m is None:
                raise ValueError(f"{name}prompt_embeds needs {name}attention_mask (the T5 mask, 1 = token)")
            if e.ndim != 3 or tuple(e.shape[:2]) != tuple(m.shape):
                raise ValueError(
                    f"{name}prompt_embeds {list(e.shape)} and {name}attention_mask {list(m.shape)} do not match: "
                    "expected (B, L, D) and (B, L)"
                )
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    f"prompt_embeds {list(prompt_embeds.shape)} and negative_prompt_embeds "
                    f"{list(negative_prompt_embeds.shape)} must have the same shape"
                )
        checks.check_steps("num_inference_steps", steps, self.scheduler)
        checks.check_number("guidance_scale", scale)
        checks.check_int("num_images_per_prompt", n)
        checks.check_output_type(output_type, self._output_types)
        checks.check_callback_inputs(inputs, self._callback_tensor_inputs)
        if prompt is not None:
            prompts = checks.check_prompts("prompt", prompt)
            checks.check_negative(negative_prompt, prompts)
            return len(prompts)
        return prompt_embeds.shape[0]

    def _run(self, text: k3.K3Text, x: torch.Tensor, ts: torch.Tensor, scale: float, generator, on_step_end,
             inputs, legacy, legacy_steps) -> torch.Tensor:  # fmt: skip
        self._num_timesteps = len(ts)
        loop = k3.denoise_loop(self.unet, self.scheduler, ts, text, x, scale, generator, self._placement)
        out = drive(self, loop, len(ts), on_step_end, inputs, legacy, legacy_steps, legacy_per_order=True)
        return x if out is None else out

    def _output(self, latents: torch.Tensor, output_type: str, return_dict: bool, raw_pt: bool = True):
        if output_type == "latent":
            image = latents
        else:
            decoded = k22.decode(self.movq, latents, self._placement)
            image = to_output(decoded, output_type, raw_pt=raw_pt)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        height: int | None = 1024,
        width: int | None = 1024,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        callback, callback_steps = _legacy_callback(kwargs, type(self).__name__)
        n = num_images_per_prompt
        b = self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
                               negative_attention_mask, num_inference_steps, guidance_scale, n, output_type,
                               callback_on_step_end_tensor_inputs)  # fmt: skip
        h, w = checks.check_size("height", height), checks.check_size("width", width)
        shape = k3.latent_shape(b * n, h, w)
        checks.check_latents(latents, shape)
        generator = checks.check_generator(generator, b * n)

        self._prepare_run()
        device = self._unet_device()
        self._guidance_scale = guidance_scale
        text = self._text(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
                          negative_attention_mask, n, guidance_scale > 1, device)  # fmt: skip
        ts = k22.schedule(
            self.scheduler, num_inference_steps, device
        )  # first: set_timesteps sets Euler's sigma
        x = k22.initial_latents(
            shape, generator, device, self.unet.dtype, latents, self.scheduler.init_noise_sigma
        )
        x = self._run(text, x, ts, guidance_scale, generator, callback_on_step_end, callback_on_step_end_tensor_inputs,
                      callback, callback_steps)  # fmt: skip
        return self._output(x, output_type, return_dict)


class Kandinsky3Img2ImgPipeline(Kandinsky3Pipeline):
    """Kandinsky 3 img2img: works at the input image's own size (rounded to what the UNet takes)."""

    _output_types = ("pil", "np", "pt", "latent")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.3,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        callback, callback_steps = _legacy_callback(kwargs, type(self).__name__)
        n = num_images_per_prompt
        b = self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
                               negative_attention_mask, num_inference_steps, guidance_scale, n, output_type,
                               callback_on_step_end_tensor_inputs)  # fmt: skip
        strength = check_strength(strength)
        images.check_present(image, "image")
        generator = checks.check_generator(generator, b * n)
        levels = len(self.unet.config.block_out_channels) - 1
        size = images.native_size(image, self.movq_scale_factor * 2**levels)
        pixels = images.preprocess(image, *size)

        self._prepare_run()
        device = self._unet_device()
        self._guidance_scale = guidance_scale
        text = self._text(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask,
                          negative_attention_mask, n, guidance_scale > 1, device)  # fmt: skip
        x0 = k3.image_latents(self.movq, pixels.to(device), b, n, self.unet.dtype, self._placement)
        ts = k22.schedule(self.scheduler, num_inference_steps, device, strength)
        x = k22.noised_latents(self.scheduler, x0, ts, generator)[0] if len(ts) else x0
        x = self._run(text, x, ts, guidance_scale, generator, callback_on_step_end, callback_on_step_end_tensor_inputs,
                      callback, callback_steps)  # fmt: skip
        return self._output(x, output_type, return_dict, raw_pt=False)
