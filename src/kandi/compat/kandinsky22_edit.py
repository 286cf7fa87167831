"""Kandinsky 2.2 image editing with diffusers' names and arguments: img2img, inpainting, ControlNet, emb2emb.

Beyond diffusers: file paths and any image mode as inputs, hints and masks of another size resized,
`strength` for inpainting, and `paste_back` to keep the original pixels outside the mask exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch

from ..pipelines import images, k22
from . import checks
from .kandinsky22 import (
    KandinskyV22CombinedPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    StepCallback,
    _legacy_callback,
    drive,
)
from .outputs import ImagePipelineOutput, KandinskyPriorPipelineOutput


def check_strength(value: Any) -> float:
    s = checks.check_number("strength", value)
    if not 0.0 <= s <= 1.0:
        raise ValueError(
            f"strength must be between 0 and 1 (the share of the steps that are run), got {value}"
        )
    return s


def paste_back_edit(
    pixels: torch.Tensor, keep: torch.Tensor, b: int, n: int, feather: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoded images with the original pixels put back outside the mask (b prompts x n images)."""

    def edit(decoded: torch.Tensor) -> torch.Tensor:
        rows = lambda t, name: images.match_batch(t.to(decoded), b, name).repeat_interleave(n, dim=0)  # noqa: E731
        return images.paste_back(rows(pixels, "image"), decoded, rows(keep, "mask"), feather)

    return edit


class KandinskyV22Img2ImgPipeline(KandinskyV22Pipeline):
    """Kandinsky 2.2 decoder starting from an image noised to `strength`."""

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image: Any,
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        callback, callback_steps = _legacy_callback(kwargs, type(self).__name__)
        emb, neg, size, steps, generator = self._check(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, generator,
        )  # fmt: skip
        strength = check_strength(strength)
        pixels = images.preprocess(image, *size)
        x = self._denoise(emb, neg, num_images_per_prompt, size, steps, guidance_scale, generator,
                          callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps,
                          strength=strength, image=pixels)  # fmt: skip
        return self._output(x, output_type, return_dict, raw_pt=False)


