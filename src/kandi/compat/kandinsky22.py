"""Kandinsky 2.2 text-to-image pipelines with diffusers' names, arguments, defaults and outputs.

Thin: each `__call__` checks its arguments (before any model work) and runs the loops of
`kandi.pipelines.k22`. Where diffusers crashes (guidance <= 1 with several images per prompt, a single
negative prompt for a batch of prompts) kandi does what the user meant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import PIL.Image
import torch

from ..pipelines import k22
from ..pipelines.common import downscale_hw, to_output
from . import checks
from .base import DiffusionPipeline
from .outputs import ImagePipelineOutput, KandinskyPriorPipelineOutput

StepCallback = Callable[..., dict[str, Any]] | None


def run_with_callbacks(
    pipe: DiffusionPipeline,
    loop: Iterator[Any],
    total: int,
    on_step_end: StepCallback,
    inputs: list[str],
    legacy: Callable | None = None,
    legacy_steps: int = 1,
    legacy_per_order: bool = False,
) -> None:
    """Drive a denoising loop with a progress bar and diffusers-style step callbacks.

    The legacy `callback(step, t, latents)` gets diffusers' step number `i // scheduler.order` (a
    2nd-order sampler has two timesteps per step); with `legacy_per_order` it runs only where diffusers'
    Kandinsky 3 loop updates its bar: every `order`-th timestep and the last.
    """
    order = getattr(getattr(pipe, "scheduler", None), "order", 1) or 1
    with pipe.progress_bar(total=total) as bar:
        for s in loop:
            if on_step_end is not None:
                out = on_step_end(pipe, s.i, s.t, {k: getattr(s, k) for k in inputs}) or {}
                for k, v in out.items():
                    if hasattr(s, k) and k not in ("i", "t", "num_steps"):
                        setattr(s, k, v)
            due = not legacy_per_order or s.i == total - 1 or (s.i + 1) % order == 0
            if legacy is not None and due and s.i % legacy_steps == 0:
                legacy(s.i // order, s.t, s.latents)
            bar.update()


class _Guided:
    """diffusers' read-only properties about the last call."""

    _guidance_scale: float = 1.0
    _num_timesteps: int = 0

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps


