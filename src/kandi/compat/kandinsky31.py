"""Kandinsky 3.1 (`ai-forever/Kandinsky3.1`: base, Flash, inpainting) with Kandinsky3Pipeline's arguments.

diffusers has no such pipelines (diffusers#7928); these take `Kandinsky3Pipeline`'s argument names, with
the original's meanings: `guidance_scale` is w in (w + 1) * cond - w * uncond (base 3, inpainting 4),
Flash runs its 4 fixed timesteps without guidance, and a `torch.Generator` (CPU) is drawn in the order
ai-forever's code draws torch's global generator, so `manual_seed(s)` gives its image for seed s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from ..pipelines import images, k31, k31_tasks
from ..pipelines.k31_tasks import K31Models
from . import checks
from .base import DiffusionPipeline
from .kandinsky22_edit import check_strength
from .outputs import ImagePipelineOutput

REPO_ID = "ai-forever/Kandinsky3.1"
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
TASK_MODELS = {  # AutoPipeline task -> (default model, accepted models)
    "text2image": ("base", ("base", "flash", "inpainting")),
    "image2image": ("base", ("base", "flash")),
    "inpainting": ("inpainting", ("inpainting",)),
}


def is_kandinsky31(name_or_path: str | os.PathLike) -> bool:
    """A hub id, short name or folder of the ai-forever/Kandinsky3.1 release (weights/kandinsky3*.pt)."""
    from ..configs import resolve_model

    s = str(name_or_path).strip()
    if os.path.isdir(os.path.expanduser(s)):
        return any(os.path.isfile(os.path.join(os.path.expanduser(s), v.unet_file)) for v in _variants())
    try:
        return resolve_model(s).family == "k31"
    except ValueError:
        return s.lower() == REPO_ID.lower()


def _variants():
    from ..loading.k31 import VARIANTS

    return VARIANTS.values()


def _repo_and_model(name_or_path: str | os.PathLike, model: str | None) -> tuple[str, str | None]:
    """A short registry name (kandinsky-3.1-flash, ...) names its model; a hub id or folder does not."""
    from ..configs import resolve_model

    s = str(name_or_path)
    try:
        spec = resolve_model(s)
    except ValueError:
        return s, model
    if spec.family != "k31" or os.path.isdir(os.path.expanduser(s)) or "/" in s:
        return s, model
    return spec.decoder_repo, model or spec.k31_model


class _K31Pipeline(DiffusionPipeline):
    _components = ("tokenizer", "text_encoder", "unet", "movq")
    model_cpu_offload_seq = "text_encoder->unet->movq"
    _accepted: tuple[str, ...] = ("base", "flash")
    _default = "base"

    def __init__(self, tokenizer: Any, text_encoder: Any, unet: Any, movq: Any,
                 null_embedding: torch.Tensor | None = None, model: str = "base") -> None:  # fmt: skip
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, movq=movq)
        if null_embedding is None:
            raise ValueError("Kandinsky 3.1 pipelines need the checkpoint's null_embedding")
        self.null_embedding = null_embedding
        self.model = model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike = REPO_ID, model: str | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> _K31Pipeline:  # fmt: skip
        """Load from `ai-forever/Kandinsky3.1` (hub id, cache, or a folder in its layout); `model` picks
        base, flash or inpainting (only that model's files are fetched)."""
        hub = {
            k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs
        }
        kwargs.pop("variant", None)  # the release has one set of fp32 files
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments {sorted(kwargs)}")
        repo, model = _repo_and_model(pretrained_model_name_or_path, model)
        model = model or cls._default
        if model not in cls._accepted:
            raise ValueError(
                f"{cls.__name__} takes model={' or '.join(map(repr, cls._accepted))}, got {model!r}"
            )
        m = K31Models.load(repo, model, torch_dtype, **hub)
        pipe = cls(m.tokenizer, m.text_encoder, m.unet, m.movq, m.null_embedding, model)
        pipe._name_or_path = str(pretrained_model_name_or_path)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        if not isinstance(pipeline, _K31Pipeline) or pipeline.model not in cls._accepted:
            raise ValueError(f"{cls.__name__} cannot be built from a {type(pipeline).__name__}")
        return cls(pipeline.tokenizer, pipeline.text_encoder, pipeline.unet, pipeline.movq, pipeline.null_embedding,
                   pipeline.model)  # fmt: skip

    def _models(self) -> K31Models:
        m = K31Models(self.tokenizer, self.text_encoder, self.unet, self.null_embedding, self.movq, self.model,
                      self._placement)  # fmt: skip
        m.null_embedding = self.null_embedding.to(self._execution_device)
        return m

    def _checked(self, prompt: Any, negative: Any, steps: Any, guidance: Any, n: Any, output_type: Any,
                 generator: Any) -> tuple[list[str], list[str] | None, int]:  # fmt: skip
        prompts = checks.check_prompts("prompt", prompt)
        negs = checks.check_negative(negative, prompts)
        n = checks.check_int("num_images_per_prompt", n)
        if steps is not None:
            k31.base_timesteps(steps)  # range check
        if guidance is not None:
            checks.check_number("guidance_scale", guidance)
        checks.check_output_type(output_type, OUTPUT_TYPES)
        if isinstance(generator, list | tuple):
            raise TypeError(
                "Kandinsky 3.1 draws one batch from one generator, as the original: pass a torch.Generator"
            )
        checks.check_generator(generator, len(prompts) * n)
        return prompts, negs, n

    def _run(self, jobs: list[Iterator[Any]], output_type: str, return_dict: bool,
             edit: Any = None) -> ImagePipelineOutput | tuple:  # fmt: skip
        """Drain each prompt's job (with a progress bar), decode, convert."""
        self._prepare_run()
        m = self._models()
        latents = []
        for job in jobs:
            bar = None
            while True:
                try:
                    state = next(job)
                except StopIteration as stop:
                    latents.append(stop.value)
                    break
                bar = bar or self.progress_bar(total=state.num_steps)
                bar.update(1)
            if bar is not None:
                bar.close()
        x = torch.cat(latents)
        if output_type == "latent":
            out: Any = x
        else:
            decoded = k31_tasks.decode(m, x)
            decoded = edit(decoded) if edit else decoded
            if output_type == "pil":
                out = k31.to_uint8_pil(decoded)
            else:
                out = torch.clip((decoded + 1) / 2, 0, 1)
                out = out.cpu().permute(0, 2, 3, 1).numpy() if output_type == "np" else out
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)