class KandinskyV22InpaintPipeline(KandinskyV22Pipeline):
    """Kandinsky 2.2 inpainting: white (1) in `mask_image` is repainted, black (0) kept."""

    _repo_role = "inpaint_repo"  # the repo a short model name stands for

    _unet_kind = ("image", 9)
    _callback_tensor_inputs = (
        "latents",
        "image_embeds",
        "negative_image_embeds",
        "masked_image",
        "mask_image",
    )

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image: Any,
        mask_image: Any,
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        strength: float = 1.0,
        paste_back: bool = False,
        paste_back_feather: int = 0,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments, plus kandi's `strength` (< 1 starts from the noised image instead of pure
        noise) and `paste_back` (original pixels outside the mask, blended over `paste_back_feather`
        pixels inside its edge), which keeps repeated passes from drifting in colour."""
        callback, callback_steps = _legacy_callback(kwargs, type(self).__name__)
        emb, neg, size, steps, generator = self._check(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, generator,
        )  # fmt: skip
        strength = check_strength(strength)
        feather = checks.check_int("paste_back_feather", paste_back_feather, 0)
        keep, pixels = images.prepare_inpaint(image, mask_image, *size)
        n, b = num_images_per_prompt, emb.shape[0]
        checks.check_latents(latents, self._latent_shape(b * n, size))
        x = self._denoise(emb, neg, n, size, steps, guidance_scale, generator, callback_on_step_end,
                          callback_on_step_end_tensor_inputs, callback, callback_steps, strength=strength,
                          image=pixels, keep=keep, latents=latents)  # fmt: skip
        edit = paste_back_edit(pixels, keep, b, n, feather) if paste_back else None
        return self._output(x, output_type, return_dict, edit=edit)


class KandinskyV22ControlnetPipeline(KandinskyV22Pipeline):
    """Kandinsky 2.2 with a ControlNet hint (e.g. a depth map) steering the layout."""

    _repo_role = "controlnet_repo"  # the repo a short model name stands for

    _unet_kind = ("image_hint", 8)
    _output_types = ("pil", "np", "pt")
    _callback_tensor_inputs = ()

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        hint: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        emb, neg, size, steps, generator = self._check(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, (), generator,
        )  # fmt: skip
        callback, callback_steps = _legacy_callback(
            {"callback": callback, "callback_steps": callback_steps}, ""
        )
        hint_t = images.prepare_hint(hint, *size, emb.shape[0])
        checks.check_latents(latents, self._latent_shape(emb.shape[0] * num_images_per_prompt, size))
        x = self._denoise(emb, neg, num_images_per_prompt, size, steps, guidance_scale, generator, None, (),
                          callback, callback_steps, hint=hint_t, latents=latents)  # fmt: skip
        return self._output(x, output_type, return_dict)


class KandinskyV22ControlnetImg2ImgPipeline(KandinskyV22Pipeline):
    """ControlNet hint plus an init image noised to `strength`."""

    _repo_role = "controlnet_repo"  # the repo a short model name stands for

    _unet_kind = ("image_hint", 8)
    _output_types = ("pil", "np", "pt")
    _callback_tensor_inputs = ()

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
        image: Any,
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        hint: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        emb, neg, size, steps, generator = self._check(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, (), generator,
        )  # fmt: skip
        callback, callback_steps = _legacy_callback(
            {"callback": callback, "callback_steps": callback_steps}, ""
        )
        strength = check_strength(strength)
        pixels = images.preprocess(image, *size)
        hint_t = images.prepare_hint(hint, *size, emb.shape[0])
        x = self._denoise(emb, neg, num_images_per_prompt, size, steps, guidance_scale, generator, None, (),
                          callback, callback_steps, strength=strength, image=pixels, hint=hint_t)  # fmt: skip
        return self._output(x, output_type, return_dict, raw_pt=False)


class KandinskyV22PriorEmb2EmbPipeline(KandinskyV22PriorPipeline):
    """Prior that starts from an image's CLIP embedding noised to `strength` and steers it by text."""

    _callback_tensor_inputs = ()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        strength: float = 0.3,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float = 4.0,
        output_type: str | None = "pt",
        return_dict: bool = True,
    ) -> KandinskyPriorPipelineOutput | tuple:
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        n = checks.check_int("num_images_per_prompt", num_images_per_prompt)
        steps = checks.check_steps("num_inference_steps", num_inference_steps, self.scheduler)
        g = checks.check_number("guidance_scale", guidance_scale)
        strength = check_strength(strength)
        checks.check_output_type(output_type, ("pt", "np"))
        images.check_present(image, "image")
        texts, uncond = (prompts + negs, negs * 2) if negs is not None else (prompts, None)
        batch = len(texts) * n
        generator = checks.check_generator(generator, batch)

        device = self._prepare_run()
        self._guidance_scale = g
        self._placement.use(self.text_encoder)
        cond = k22.encode_prior_text(self.tokenizer, self.text_encoder, texts, uncond, n, g > 1, device)
        start = self._start_embeds(image, n, batch, device).to(cond.prompt_embeds.dtype)
        ts = k22.schedule(self.scheduler, steps, device, strength)
        x = k22.noised_latents(self.scheduler, start, ts, generator)[0] if len(ts) else start
        loop = k22.prior_loop(self.prior, self.scheduler, ts, cond, x, g, generator, self._placement)
        embeds = drive(self, loop, len(ts))
        self._num_timesteps = len(ts)
        if embeds is None:  # no step at this strength: the image's own embedding
            embeds = x
        return self._outputs(embeds, negs is None, output_type, return_dict)

    def _start_embeds(self, image: Any, n: int, batch: int, device: torch.device) -> torch.Tensor:
        """CLIP image embeddings to start from, tiled to the prior batch (texts, then negatives)."""
        items = images.as_list(image)
        if all(isinstance(i, torch.Tensor) for i in items) and items[0].ndim in (1, 2):
            emb = torch.cat([i if i.ndim == 2 else i[None] for i in items]).to(device)
            if emb.shape[1] != self.prior.config.embedding_dim:
                raise ValueError(
                    f"image embeddings have width {emb.shape[1]}, the prior takes {self.prior.config.embedding_dim}"
                )
        else:
            emb = self._encode_images(items, device)
        emb = emb.repeat_interleave(n, dim=0)
        if batch % emb.shape[0]:
            raise ValueError(
                f"cannot spread {emb.shape[0] // n} image(s) over {batch // n} prompts: pass one image, or one per prompt"
            )
        return torch.cat([emb] * (batch // emb.shape[0]))

    def _encode_images(self, items: list, device: torch.device) -> torch.Tensor:
        enc = self.image_encoder
        self._placement.use(enc)
        if all(isinstance(i, torch.Tensor) for i in items):
            pixels = torch.cat([i if i.ndim == 4 else i[None] for i in items])
        else:
            pils = [images.as_pil(i, "image") for i in items]
            pixels = self.image_processor(pils, return_tensors="pt").pixel_values
        return enc(pixels.to(dtype=enc.dtype, device=device))["image_embeds"]

    def _outputs(self, embeds: torch.Tensor, zero_negative: bool, output_type: str, return_dict: bool):
        if zero_negative:
            negative = self.get_zero_embed(embeds.shape[0], device=embeds.device)
        else:
            embeds, negative = embeds.chunk(2)
        self.maybe_free_model_hooks()
        if output_type == "np":
            embeds, negative = embeds.cpu().numpy(), negative.cpu().numpy()
        if not return_dict:
            return (embeds, negative)
        return KandinskyPriorPipelineOutput(image_embeds=embeds, negative_image_embeds=negative)

    @torch.no_grad()
    def interpolate(
        self, images_and_prompts: list, weights: list[float], **kwargs: Any
    ) -> KandinskyPriorPipelineOutput:
        """As `KandinskyV22PriorPipeline.interpolate`: text items run the text prior, and the negative is a
        real negative embedding (diffusers' emb2emb crashes on text items and returns noise as negative)."""
        text_prior = KandinskyV22PriorPipeline(**self.components)
        text_prior._placement, text_prior._zero_cache = self._placement, self._zero_cache
        text_prior.set_progress_bar_config(**self._progress_config)
        return text_prior.interpolate(images_and_prompts, weights, **kwargs)


# ---------------------------------------------------------------------------------- combined


def _tile(items: Any, count: int) -> Any:
    """Pair the i-th image with the i-th prompt when the prior made several embeddings per prompt."""
    if isinstance(items, PIL.Image.Image) or not isinstance(items, list | tuple):
        return items
    if len(items) < count and count % len(items) == 0:
        k = count // len(items)
        return [x for x in items for _ in range(k)]
    return list(items)


class KandinskyV22Img2ImgCombinedPipeline(KandinskyV22CombinedPipeline):
    """Prompt + image -> images (what AutoPipelineForImage2Image gives for 2.2)."""

    @staticmethod
    def _decoder_class() -> type:
        return KandinskyV22Img2ImgPipeline

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        prior_callback_on_step_end: StepCallback = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ) -> ImagePipelineOutput | tuple:
        self._check_decoder_args(height, width, num_inference_steps, guidance_scale, output_type,
                                 callback_on_step_end_tensor_inputs)  # fmt: skip
        check_strength(strength)
        images.check_present(image, "image")
        embeds, negative = self._prior_embeds(prompt, negative_prompt, num_images_per_prompt,
                                              prior_num_inference_steps, generator, latents, prior_guidance_scale,
                                              prior_callback_on_step_end, prior_callback_on_step_end_tensor_inputs)  # fmt: skip
        self._guidance_scale = guidance_scale
        out = self.decoder_pipe(
            image_embeds=embeds, image=_tile(image, embeds.shape[0]), negative_image_embeds=negative, width=width,
            height=height, strength=strength, num_inference_steps=num_inference_steps, generator=generator,
            guidance_scale=guidance_scale, output_type=output_type, callback=callback, callback_steps=callback_steps,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        self._num_timesteps = self.decoder_pipe.num_timesteps
        self.maybe_free_model_hooks()
        return out


class KandinskyV22InpaintCombinedPipeline(KandinskyV22CombinedPipeline):
    """Prompt + image + mask -> images (what AutoPipelineForInpainting gives for 2.2)."""

    _repo_role = "inpaint_repo"  # the repo a short model name stands for

    @staticmethod
    def _decoder_class() -> type:
        return KandinskyV22InpaintPipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask_image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        prior_callback_on_step_end: StepCallback = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments; kwargs take the decoder's `strength`, `paste_back`, `paste_back_feather`,
        the legacy `callback` / `callback_steps`, and `prior_callback(i, t, latents)` /
        `prior_callback_steps` (which diffusers accepts but crashes on)."""
        prior_cb = _legacy_as_step_end(
            kwargs.pop("prior_callback", None), kwargs.pop("prior_callback_steps", 1)
        )
        if prior_cb is not None and prior_callback_on_step_end is not None:
            raise ValueError("pass prior_callback or prior_callback_on_step_end, not both")
        self._check_decoder_args(height, width, num_inference_steps, guidance_scale, output_type,
                                 callback_on_step_end_tensor_inputs)  # fmt: skip
        images.check_present(image, "image")
        images.check_present(mask_image, "mask_image")
        embeds, negative = self._prior_embeds(prompt, negative_prompt, num_images_per_prompt,
                                              prior_num_inference_steps, generator, latents, prior_guidance_scale,
                                              prior_cb or prior_callback_on_step_end,
                                              prior_callback_on_step_end_tensor_inputs)  # fmt: skip
        self._guidance_scale = guidance_scale
        b = embeds.shape[0]
        out = self.decoder_pipe(
            image_embeds=embeds, image=_tile(image, b), mask_image=_tile(mask_image, b), negative_image_embeds=negative,
            width=width, height=height, num_inference_steps=num_inference_steps, generator=generator,
            guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **kwargs,
        )  # fmt: skip
        self._num_timesteps = self.decoder_pipe.num_timesteps
        self.maybe_free_model_hooks()
        return out

    @torch.no_grad()
    def outpaint(
        self,
        prompt: str | list[str],
        image: Any,
        left: int = 0,
        top: int = 0,
        right: int = 0,
        bottom: int = 0,
        output_type: str = "pil",
        paste_back_feather: int = 8,
        **kwargs: Any,
    ) -> ImagePipelineOutput:
        """Extend `image` by the given pixels on each side: the new margins are painted from the prompt
        and the original pixels are kept exactly (kandi's addition; diffusers has no outpainting call).

        kwargs are this pipeline's `__call__` arguments (negative_prompt, steps, generator, ...); the
        output is the canvas of (left + width + right) x (top + height + bottom) pixels.
        """
        checks.check_output_type(output_type, ("pil", "np"))
        original = images.as_pil(image, "image")
        w, h = original.size
        pads = images.outpaint_margins(w, h, left, top, right, bottom)
        canvas, mask = images.outpaint_canvas(original, *pads)
        out = self(prompt, image=canvas, mask_image=mask, height=canvas.height, width=canvas.width,
                   paste_back=True, paste_back_feather=paste_back_feather, output_type="pil", **kwargs).images  # fmt: skip
        box = (0, 0, left + w + right, top + h + bottom)
        result = [im.crop(box) for im in out]
        if output_type == "np":
            import numpy as np

            result = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in result])
        return ImagePipelineOutput(images=result)


def _legacy_as_step_end(callback: Callable | None, steps: int) -> StepCallback:
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"prior_callback must be callable, got {type(callback).__name__}")
    steps = checks.check_int("prior_callback_steps", steps)

    def on_step_end(pipe, i, t, kw):
        if i % steps == 0:
            callback(i, t, kw["latents"])
        return {}

    return on_step_end