class KandinskyV22PriorPipeline(_Guided, DiffusionPipeline):
    """Text (or images) to CLIP image embeddings for the Kandinsky 2.2 decoder."""

    _repo_role = "prior_repo"  # the repo a short model name stands for

    _components = ("prior", "image_encoder", "text_encoder", "tokenizer", "scheduler", "image_processor")
    model_cpu_offload_seq = "text_encoder->image_encoder->prior"
    _exclude_from_cpu_offload = ("prior",)
    _callback_tensor_inputs = ("latents", "prompt_embeds", "text_encoder_hidden_states", "text_mask")

    def __init__(self, prior, image_encoder, text_encoder, tokenizer, scheduler, image_processor) -> None:
        super().__init__(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler=scheduler, image_processor=image_processor)  # fmt: skip
        self._zero_cache: dict[tuple, torch.Tensor] = {}

    def get_zero_embed(self, batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """Embedding of the all-zero image, the default negative; computed once per encoder, device and dtype."""
        device = torch.device(device) if device is not None else self._execution_device
        enc = self.image_encoder
        key = (id(enc), str(device), enc.dtype)
        if key not in self._zero_cache:
            self._placement.use(enc)
            self._zero_cache = {key: k22.zero_image_embed(enc, device)}
        return self._zero_cache[key].repeat(batch_size, 1)

    def _encode_prompt(
        self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None
    ):
        prompts = checks.check_prompts("prompt", prompt)
        negs = None if negative_prompt is None else checks.check_prompts("negative_prompt", negative_prompt)
        self._placement.use(self.text_encoder)
        c = k22.encode_prior_text(self.tokenizer, self.text_encoder, prompts, negs, num_images_per_prompt,
                                  do_classifier_free_guidance, torch.device(device))  # fmt: skip
        return c.prompt_embeds, c.text_encoder_hidden_states, c.text_mask

    def prepare_latents(self, shape, dtype, device, generator, latents, scheduler) -> torch.Tensor:
        checks.check_latents(latents, tuple(shape))
        return k22.initial_latents(
            tuple(shape), generator, device, dtype, latents, scheduler.init_noise_sigma
        )

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
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> KandinskyPriorPipelineOutput | tuple:
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative_prompt, prompts)
        n = checks.check_int("num_images_per_prompt", num_images_per_prompt)
        steps = checks.check_steps("num_inference_steps", num_inference_steps, self.scheduler)
        g = checks.check_number("guidance_scale", guidance_scale)
        checks.check_output_type(output_type, ("pt", "np"))
        inputs = checks.check_callback_inputs(
            callback_on_step_end_tensor_inputs, self._callback_tensor_inputs
        )
        # a negative prompt is also diffused, as an extra sample whose embedding becomes the negative one
        texts, uncond = (prompts + negs, negs * 2) if negs is not None else (prompts, None)
        batch = len(texts) * n
        generator = checks.check_generator(generator, batch)
        shape = (batch, self.prior.config.embedding_dim)
        checks.check_latents(latents, shape)

        device = self._prepare_run()
        self._guidance_scale = g
        self._placement.use(self.text_encoder)
        cond = k22.encode_prior_text(self.tokenizer, self.text_encoder, texts, uncond, n, g > 1, device)
        ts = k22.schedule(
            self.scheduler, steps, device
        )  # before init_noise_sigma: set_timesteps may change it
        x = k22.initial_latents(
            shape, generator, device, cond.prompt_embeds.dtype, latents, self.scheduler.init_noise_sigma
        )
        loop = k22.prior_loop(self.prior, self.scheduler, ts, cond, x, g, generator, self._placement)
        embeds = drive(self, loop, len(ts), callback_on_step_end, inputs)
        self._num_timesteps = len(ts)
        if negs is None:
            negative = self.get_zero_embed(embeds.shape[0], device=embeds.device)
        else:
            embeds, negative = embeds.chunk(2)
        self.maybe_free_model_hooks()
        if output_type == "np":
            embeds, negative = embeds.cpu().numpy(), negative.cpu().numpy()
        if not return_dict:
            return (embeds, negative)
        return KandinskyPriorPipelineOutput(image_embeds=embeds, negative_image_embeds=negative)

    def _image_embed(
        self, image: PIL.Image.Image | torch.Tensor, n: int, device: torch.device
    ) -> torch.Tensor:
        enc = self.image_encoder
        self._placement.use(enc)
        if isinstance(image, PIL.Image.Image):
            image = self.image_processor(image, return_tensors="pt").pixel_values[0].unsqueeze(0)
        image = image.to(dtype=enc.dtype, device=device)
        return enc(image)["image_embeds"].repeat(n, 1)

    @torch.no_grad()
    def interpolate(
        self,
        images_and_prompts: list[str | PIL.Image.Image | torch.Tensor],
        weights: list[float],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        negative_prior_prompt: str | None = None,
        negative_prompt: str = "",
        guidance_scale: float = 4.0,
        device: torch.device | str | None = None,
    ) -> KandinskyPriorPipelineOutput:
        """Weighted sum of the embeddings of texts and images (weights are used as given, not normalised)."""
        items, weights = _check_mix(images_and_prompts, weights)
        n = checks.check_int("num_images_per_prompt", num_images_per_prompt)
        device = torch.device(device) if device is not None else self._execution_device
        common = dict(num_inference_steps=num_inference_steps, num_images_per_prompt=n, generator=generator,
                      latents=latents, negative_prompt=negative_prior_prompt, guidance_scale=guidance_scale)  # fmt: skip
        total = None
        for item, w in zip(items, weights):
            emb = (
                self(item, **common).image_embeds
                if isinstance(item, str)
                else self._image_embed(item, n, device)
            )
            total = emb * w if total is None else total + emb * w
        out = self(negative_prompt, **common)
        negative = out.negative_image_embeds if negative_prompt == "" else out.image_embeds
        return KandinskyPriorPipelineOutput(image_embeds=total, negative_image_embeds=negative)