class Kandinsky31Pipeline(_K31Pipeline):
    """Text to image with the 3.1 base model or Kandinsky Flash."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int | None = 1, height: int | None = 1024, width: int | None = 1024,
                 generator: torch.Generator | None = None, output_type: str | None = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:  # fmt: skip
        """Args: Kandinsky3Pipeline's. Defaults: base 50 steps, w = 3; Flash its 4 timesteps, no guidance."""
        prompts, negs, n = self._checked(prompt, negative_prompt, num_inference_steps, guidance_scale,
                                         num_images_per_prompt, output_type, generator)  # fmt: skip
        h, w = checks.check_size("height", height), checks.check_size("width", width)
        m = self._models()
        jobs = [k31_tasks.text_to_image_latents(m, p, negs[i] if negs else None, n, h, w, num_inference_steps,
                                                guidance_scale, generator) for i, p in enumerate(prompts)]  # fmt: skip
        return self._run(jobs, output_type, return_dict)


class Kandinsky31Img2ImgPipeline(_K31Pipeline):
    """img2img with the 3.1 base model or Flash, at the image's own size (multiples of 64)."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image: Any = None, strength: float = 0.3,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int | None = 1,
                 generator: torch.Generator | None = None, output_type: str | None = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:  # fmt: skip
        prompts, negs, n = self._checked(prompt, negative_prompt, num_inference_steps, guidance_scale,
                                         num_images_per_prompt, output_type, generator)  # fmt: skip
        strength = check_strength(strength)
        images.check_present(image, "image")
        pixels = images.preprocess(image, *images.native_size(image, 64))
        m = self._models()
        self._placement.use(self.movq)
        x0 = self.movq.encode(pixels.to(self.movq.device, self.movq.dtype)).latents.float()
        x0 = images.match_batch(x0, len(prompts), "image").to(m.device)
        jobs = [k31_tasks.image_to_image_latents(m, x0[i : i + 1].repeat_interleave(n, dim=0), p,
                                                 negs[i] if negs else None, num_inference_steps, guidance_scale,
                                                 strength, generator) for i, p in enumerate(prompts)]  # fmt: skip
        return self._run(jobs, output_type, return_dict)


class Kandinsky31InpaintPipeline(_K31Pipeline):
    """3.1 inpainting: `mask_image` white / 1 = repaint; the size comes from the image (about 1024^2)."""

    _accepted = ("inpainting",)
    _default = "inpainting"

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image: Any = None, mask_image: Any = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int | None = 1,
                 generator: torch.Generator | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, strength: float = 1.0, paste_back: bool = False,
                 paste_back_feather: int = 0) -> ImagePipelineOutput | tuple:  # fmt: skip
        """Kandinsky3Pipeline's arguments plus image / mask_image, and kandi's strength and paste_back
        (kept pixels exactly the original's, as kandi's 2.2 inpainting)."""
        prompts, negs, n = self._checked(prompt, negative_prompt, num_inference_steps, guidance_scale,
                                         num_images_per_prompt, output_type, generator)  # fmt: skip
        strength = check_strength(strength)
        feather = checks.check_int("paste_back_feather", paste_back_feather, 0)
        pixels, repaint = k31_tasks.inpaint_inputs(image, mask_image)
        m = self._models()
        jobs = [k31_tasks.inpaint_latents(m, pixels, repaint, p, negs[i] if negs else None, n, num_inference_steps,
                                          guidance_scale, generator, strength) for i, p in enumerate(prompts)]  # fmt: skip
        keep = 1 - (repaint >= 0.5).float()
        edit = (lambda d: images.paste_back(pixels.to(d), d, keep.to(d), feather)) if paste_back else None
        return self._run(jobs, output_type, return_dict, edit)


def for_task(task: str, name_or_path: str | os.PathLike, **kwargs: Any) -> _K31Pipeline:
    """The AutoPipeline entry: the task's class, `model=` checked against what the task accepts."""
    default, accepted = TASK_MODELS[task]
    repo, model = _repo_and_model(name_or_path, kwargs.pop("model", None))
    model = model or default
    if model not in accepted:
        raise ValueError(
            f"Kandinsky 3.1 {task} takes model={' or '.join(map(repr, accepted))}, got {model!r}"
        )
    cls = {"text2image": Kandinsky31Pipeline, "image2image": Kandinsky31Img2ImgPipeline,
           "inpainting": Kandinsky31InpaintPipeline}[task]  # fmt: skip
    if model == "inpainting" and task == "text2image":
        cls = Kandinsky31InpaintPipeline  # the inpainting model only inpaints
    return cls.from_pretrained(repo, model=model, **kwargs)
