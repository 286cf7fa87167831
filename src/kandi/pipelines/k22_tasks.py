"""Whole Kandinsky 2.x requests for the CLI, the server and the batch runner: models loaded once,
`GenerationOptions` in, progress events and PIL images out, one seed per image.

Text to image, img2img, inpainting, outpainting, ControlNet (2.2) and mixing; each image is what the
matching diffusers-compatible pipeline makes with `torch.Generator().manual_seed(seed_i)` and one image
per prompt. A 2.1 decoder (one with an M-CLIP text encoder) also reads the prompt, as its combined
pipelines do: the prompt itself, "" as its negative, and "" when mixing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from .common import Placement, downscale_hw, to_output
from .images import as_pil, outpaint_canvas, outpaint_margins, prepare_hint, prepare_inpaint, preprocess
from .images import paste_back as paste_back_pixels
from .k22 import (
    PriorState,
    decode,
    decoder_job,
    encode_decoder_text,
    encode_prior_text,
    initial_latents,
    prior_loop,
    schedule,
    zero_image_embed,
)

PRIOR_PARTS = ("prior", "image_encoder", "text_encoder", "tokenizer", "scheduler", "image_processor")
DECODER_PARTS = ("unet", "scheduler", "movq")
PRIOR_FIELDS = ("prior", "image_encoder", "text_encoder", "tokenizer", "prior_scheduler", "image_processor")
K21_DECODER_PARTS = ("text_encoder", "tokenizer")  # the 2.1 decoder's M-CLIP
IMAGE_DECODER = "an image decoder such as kandinsky-community/kandinsky-2-2-decoder or kandinsky-2-1"
INPAINT_DECODER = "an inpainting decoder such as kandinsky-community/kandinsky-2-2-decoder-inpaint"


@dataclass
class K22Models:
    """Everything a Kandinsky 2.x request needs, loaded once (2.1: with the decoder's M-CLIP)."""

    prior: Any
    image_encoder: Any
    text_encoder: Any
    tokenizer: Any
    prior_scheduler: Any
    image_processor: Any
    unet: Any
    scheduler: Any
    movq: Any
    placement: Placement
    decoder_text_encoder: Any = None  # 2.1 only
    decoder_tokenizer: Any = None

    @property
    def k21(self) -> bool:
        return self.decoder_text_encoder is not None

    @classmethod
    def load(cls, decoder: str, prior: str, torch_dtype: torch.dtype | None = None, variant: str | None = None,
             shared_prior: K22Models | None = None, variant_fallback: bool = False,
             **hub: Any) -> K22Models:  # fmt: skip
        """Load the decoder and prior repos (folders or hub ids) named by a `ModelSpec` or the user.

        With `shared_prior`, its prior models are used instead of loading them again (a server holding the
        image, inpainting and ControlNet decoders of one model keeps one prior)."""
        from ..loading.hub import resolve_repo_dir
        from ..loading.pipeline import check_variant, load_components, read_model_index

        parts = {}
        if shared_prior is not None:
            parts = {n: getattr(shared_prior, n) for n in PRIOR_FIELDS}
        for repo, names in ((prior, PRIOR_PARTS), (decoder, DECODER_PARTS)):
            if repo == prior and shared_prior is not None:
                continue
            root = resolve_repo_dir(repo, variant=variant, role="prior_repo" if repo == prior else "decoder_repo",
                                    **hub)  # fmt: skip
            index = read_model_index(root)
            if repo == decoder and index.get("text_encoder"):  # a 2.1 decoder reads the prompt too
                names = (*names, *K21_DECODER_PARTS)
            here = check_variant(root, index, variant, variant_fallback)  # no such weights: error or warning
            loaded = load_components(root, index, list(names), {}, torch_dtype=torch_dtype, variant=here)
            if repo == prior:
                loaded["prior_scheduler"] = loaded.pop("scheduler")
            else:
                loaded["decoder_text_encoder"] = loaded.pop("text_encoder", None)
                loaded["decoder_tokenizer"] = loaded.pop("tokenizer", None)
            parts.update(loaded)
        return cls(**parts, placement=Placement())

    def modules(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "image_encoder", "prior", "decoder_text_encoder", "unet", "movq")
        return [getattr(self, n) for n in names if getattr(self, n) is not None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> K22Models:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.placement.execution_device(self.modules())


@dataclass
class Progress:
    stage: str  # "prior" or "decoder"
    step: int  # 1-based
    total: int
    image: int  # index of the image being made
    num_images: int


@dataclass
class Result:
    images: list  # PIL images
    seeds: list[int]


def _seeds(seed: int | None, n: int) -> list[int]:
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return [seed + i for i in range(n)]


@torch.no_grad()
def text_to_image(m: K22Models, opts: Any) -> Iterator[Progress | Result]:
    """Images for `opts` (a GenerationOptions), one at a time with seed, seed+1, ... each.

    Each image is exactly what `KandinskyV22CombinedPipeline` makes with
    `generator=torch.Generator().manual_seed(seed_i)`, so any one can be regenerated alone.
    """
    _check_unet(m, 4, IMAGE_DECODER)
    yield from _prompted(m, opts)


@torch.no_grad()
def image_to_image(m: K22Models, opts: Any, image: Any, strength: float = 0.3) -> Iterator[Progress | Result]:
    """`image` (PIL, array or file) redrawn after `opts.prompt`; `strength` is the share of steps run.

    As `KandinskyV22Img2ImgCombinedPipeline` with one generator seeded per image.
    """
    _check_unet(m, 4, IMAGE_DECODER)
    yield from _prompted(m, opts, strength=strength, image=preprocess(image, *_size(m, opts)))


@torch.no_grad()
def inpaint(m: K22Models, opts: Any, image: Any, mask: Any, strength: float = 1.0, paste_back: bool = False,
            feather: int = 0) -> Iterator[Progress | Result]:  # fmt: skip
    """`image` repainted where `mask` is white, as `KandinskyV22InpaintCombinedPipeline` (kandi's
    `strength`, `paste_back` and `paste_back_feather` included), one generator seeded per image."""
    _check_unet(m, 9, INPAINT_DECODER)
    keep, pixels = prepare_inpaint(image, mask, *_size(m, opts))
    edit = None
    if paste_back:

        def edit(decoded: torch.Tensor) -> torch.Tensor:
            return paste_back_pixels(pixels.to(decoded), decoded, keep.to(decoded), feather)

    yield from _prompted(m, opts, edit, strength=strength, image=pixels, keep=keep)


@torch.no_grad()
def outpaint(m: K22Models, opts: Any, image: Any, left: int, top: int, right: int, bottom: int,
             strength: float = 1.0, feather: int = 8) -> Iterator[Progress | Result]:  # fmt: skip
    """`image` extended by the margins (pixels), exactly (left + w + right) x (top + h + bottom); the
    original pixels come out unchanged. As `KandinskyV22InpaintCombinedPipeline.outpaint`; the size of
    `opts` is not used (the canvas sets it)."""
    original = as_pil(image, "image")
    w, h = original.size
    canvas, mask = outpaint_canvas(original, *outpaint_margins(w, h, left, top, right, bottom))
    box = (0, 0, left + w + right, top + h + bottom)
    on_canvas = replace(opts, width=canvas.width, height=canvas.height)
    for event in inpaint(m, on_canvas, canvas, mask, strength, True, feather):
        # the canvas may be larger (grown to the model's multiple): the extra strip is cut off
        yield (
            Result([im.crop(box) for im in event.images], event.seeds) if isinstance(event, Result) else event
        )


@torch.no_grad()
def controlnet(m: K22Models, opts: Any, hint: Any, image: Any = None, strength: float = 0.3
               ) -> Iterator[Progress | Result]:  # fmt: skip
    """Images after `opts.prompt` laid out by `hint` (a depth map), from noise or from `image` noised to
    `strength`: the prior then `KandinskyV22Controlnet(Img2Img)Pipeline`, one generator per image."""
    _check_unet(
        m, 8, "a ControlNet decoder such as kandinsky-community/kandinsky-2-2-controlnet-depth", "image_hint"
    )
    size = _size(m, opts)
    inputs: dict[str, Any] = {"hint": prepare_hint(hint, *size, 1)}
    if image is not None:
        inputs |= {"strength": strength, "image": preprocess(image, *size)}
    yield from _prompted(m, opts, **inputs)


@torch.no_grad()
def mix(m: K22Models, opts: Any, items: list[Any], weights: list[float]) -> Iterator[Progress | Result]:
    """Images from the weighted sum of the embeddings of texts and images (PIL, arrays or files).

    As `KandinskyV22CombinedPipeline.mix(items, weights, negative_prior_prompt=opts.negative_prompt)`:
    each text runs the prior (with the negative prompt as its uncond), and the decoder's negative is
    the prior's negative embedding of an empty prompt. The weights are used as given.
    """
    _check_unet(m, 4, IMAGE_DECODER)
    items = [
        i if isinstance(i, str | torch.Tensor) else as_pil(i, f"item {k + 1}") for k, i in enumerate(items)
    ]

    def one(g: torch.Generator, k: int, n: int):
        def text(item: str):
            return (yield from _prior_progress(m, replace(opts, prompt=item), g, k, n))[0]

        image = partial(
            clip_image_embeds, m.image_encoder, m.image_processor, device=m.device, placement=m.placement
        )
        emb = yield from interpolate_embeds(items, weights, text, image)
        _, neg = yield from _prior_progress(m, replace(opts, prompt=""), g, k, n)
        return (yield from _decode(m, replace(opts, prompt=""), emb, neg, g, k, n))

    yield from _each_seed(opts, one)


def interpolate_embeds(items: list[Any], weights: list[float], text: Callable[[str], Iterator[Any]],
                       image: Callable[[Any], torch.Tensor]) -> Iterator[Any]:  # fmt: skip
    """The prior's `interpolate`: sum of weight * embedding over the items, in order (the text runs draw
    from the shared generator in diffusers' order). `text(item)` is a generator returning the item's
    image embedding (it may yield progress, which is passed on); the sum is returned."""
    total = None
    for item, w in zip(items, weights):
        emb = (yield from text(item)) if isinstance(item, str) else image(item)
        total = emb * w if total is None else total + emb * w
    return total


def clip_image_embeds(image_encoder: Any, image_processor: Any, image: Any, device: torch.device,
                      placement: Placement | None = None) -> torch.Tensor:  # fmt: skip
    """The (1, D) CLIP embedding of a PIL image (or of already processed pixels), as `interpolate` takes it."""
    if placement:
        placement.use(image_encoder)
    if not isinstance(image, torch.Tensor):
        image = image_processor(image, return_tensors="pt").pixel_values[0].unsqueeze(0)
    return image_encoder(image.to(dtype=image_encoder.dtype, device=device))["image_embeds"]


def _prompted(
    m: K22Models, opts: Any, edit: Callable | None = None, **inputs: Any
) -> Iterator[Progress | Result]:
    """The prior on `opts.prompt`, then the decoder with `inputs` (see `_decode`), one image per seed."""

    def one(g: torch.Generator, k: int, n: int):
        emb, neg = yield from _prior_progress(m, opts, g, k, n)
        return (yield from _decode(m, opts, emb, neg, g, k, n, edit, **inputs))

    yield from _each_seed(opts, one)


def _each_seed(
    opts: Any, one: Callable[[torch.Generator, int, int], Iterator[Any]]
) -> Iterator[Progress | Result]:
    """Run `one(generator, k, n)` (yielding progress, returning image k's PIL images) for each seed."""
    seeds = _seeds(opts.seed, opts.num_images)
    images = []
    for k, seed in enumerate(seeds):
        images += yield from one(torch.Generator().manual_seed(seed), k, len(seeds))
    yield Result(images, seeds)


def _size(m: K22Models, opts: Any) -> tuple[int, int]:
    """(H, W) the decoder makes for the asked size: rounded up to the model's multiple, as diffusers."""
    sf = 2 ** (len(m.movq.config.block_out_channels) - 1)
    return tuple(v * sf for v in downscale_hw(opts.height, opts.width, sf))


def _check_unet(m: K22Models, channels: int, example: str, kind: str | None = None) -> None:
    """The decoder fits the task: `channels` input channels, and 2.1 (text_image) or 2.2 conditioning."""
    kind = kind or ("text_image" if m.k21 else "image")
    cfg = m.unet.config
    if cfg.addition_embed_type != kind or cfg.in_channels != channels:
        raise ValueError(
            f"this decoder's UNet takes {cfg.in_channels} channels with {cfg.addition_embed_type!r} conditioning; "
            f"this task needs {example}"
        )


def _prior_progress(m: K22Models, opts: Any, g: torch.Generator, k: int, n: int):
    """Run the prior for image k, yielding progress; returns (image_embeds, negative_image_embeds)."""
    for s in _prior(m, opts, g, m.device):
        if isinstance(s, PriorState):
            yield Progress("prior", s.i + 1, s.num_steps, k, n)
        else:
            return s


def _decode(m: K22Models, opts: Any, emb, neg, g: torch.Generator, k: int, n: int, edit: Callable | None = None,
            **inputs: Any):  # fmt: skip
    """Run the decoder for image k (img2img / inpaint / hint `inputs` as `decoder_job` takes them),
    yielding progress; returns the decoded PIL images, changed by `edit` ([-1, 1] tensors) first."""
    scheduler = _decoder_scheduler(m.scheduler, opts.scheduler)
    size = _size(m, opts)
    if m.k21:  # the 2.1 decoder reads the prompt ("" as its negative, as the combined pipelines do)
        m.placement.use(m.decoder_text_encoder)
        text = encode_decoder_text(m.decoder_tokenizer, m.decoder_text_encoder, [opts.prompt], None, 1,
                                   opts.guidance_scale > 1, m.device)  # fmt: skip
        inputs |= {"text": text, "k21": True}
    job = decoder_job(m.unet, scheduler, m.movq, emb, neg, 1, size, opts.steps, opts.guidance_scale, g, m.device,
                      m.placement, **inputs)  # fmt: skip
    latents = yield from _progress(job, "decoder", k, n)
    decoded = decode(m.movq, latents, m.placement)
    out = to_output(edit(decoded) if edit else decoded, "pil")
    m.placement.release()
    return out


def _progress(job: Iterator[Any], stage: str, k: int, n: int):
    """Forward a loop's states as Progress events; returns the loop's return value."""
    while True:
        try:
            s = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(stage, s.i + 1, s.num_steps, k, n)


def _prior(m: K22Models, opts: Any, g: torch.Generator, device: torch.device) -> Iterator[Any]:
    """The prior of one image: yields its states, then (image_embeds, negative_image_embeds)."""
    texts = [opts.prompt] + ([opts.negative_prompt] if opts.negative_prompt is not None else [])
    uncond = [opts.negative_prompt] * 2 if opts.negative_prompt is not None else None
    guided = opts.prior_guidance_scale > 1
    m.placement.use(m.text_encoder)
    cond = encode_prior_text(m.tokenizer, m.text_encoder, texts, uncond, 1, guided, device)
    ts = schedule(
        m.prior_scheduler, opts.prior_steps, device
    )  # before init_noise_sigma (set_timesteps sets it)
    x = initial_latents((len(texts), m.prior.config.embedding_dim), g, device, cond.prompt_embeds.dtype, None,
                        m.prior_scheduler.init_noise_sigma)  # fmt: skip
    loop = prior_loop(m.prior, m.prior_scheduler, ts, cond, x, opts.prior_guidance_scale, g, m.placement)
    for s in loop:
        yield s
    if opts.negative_prompt is None:
        m.placement.use(m.image_encoder)
        yield s.latents, zero_image_embed(m.image_encoder, device).to(s.latents.dtype)
    else:
        yield s.latents.chunk(2)


def _decoder_scheduler(default: Any, name: str | None) -> Any:
    """The checkpoint's scheduler, or the sampler `name` (A1111 or class name) over its config."""
    if name is None:
        return default
    from ..schedulers.names import make_sampler

    return make_sampler(name, default.config)