def _check_mix(items: Any, weights: Any) -> tuple[list, list[float]]:
    if not isinstance(items, list | tuple) or not items:
        raise TypeError("images_and_prompts must be a non-empty list of prompts, PIL images or image tensors")
    if not isinstance(weights, list | tuple) or len(weights) != len(items):
        n = len(weights) if isinstance(weights, list | tuple) else type(weights).__name__
        raise ValueError(
            f"images_and_prompts has {len(items)} items but weights has {n}: pass one weight per item"
        )
    for i, item in enumerate(items):
        if not isinstance(item, str | PIL.Image.Image | torch.Tensor):
            raise TypeError(
                f"images_and_prompts[{i}] is a {type(item).__name__}; items must be str, PIL.Image.Image or torch.Tensor"
            )
    return list(items), [checks.check_number(f"weights[{i}]", w) for i, w in enumerate(weights)]


def drive(
    pipe: DiffusionPipeline,
    loop: Iterator[Any],
    total: int,
    on_step_end: StepCallback = None,
    inputs: list[str] | tuple[str, ...] = (),
    legacy: Callable | None = None,
    legacy_steps: int = 1,
    legacy_per_order: bool = False,
) -> Any:
    """Run a core loop to the end with progress and callbacks; what the loop returns (final latents)."""
    result = None

    def run() -> Iterator[Any]:
        nonlocal result
        result = yield from loop

    run_with_callbacks(
        pipe, run(), total, on_step_end, list(inputs or []), legacy, legacy_steps, legacy_per_order
    )
    return result


