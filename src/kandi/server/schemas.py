"""The native API's request bodies (JSON; images as base64) and their translation into engine Requests.

Unknown fields are refused (a typo should not be silently ignored); every check names its field.
Defaults are the model's own (a 2.2 request makes 512x512 in 50 steps at guidance 4, Kandinsky 3
1024x1024 in 25 at 3); editing tasks default to the input image's size, as the CLI does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..engine import Engine, Input, Plan, Request
from ..engine import MixItem as Ingredient
from ..engine.requests import MAX_SEED, SERVER_PHRASES
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
    scheduler: str | None = Field(
        None,
        description="the sampler, by its A1111 or diffusers name (GET "
        "/sdapi/v1/samplers); default: the checkpoint's own",
    )
    loras: list[Lora] | None = Field(None, max_length=8, description="LoRAs of the server's folder, with scales "
                                     "(or <lora:NAME:SCALE> in the prompt)")  # fmt: skip


class Hires(BaseModel):
    """A hi-res pass (A1111's hires fix): upscale the image, then redraw it at the larger size."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, ge=1, le=8, allow_inf_nan=False, description="how many times larger")
    strength: float = Field(0.5, ge=0, le=1, allow_inf_nan=False, description="denoising strength")
    steps: int = Field(0, ge=0, description="second-pass steps (0: as many as the first)")
    upscaler: str = Field(
        "lanczos", description="lanczos, nearest, latent, latent-bicubic..., or a model name"
    )
    resize_x: int = Field(0, ge=0, description="a target width instead of scale")
    resize_y: int = Field(0, ge=0, description="a target height instead of scale")


class Lora(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a LoRA of this server's LoRA folder (GET /sdapi/v1/loras)")
    scale: float = Field(1.0, allow_inf_nan=False)


class Txt2ImgBody(_Body):
    hires: Hires | None = Field(None, description="a hi-res pass after the image is made")


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
    outpaint: Margins | None = Field(
        None,
        description="extend the image by these margins (pixels): {left, top, right, bottom} or [l, t, r, b]",
    )

    @field_validator("outpaint", mode="before")
    @classmethod
    def _margins_list(cls, value: Any) -> Any:
        """[left, top, right, bottom], the form batch files (and the CLI) use, as well as the object."""
        if isinstance(value, list):
            if len(value) != 4:
                raise ValueError("outpaint margins are [left, top, right, bottom]: four numbers")
            return dict(zip(("left", "top", "right", "bottom"), value))
        return value

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


def _lora_file(name: str, folder: str | None) -> Any:
    from ..lora import find_lora

    if folder is None:
        raise FieldError("loras", "this server has no LoRA folder (kandi serve --lora-dir)")
    try:
        return find_lora(name, folder)
    except ValueError as e:
        raise FieldError("loras", str(e)) from None


def plan(
    name: str,
    body: _Body,
    engine: Engine,
    limits: Limits,
    lora_dir: str | None = None,
    upscaler_dir: str | None = None,
) -> tuple[str, Plan]:
    """(model label, Plan) for a checked body of task `name`; FieldError names what is wrong."""
    req = Request(TASK_COMMANDS[name], **{k: v for k, v in body.model_dump(exclude_none=True).items()
                                          if k in _OPTIONS})  # fmt: skip
    if req.seed == -1:
        req.seed = None
    _inputs(name, body, limits, req)
    req.names = dict(SERVER_PHRASES)
    req.lora_dir, req.upscaler_dir = lora_dir, upscaler_dir
    if getattr(body, "hires", None) is not None:
        req.hires = body.hires.model_dump()
    if body.loras:
        req.loras = [(str(_lora_file(x.name, lora_dir)), x.scale) for x in body.loras]
    entry, p = engine.plan(req, limits)
    return entry.label, p


_OPTIONS = {"prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "prior_steps",
            "prior_guidance_scale", "seed", "num_images", "scheduler", "strength", "feather"}  # fmt: skip
TASK_COMMANDS = {"txt2img": "generate", "img2img": "img2img", "inpaint": "inpaint", "mix": "mix",
                 "controlnet": "controlnet"}  # fmt: skip


def _inputs(name: str, body: Any, limits: Limits, req: Request) -> None:
    """The body's images decoded into the request (the engine plans the rest, as for the CLI)."""
    if name in ("img2img", "inpaint", "controlnet") and getattr(body, "image", None) is not None:
        req.image = Input(decode_image(body.image, "image", limits))
    if name == "controlnet":
        req.hint = Input(decode_image(body.hint, "hint", limits))
    if name == "inpaint":
        if (body.mask is None) == (body.outpaint is None):
            raise FieldError("mask", "give a mask (white = repaint) or outpaint margins, not both or neither")
        if body.mask is not None:
            req.mask = Input(decode_mask(body.mask, "mask", limits))
            req.paste_back = body.paste_back
        else:
            _outpaint(body, req, limits)
    if name == "mix":
        req.items = _mix(body, limits)
        req.prompt = None


def _outpaint(body: InpaintBody, req: Request, limits: Limits) -> None:
    m = body.outpaint
    if not any((m.left, m.top, m.right, m.bottom)):
        raise FieldError("outpaint", "set at least one margin to extend the image by")
    req.outpaint = (m.left, m.top, m.right, m.bottom)
    w, h = req.image.image.size
    for field, v in zip(
        ("outpaint.left+right", "outpaint.top+bottom"), (m.left + w + m.right, m.top + h + m.bottom)
    ):
        if v > limits.max_side:
            raise FieldError(
                field, f"the canvas would be {v} pixels, over this server's limit of {limits.max_side}"
            )


def _mix(body: MixBody, limits: Limits) -> list[Ingredient]:
    items = []
    for k, it in enumerate(body.items):
        if (it.text is None) == (it.image is None):
            raise FieldError(f"items[{k}]", "each item is a text or an image (base64), with a weight")
        if it.text is not None:
            items.append(Ingredient("text", it.text, it.weight))
        else:
            items.append(
                Ingredient("image", Input(decode_image(it.image, f"items[{k}].image", limits)), it.weight)
            )
    return items
