"""Kandinsky 2.1 pipelines with diffusers' names, arguments, defaults and outputs.

2.1 is 2.2 plus a prompt for the decoder: the UNet also reads the text through M-CLIP (XLM-Roberta), so
the decoders take `prompt` and `negative_prompt` besides the image embeddings. Everything else is the
shared 2.x core (`kandi.pipelines.k22` with `k21=True`). Fixed here: a single negative prompt for several
prompts, guidance <= 1 with several images per prompt, sizes that are not multiples of 64 in img2img,
one PIL image with several images per prompt in the combined pipelines, the pairing of prompts with
their embeddings when several images are made per prompt, and `interpolate` with several images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch

from ..pipelines import images, k22
from . import checks
from .base import DiffusionPipeline
from .kandinsky22 import KandinskyV22CombinedPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline
from .kandinsky22_edit import KandinskyV22InpaintCombinedPipeline, _tile, check_strength, paste_back_edit
from .outputs import ImagePipelineOutput, KandinskyPriorPipelineOutput


class KandinskyPriorPipeline(KandinskyV22PriorPipeline):
    """Text (or images, via `interpolate`) to CLIP image embeddings for the 2.1 decoder.

    The 2.1 and 2.2 priors are the same network kind; this class also loads the 2.2 prior repo, as the
    diffusers docs do. `interpolate` returns matching (n, D) image and negative embeddings for
    `num_images_per_prompt=n` (diffusers' 2.1 version returns one image embedding and n negatives).
    """

    model_cpu_offload_seq = "text_encoder->prior"
    _callback_tensor_inputs = ()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_scale: float = 4.0,
        output_type: str | None = "pt",
        return_dict: bool = True,
    ) -> KandinskyPriorPipelineOutput | tuple:
        return super().__call__(
            prompt, negative_prompt, num_images_per_prompt, num_inference_steps, generator, latents,
            guidance_scale, output_type, return_dict, None, [],
        )  # fmt: skip


class _K21Decoder(KandinskyV22Pipeline):
    """What every 2.1 decoder adds to the 2.2 one: the M-CLIP prompt."""

    _components = ("text_encoder", "tokenizer", "unet", "scheduler", "movq")
    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs = ()
    _output_types = ("pil", "np", "pt")
    _unet_kind = ("text_image", 4)

    def __init__(self, text_encoder, tokenizer, unet, scheduler, movq) -> None:
        DiffusionPipeline.__init__(
            self, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, movq=movq
        )

    def _image_embed_dim(self) -> int:
        return self.unet.config.cross_attention_dim  # 2.1: the context input is the text (encoder_hid_dim)

    def _encode_prompt(
        self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text embeds, hidden states, attention mask) as diffusers' 2.1 decoders return them."""
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        t = self._text(
            prompts, negs, num_images_per_prompt, do_classifier_free_guidance, torch.device(device)
        )
        return t.embeds, t.states, t.mask

    def _text(self, prompts, negs, n, guided, device) -> k22.DecoderText:
        self._placement.use(self.text_encoder)
        return k22.encode_decoder_text(self.tokenizer, self.text_encoder, prompts, negs, n, guided, device)

    def _prompts(self, prompt: Any, negative_prompt: Any, batch: int) -> tuple[list[str], list[str] | None]:
        """Prompts (and negatives) for `batch` image embeddings: one each, or one for all."""
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        if len(prompts) != batch:
            if len(prompts) != 1:
                raise ValueError(
                    f"prompt has {len(prompts)} entries but image_embeds has {batch} rows: the 2.1 decoder "
                    "takes one prompt per image embedding (or one prompt for all)"
                )
            prompts, negs = prompts * batch, (negs * batch if negs is not None else None)
        return prompts, negs

    def _run(self, prompt, negative_prompt, emb, neg, n, size, steps, scale, generator, callback,
             callback_steps, **job) -> torch.Tensor:  # fmt: skip
        """Encode the prompt and run the shared core decoder job in 2.1 mode; the final latents."""
        prompts, negs = self._prompts(prompt, negative_prompt, emb.shape[0])
        text = self._text(prompts, negs, n, scale > 1, self._prepare_run())
        return self._denoise(emb, neg, n, size, steps, scale, generator, None, (), callback, callback_steps,
                             text=text, k21=True, **job)  # fmt: skip

    def _checked(self, image_embeds, negative_image_embeds, height, width, steps, scale, n, output_type,
                 generator, callback, callback_steps):  # fmt: skip
        emb, neg, size, steps, generator = self._check(
            image_embeds, negative_image_embeds, height, width, steps, scale, n, output_type, (), generator
        )
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        return emb, neg, size, steps, generator, checks.check_int("callback_steps", callback_steps)


class KandinskyPipeline(_K21Decoder):
    """Kandinsky 2.1 decoder: prompt + CLIP image embeddings to images."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        emb, neg, size, steps, generator, callback_steps = self._checked(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, generator, callback, callback_steps,
        )  # fmt: skip
        checks.check_latents(latents, self._latent_shape(emb.shape[0] * num_images_per_prompt, size))
        x = self._run(prompt, negative_prompt, emb, neg, num_images_per_prompt, size, steps, guidance_scale,
                      generator, callback, callback_steps, latents=latents)  # fmt: skip
        return self._output(x, output_type, return_dict)


class KandinskyImg2ImgPipeline(_K21Decoder):
    """Kandinsky 2.1 img2img: the image is noised with the original 2.1 noise table (as diffusers)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        strength: float = 0.3,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        emb, neg, size, steps, generator, callback_steps = self._checked(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, generator, callback, callback_steps,
        )  # fmt: skip
        strength = check_strength(strength)
        images.check_present(image, "image")
        pixels = images.preprocess(image, *size)
        x = self._run(prompt, negative_prompt, emb, neg, num_images_per_prompt, size, steps, guidance_scale,
                      generator, callback, callback_steps, strength=strength, image=pixels)  # fmt: skip
        return self._output(x, output_type, return_dict, raw_pt=False)


class KandinskyInpaintPipeline(_K21Decoder):
    """Kandinsky 2.1 inpainting: white (1) in `mask_image` is repainted, black (0) kept."""

    _repo_role = "inpaint_repo"  # the repo a short model name stands for

    _unet_kind = ("text_image", 9)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask_image: Any,
        image_embeds: torch.Tensor | list[torch.Tensor],
        negative_image_embeds: torch.Tensor | list[torch.Tensor],
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        strength: float = 1.0,
        paste_back: bool = False,
        paste_back_feather: int = 0,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments, plus kandi's `strength` and `paste_back` (see KandinskyV22InpaintPipeline)."""
        emb, neg, size, steps, generator, callback_steps = self._checked(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, generator, callback, callback_steps,
        )  # fmt: skip
        strength = check_strength(strength)
        feather = checks.check_int("paste_back_feather", paste_back_feather, 0)
        keep, pixels = images.prepare_inpaint(image, mask_image, *size)
        n, b = num_images_per_prompt, emb.shape[0]
        checks.check_latents(latents, self._latent_shape(b * n, size))
        x = self._run(prompt, negative_prompt, emb, neg, n, size, steps, guidance_scale, generator, callback,
                      callback_steps, strength=strength, image=pixels, keep=keep, latents=latents)  # fmt: skip
        edit = paste_back_edit(pixels, keep, b, n, feather) if paste_back else None
        return self._output(x, output_type, return_dict, edit=edit)


# ---------------------------------------------------------------------------------- combined


class KandinskyCombinedPipeline(KandinskyV22CombinedPipeline):
    """Prior and 2.1 decoder in one call (what AutoPipelineForText2Image gives for kandinsky-2-1).

    `negative_prompt` steers the prior, as in diffusers; with `negative_prompt_to_decoder=True` it also
    becomes the decoder's unconditional text (diffusers always uses "" there).
    """

    _components = ("text_encoder", "tokenizer", "unet", "scheduler", "movq", "prior_prior",
                   "prior_image_encoder", "prior_text_encoder", "prior_tokenizer", "prior_scheduler",
                   "prior_image_processor")  # fmt: skip
    model_cpu_offload_seq = "text_encoder->unet->movq->prior_prior->prior_image_encoder->prior_text_encoder"

    def __init__(self, text_encoder, tokenizer, unet, scheduler, movq, prior_prior, prior_image_encoder,
                 prior_text_encoder, prior_tokenizer, prior_scheduler, prior_image_processor) -> None:  # fmt: skip
        DiffusionPipeline.__init__(
            self, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, movq=movq,
            prior_prior=prior_prior, prior_image_encoder=prior_image_encoder,
            prior_text_encoder=prior_text_encoder, prior_tokenizer=prior_tokenizer,
            prior_scheduler=prior_scheduler, prior_image_processor=prior_image_processor,
        )  # fmt: skip
        self.prior_pipe = KandinskyPriorPipeline(prior_prior, prior_image_encoder, prior_text_encoder,
                                                 prior_tokenizer, prior_scheduler, prior_image_processor)  # fmt: skip
        self.decoder_pipe = self._decoder_class()(text_encoder, tokenizer, unet, scheduler, movq)
        for p in (self.prior_pipe, self.decoder_pipe):
            p._placement = self._placement

    @staticmethod
    def _decoder_class() -> type:
        return KandinskyPipeline

    def _stage_one(self, prompt, negative_prompt, n, prior_steps, generator, latents, prior_scale,
                   to_decoder: bool) -> tuple[torch.Tensor, torch.Tensor, list[str], Any]:  # fmt: skip
        """Prior embeddings, and the prompts (and decoder negatives) paired with them, n per prompt."""
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        emb, neg = self.prior_pipe(prompt, negative_prompt, n, prior_steps, generator, latents, prior_scale,
                                   "pt", False)  # fmt: skip
        per = lambda xs: [x for x in xs for _ in range(n)]  # noqa: E731  (embeddings come n per prompt, in order)
        return emb, neg, per(prompts), (per(negs) if to_decoder and negs is not None else None)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
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
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        negative_prompt_to_decoder: bool = False,
    ) -> ImagePipelineOutput | tuple:
        self._check_decoder_args(height, width, num_inference_steps, guidance_scale, output_type, ())
        emb, neg, prompts, dneg = self._stage_one(prompt, negative_prompt, num_images_per_prompt,
                                                  prior_num_inference_steps, generator, latents,
                                                  prior_guidance_scale, negative_prompt_to_decoder)  # fmt: skip
        return self._decode(
            prompt=prompts, negative_prompt=dneg, image_embeds=emb, negative_image_embeds=neg, width=width,
            height=height, num_inference_steps=num_inference_steps, generator=generator,
            guidance_scale=guidance_scale, output_type=output_type, callback=callback,
            callback_steps=callback_steps, return_dict=return_dict,
        )  # fmt: skip

    def _decode(self, **kwargs: Any) -> ImagePipelineOutput | tuple:
        self._guidance_scale = kwargs["guidance_scale"]
        out = self.decoder_pipe(**kwargs)
        self._num_timesteps = self.decoder_pipe.num_timesteps
        self.maybe_free_model_hooks()
        return out

    @torch.no_grad()
    def mix(
        self,
        images_and_prompts: list[str | PIL.Image.Image | torch.Tensor],
        weights: list[float],
        negative_prior_prompt: str | None = None,
        negative_prompt: str = "",
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt: str = "",
        **decoder_kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Images from a weighted mix of texts and images (prior `interpolate` + decoder). The 2.1 decoder
        also reads `prompt`, "" by default as in the docs' mixing example."""
        self._sync()
        n = decoder_kwargs.pop("num_images_per_prompt", 1)
        mixed = self.prior_pipe.interpolate(
            images_and_prompts, weights, num_images_per_prompt=n, num_inference_steps=prior_num_inference_steps,
            generator=generator, negative_prior_prompt=negative_prior_prompt, negative_prompt=negative_prompt,
            guidance_scale=prior_guidance_scale,
        )  # fmt: skip
        out = self.decoder_pipe(prompt=prompt, image_embeds=mixed.image_embeds,
                                negative_image_embeds=mixed.negative_image_embeds, generator=generator,
                                **decoder_kwargs)  # fmt: skip
        self.maybe_free_model_hooks()
        return out


class KandinskyImg2ImgCombinedPipeline(KandinskyCombinedPipeline):
    """Prompt + image -> images with the 2.1 models (what AutoPipelineForImage2Image gives)."""

    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->prior_prior->text_encoder->unet->movq"

    @staticmethod
    def _decoder_class() -> type:
        return KandinskyImg2ImgPipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        strength: float = 0.3,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        negative_prompt_to_decoder: bool = False,
    ) -> ImagePipelineOutput | tuple:
        self._check_decoder_args(height, width, num_inference_steps, guidance_scale, output_type, ())
        check_strength(strength)
        images.check_present(image, "image")
        emb, neg, prompts, dneg = self._stage_one(prompt, negative_prompt, num_images_per_prompt,
                                                  prior_num_inference_steps, generator, latents,
                                                  prior_guidance_scale, negative_prompt_to_decoder)  # fmt: skip
        return self._decode(
            prompt=prompts, image=_tile(image, emb.shape[0]), negative_prompt=dneg, image_embeds=emb,
            negative_image_embeds=neg, strength=strength, width=width, height=height,
            num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
            output_type=output_type, callback=callback, callback_steps=callback_steps, return_dict=return_dict,
        )  # fmt: skip