class KandinskyV22Pipeline(_Guided, DiffusionPipeline):
    """Kandinsky 2.2 decoder: CLIP image embeddings to images."""

    _components = ("unet", "scheduler", "movq")
    model_cpu_offload_seq = "unet->movq"
    _callback_tensor_inputs = ("latents", "image_embeds", "negative_image_embeds")
    _output_types = ("pil", "np", "pt", "latent")
    _unet_kind = ("image", 4)  # addition_embed_type, in_channels

    def __init__(self, unet, scheduler, movq) -> None:
        super().__init__(unet=unet, scheduler=scheduler, movq=movq)

    @property
    def movq_scale_factor(self) -> int:
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    def prepare_latents(self, shape, dtype, device, generator, latents, scheduler) -> torch.Tensor:
        checks.check_latents(latents, tuple(shape))
        return k22.initial_latents(
            tuple(shape), generator, device, dtype, latents, scheduler.init_noise_sigma
        )

    def _check_unet(self) -> None:
        kind, channels = self._unet_kind
        cfg = self.unet.config
        if cfg.addition_embed_type != kind or cfg.in_channels != channels:
            raise ValueError(
                f"{type(self).__name__} needs a UNet with {channels} input channels and {kind!r} conditioning; "
                f"this one takes {cfg.in_channels} channels with {cfg.addition_embed_type!r} conditioning "
                "(wrong checkpoint for this pipeline?)"
            )

    def _image_embed_dim(self) -> int:
        return self.unet.config.encoder_hid_dim  # 2.2: the image embedding is the UNet's context input

    def _check(self, image_embeds, negative_image_embeds, height, width, steps, scale, n, output_type, inputs,
               generator):  # fmt: skip
        """Checks shared by every decoder; returns (embeds, negatives, output size, steps, generator)."""
        self._check_unet()
        emb, neg = _check_embed_pair(image_embeds, negative_image_embeds, self._image_embed_dim())
        h, w = checks.check_size("height", height), checks.check_size("width", width)
        steps = checks.check_steps("num_inference_steps", steps, self.scheduler)
        checks.check_number("guidance_scale", scale)
        n = checks.check_int("num_images_per_prompt", n)
        checks.check_output_type(output_type, self._output_types)
        checks.check_callback_inputs(inputs, self._callback_tensor_inputs)
        generator = checks.check_generator(generator, emb.shape[0] * n)
        # the UNet halves the latents three times: sizes become multiples of 64 px, rounded up as diffusers
        sf = self.movq_scale_factor
        size = tuple(v * sf for v in downscale_hw(h, w, sf))
        return emb, neg, size, steps, generator

    def _latent_shape(self, batch: int, size: tuple[int, int]) -> tuple[int, ...]:
        sf = self.movq_scale_factor
        return (batch, self.movq.config.latent_channels, size[0] // sf, size[1] // sf)

    def _denoise(self, emb, neg, n, size, steps, scale, generator, on_step_end=None, inputs=(), legacy=None,
                 legacy_steps=1, strength=1.0, **job) -> torch.Tensor:  # fmt: skip
        """Run the core decoder job with progress and callbacks; the final latents."""
        device = self._prepare_run()
        self._guidance_scale = scale
        self._num_timesteps = k22.steps_run(steps, strength)
        loop = k22.decoder_job(self.unet, self.scheduler, self.movq, emb, neg, n, size, steps, scale, generator,
                               device, self._placement, strength=strength, **job)  # fmt: skip
        return drive(self, loop, self._num_timesteps, on_step_end, inputs, legacy, legacy_steps)

    def _output(
        self, latents: torch.Tensor, output_type: str, return_dict: bool, raw_pt: bool = True, edit=None
    ):
        """Decode (unless "latent") and convert; `edit` may change the decoded images first."""
        if output_type == "latent":
            image = latents
        else:
            decoded = k22.decode(self.movq, latents, self._placement)
            image = to_output(edit(decoded) if edit else decoded, output_type, raw_pt=raw_pt)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor | list[torch.Tensor],
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
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        callback, callback_steps = _legacy_callback(kwargs, type(self).__name__)
        emb, neg, size, steps, generator = self._check(
            image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, generator,
        )  # fmt: skip
        checks.check_latents(latents, self._latent_shape(emb.shape[0] * num_images_per_prompt, size))
        x = self._denoise(emb, neg, num_images_per_prompt, size, steps, guidance_scale, generator,
                          callback_on_step_end, callback_on_step_end_tensor_inputs, callback, callback_steps,
                          latents=latents)  # fmt: skip
        return self._output(x, output_type, return_dict)


def _legacy_callback(kwargs: dict[str, Any], name: str) -> tuple[Callable | None, int]:
    callback = kwargs.pop("callback", None)
    steps = kwargs.pop("callback_steps", None) or 1
    if "prompt" in kwargs:
        raise TypeError(
            f"{name} takes no prompt: it decodes image embeddings. Get them from KandinskyV22PriorPipeline "
            "(image_embeds, negative_image_embeds), or use KandinskyV22CombinedPipeline / AutoPipelineForText2Image"
        )
    if kwargs:
        raise TypeError(f"{name}.__call__ got unexpected keyword arguments {sorted(kwargs)}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    return callback, checks.check_int("callback_steps", steps)


def _check_embed_pair(
    image_embeds: Any, negative_image_embeds: Any, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    emb = checks.check_embeds("image_embeds", image_embeds, dim)
    neg = checks.check_embeds("negative_image_embeds", negative_image_embeds, dim)
    if neg.shape[0] != emb.shape[0]:
        if neg.shape[0] != 1:
            raise ValueError(
                f"negative_image_embeds has batch {neg.shape[0]} but image_embeds has {emb.shape[0]}; "
                "pass one negative per image embedding, or a single one for all"
            )
        neg = neg.expand(emb.shape[0], -1)
    return emb, neg


class KandinskyV22CombinedPipeline(_Guided, DiffusionPipeline):
    """Prior and decoder in one call: prompt in, images out (what AutoPipelineForText2Image gives for 2.2)."""

    _components = ("unet", "scheduler", "movq", "prior_prior", "prior_image_encoder", "prior_text_encoder",
                   "prior_tokenizer", "prior_scheduler", "prior_image_processor")  # fmt: skip
    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->unet->movq"
    _exclude_from_cpu_offload = ("prior_prior",)
    _load_connected_pipes = True

    def __init__(self, unet, scheduler, movq, prior_prior, prior_image_encoder, prior_text_encoder,
                 prior_tokenizer, prior_scheduler, prior_image_processor) -> None:  # fmt: skip
        super().__init__(unet=unet, scheduler=scheduler, movq=movq, prior_prior=prior_prior,
                         prior_image_encoder=prior_image_encoder, prior_text_encoder=prior_text_encoder,
                         prior_tokenizer=prior_tokenizer, prior_scheduler=prior_scheduler,
                         prior_image_processor=prior_image_processor)  # fmt: skip
        self.prior_pipe = KandinskyV22PriorPipeline(prior_prior, prior_image_encoder, prior_text_encoder,
                                                    prior_tokenizer, prior_scheduler, prior_image_processor)  # fmt: skip
        self.decoder_pipe = self._decoder_class()(unet, scheduler, movq)
        for p in (self.prior_pipe, self.decoder_pipe):
            p._placement = self._placement  # one offload chain across both stages

    @staticmethod
    def _decoder_class() -> type:
        return KandinskyV22Pipeline

    def _sync(self) -> None:
        """Components replaced on the combined pipeline (`pipe.scheduler = ...`) reach the stages."""
        for name in self._components:
            target, attr = (
                (self.prior_pipe, name[6:]) if name.startswith("prior_") else (self.decoder_pipe, name)
            )
            setattr(target, attr, getattr(self, name))
        self.prior_pipe._progress_config = self.decoder_pipe._progress_config = self._progress_config

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self._sync()

    def _check_decoder_args(self, height, width, steps, scale, output_type, inputs) -> None:
        """Decoder arguments are checked before the prior runs, so a typo costs no prior steps."""
        self._sync()
        checks.check_size("height", height), checks.check_size("width", width)
        checks.check_steps("num_inference_steps", steps, self.scheduler)
        checks.check_number("guidance_scale", scale)
        checks.check_output_type(output_type, self.decoder_pipe._output_types)
        checks.check_callback_inputs(inputs, self.decoder_pipe._callback_tensor_inputs)

    def _prior_embeds(
        self, prompt, negative_prompt, n, steps, generator, latents, scale, on_step_end, inputs
    ):
        """(image_embeds, negative_image_embeds) for the prompts, n per prompt; `latents` go to the prior."""
        return self.prior_pipe(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=n, num_inference_steps=steps,
            generator=generator, latents=latents, guidance_scale=scale, output_type="pt", return_dict=False,
            callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=inputs,
        )  # fmt: skip

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
        embeds, negative = self._prior_embeds(prompt, negative_prompt, num_images_per_prompt,
                                              prior_num_inference_steps, generator, latents, prior_guidance_scale,
                                              prior_callback_on_step_end, prior_callback_on_step_end_tensor_inputs)  # fmt: skip
        self._guidance_scale = guidance_scale
        out = self.decoder_pipe(
            image_embeds=embeds, negative_image_embeds=negative, width=width, height=height,
            num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
            output_type=output_type, callback=callback, callback_steps=callback_steps, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip
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
        **decoder_kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Images from a weighted mix of texts and images, in one call (prior `interpolate` + decoder).

        `decoder_kwargs` are the decoder's (height, width, num_inference_steps, guidance_scale,
        num_images_per_prompt, output_type, ...); diffusers has no such call (diffusers#4290).
        """
        self._sync()
        n = decoder_kwargs.pop("num_images_per_prompt", 1)
        mixed = self.prior_pipe.interpolate(
            images_and_prompts, weights, num_images_per_prompt=n, num_inference_steps=prior_num_inference_steps,
            generator=generator, negative_prior_prompt=negative_prior_prompt, negative_prompt=negative_prompt,
            guidance_scale=prior_guidance_scale,
        )  # fmt: skip
        out = self.decoder_pipe(image_embeds=mixed.image_embeds, negative_image_embeds=mixed.negative_image_embeds,
                                generator=generator, **decoder_kwargs)  # fmt: skip
        self.maybe_free_model_hooks()
        return out
