"""The native API's request bodies (JSON; images as base64) and their translation into engine Requests.

Unknown fields are refused (a typo should not be silently ignored); every check names its field.
Defaults are the model's own (a 2.2 request makes 512x512 in 50 steps at guidance 4, Kandinsky 3
1024x1024 in 25 at 3); editing tasks default to the input image's size, as the CLI does.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..cli import MAX_SEED
from ..cli_edit import _default_size as _size  # an input's size rounded to 64, as the CLI
from ..configs import GenerationOptions
from .engine import Engine, Request
from .inputs import FieldError, Limits, decode_image, decode_mask

TASKS = {  # URL name -> engine task
    "txt2img": "text_to_image",
    "img2img": "image_to_image",
    "inpaint": "inpaint",
    "mix": "mix",
    "controlnet": "controlnet",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to draw")
    negative_prompt: str | None = Field(None, description="what not to draw")
    model: str | None = Field(
        None, description="a model this server loaded (GET /models); default: the first"
    )
    width: int | None = Field(None, ge=8, description="default: the model's size, or the input image's")
    height: int | None = Field(None, ge=8)
    steps: int | None = Field(None, ge=1, description="decoder steps; default: the model's")
    guidance_scale: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    prior_steps: int | None = Field(None, ge=1, description="2.x prior steps")
    prior_guidance_scale: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="None or -1: random (returned)")
    num_images: int = Field(1, ge=1, description="images, with seeds seed, seed+1, ...")
    scheduler: Literal["ddpm", "ddim"] | None = Field(None, description="default: the checkpoint's own")


class Txt2ImgBody(_Body):
    pass


class Img2ImgBody(_Body):
    image: str = Field(description="the image to redraw, base64 (or a data: URL)")
    strength: float = Field(0.3, ge=0, le=1, description="share of the decoder steps run")


class Margins(BaseModel):
    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0)
    top: int = Field(0, ge=0)
    right: int = Field(0, ge=0)
    bottom: int = Field(0, ge=0)


class InpaintBody(_Body):
    image: str = Field(description="the image to repaint or extend, base64")
    mask: str | None = Field(None, description="white (or opaque) = repaint; or give `outpaint`")
    outpaint: Margins | None = Field(None, description="extend the image by these margins (pixels)")
    strength: float = Field(1.0, ge=0, le=1)
    paste_back: bool = Field(False, description="keep the unmasked pixels exactly")
    feather: int | None = Field(None, ge=0, le=256, description="soft paste-back edge (outpaint default 8)")


class MixItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = Field(None, description="base64")
    weight: float = Field(allow_inf_nan=False)


class MixBody(_Body):
    prompt: str = Field("", description="not used: the items are the prompt")
    items: list[MixItem] = Field(min_length=1, max_length=8, description="texts and images with weights")


class ControlNetBody(_Body):
    hint: str = Field(description="a depth map, base64")
    image: str | None = Field(None, description="optional image to start from, base64")
    strength: float | None = Field(None, ge=0, le=1, description="with image (default 0.3)")


BODIES: dict[str, type[_Body]] = {
    "txt2img": Txt2ImgBody,
    "img2img": Img2ImgBody,
    "inpaint": InpaintBody,
    "mix": MixBody,
    "controlnet": ControlNetBody,
}


def plan(name: str, body: _Body, engine: Engine, limits: Limits) -> tuple[str, Request]:
    """(model label, Request) for a checked body of task `name`; FieldError names what is wrong."""
    try:
        entry = engine.entry(body.model)
    except LookupError as e:
        raise FieldError("model", str(e), 404) from None
    task, kwargs, size, extra = _inputs(name, body, limits)
    if task not in entry.tasks():
        raise FieldError("model", f"{entry.label} cannot do {name}; it does: "
                         f"{', '.join(k for k, v in TASKS.items() if v in entry.tasks())}")  # fmt: skip
    d = entry.defaults()
    if size is not None:
        d["width"], d["height"] = size
    given = body.model_dump(exclude_unset=True, exclude_none=True)
    d |= {k: v for k, v in given.items() if k in GenerationOptions.__dataclass_fields__}
    d.update(extra.pop("fixed", {}))
    limits.check(width=d["width"], height=d["height"], steps=d["steps"], num_images=body.num_images)
    seed = body.seed if body.seed not in (None, -1) else secrets.randbelow(2**31)
    if seed + body.num_images - 1 > MAX_SEED:
        raise FieldError(
            "seed", f"seeds {seed}..{seed + body.num_images - 1} pass the largest seed {MAX_SEED}"
        )
    opts = GenerationOptions.from_dict(
        d | {"model": entry.label, "seed": seed, "prompt": d.get("prompt", "")}
    )
    opts.extra = extra.pop("extra", {})
    return entry.label, Request(task, opts, kwargs, **extra)


def _inputs(name: str, body: Any, limits: Limits) -> tuple[str, dict, tuple[int, int] | None, dict]:
    """(engine task, task kwargs, default size, Request extras) with images decoded."""
    if name == "txt2img":
        return "text_to_image", {}, None, {}
    if name == "img2img":
        image = decode_image(body.image, "image", limits)
        return (
            "image_to_image",
            {"image": image, "strength": body.strength},
            _size(image),
            _edit(body.strength),
        )
    if name == "inpaint":
        return _inpaint(body, limits)
    if name == "mix":
        return _mix(body, limits)
    hint = decode_image(body.hint, "hint", limits)
    if body.image is None:
        if body.strength is not None:
            raise FieldError("strength", "strength needs an image to start from")
        return "controlnet", {"hint": hint}, _size(hint), {}
    strength = 0.3 if body.strength is None else body.strength
    kwargs = {"hint": hint, "image": decode_image(body.image, "image", limits), "strength": strength}
    return "controlnet", kwargs, _size(hint), _edit(strength)


def _inpaint(body: InpaintBody, limits: Limits) -> tuple[str, dict, tuple[int, int] | None, dict]:
    image = decode_image(body.image, "image", limits)
    if (body.mask is None) == (body.outpaint is None):
        raise FieldError("mask", "give a mask (white = repaint) or outpaint margins, not both or neither")
    if body.mask is not None:
        mask = decode_mask(body.mask, "mask", limits)
        kwargs = {"image": image, "mask": mask, "strength": body.strength, "paste_back": body.paste_back,
                  "feather": body.feather or 0}  # fmt: skip
        extra = _edit(body.strength, {"paste_back": body.paste_back, "feather": body.feather or 0})
        return "inpaint", kwargs, _size(image), extra
    if body.width is not None or body.height is not None:
        raise FieldError(
            "width", "outpainting sets the size (the image plus the margins): leave out width/height"
        )
    m, (w, h) = body.outpaint, image.size
    size = (m.left + w + m.right, m.top + h + m.bottom)
    for field, v in zip(("outpaint.left+right", "outpaint.top+bottom"), size):
        if v > limits.max_side:
            raise FieldError(
                field, f"the canvas would be {v} pixels, over this server's limit of {limits.max_side}"
            )
    feather = 8 if body.feather is None else body.feather
    kwargs = dict(image=image, left=m.left, top=m.top, right=m.right, bottom=m.bottom, strength=body.strength,
                  feather=feather)  # fmt: skip
    extra = _edit(body.strength, {"outpaint": [m.left, m.top, m.right, m.bottom], "feather": feather})
    extra["fixed"] = {"width": size[0], "height": size[1]}
    return "outpaint", kwargs, None, extra


def _mix(body: MixBody, limits: Limits) -> tuple[str, dict, None, dict]:
    items, record = [], []
    for k, it in enumerate(body.items):
        if (it.text is None) == (it.image is None):
            raise FieldError(f"items[{k}]", "each item is a text or an image (base64), with a weight")
        if it.text is not None:
            items.append(it.text)
            record.append({"text": it.text, "weight": it.weight})
        else:
            items.append(decode_image(it.image, f"items[{k}].image", limits))
            record.append({"image": f"item{k + 1}", "weight": it.weight})
    texts = [i for i in items if isinstance(i, str)]
    extra = {"prior_runs": len(texts) + 1, "extra": {"mix": record}, "fixed": {"prompt": " | ".join(texts)}}
    return "mix", {"items": items, "weights": [it.weight for it in body.items]}, None, extra


def _edit(strength: float, more: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"strength": strength, "fields": {"Denoising strength": strength},
            "extra": {"strength": strength, **(more or {})}}  # fmt: skip