class KandinskyInpaintCombinedPipeline(KandinskyCombinedPipeline):
    """Prompt + image + mask -> images with the 2.1 models (what AutoPipelineForInpainting gives)."""

    _repo_role = "inpaint_repo"  # the repo a short model name stands for

    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->prior_prior->text_encoder->unet->movq"

    @staticmethod
    def _decoder_class() -> type:
        return KandinskyInpaintPipeline

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
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        negative_prompt_to_decoder: bool = False,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments; kwargs take the decoder's `strength`, `paste_back`, `paste_back_feather`."""
        self._check_decoder_args(height, width, num_inference_steps, guidance_scale, output_type, ())
        images.check_present(image, "image")
        images.check_present(mask_image, "mask_image")
        unknown = set(kwargs) - {"strength", "paste_back", "paste_back_feather"}
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.__call__ got unexpected keyword arguments {sorted(unknown)}"
            )
        emb, neg, prompts, dneg = self._stage_one(prompt, negative_prompt, num_images_per_prompt,
                                                  prior_num_inference_steps, generator, latents,
                                                  prior_guidance_scale, negative_prompt_to_decoder)  # fmt: skip
        b = emb.shape[0]
        return self._decode(
            prompt=prompts, image=_tile(image, b), mask_image=_tile(mask_image, b), negative_prompt=dneg,
            image_embeds=emb, negative_image_embeds=neg, width=width, height=height,
            num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
            output_type=output_type, callback=callback, callback_steps=callback_steps, return_dict=return_dict,
            **kwargs,
        )  # fmt: skip

    outpaint = KandinskyV22InpaintCombinedPipeline.outpaint  # the same call: canvas, mask, paste-back
