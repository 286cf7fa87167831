"""The web UI's values as the native API's request bodies (no Gradio here: the tests build bodies
without a browser, and the UI module keeps to the layout and its wiring)."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .inputs import FieldError
from .schemas import BODIES

if TYPE_CHECKING:
    from PIL import Image

NO_PRIOR = ("k3", "k31", "k5", "k5i2i")  # families without a prior: no prior sliders
REPAINT, EXTEND = "Repaint what I paint", "Extend the image (outpaint)"
MIX_SLOTS = 4
MODEL_DEFAULT = "model default"


def png_base64(image: Image.Image) -> str:
    """An image as the base64 PNG the API's bodies take (lossless, so masks stay exact)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def build_body(task: str, v: dict[str, Any], family: str) -> BaseModel:
    """The native API body of `task` from the UI's values (`v`: field name -> component value)."""
    common: dict[str, Any] = {
        "model": v.get("model") or None,
        "prompt": v.get("prompt") or "",
        "negative_prompt": v.get("negative_prompt") or None,
        "steps": _int(v.get("steps")),
        "guidance_scale": v.get("guidance_scale"),
        "seed": _seed(v.get("seed")),
        "num_images": _int(v.get("num_images")) or 1,
        "scheduler": _sampler(v.get("scheduler"), v.get("schedule_type")),
        "loras": [{"name": n, "scale": float(v.get("lora_weight") or 1.0)} for n in v.get("loras") or []]
        or None,
    }
    if task == "txt2img" and v.get("hires"):
        common["hires"] = {"scale": v.get("hires_scale") or 2.0, "strength": v.get("hires_strength") or 0.5,
                           "steps": _int(v.get("hires_steps")) or 0, "upscaler": v.get("hires_upscaler") or "lanczos"}  # fmt: skip
    if family not in NO_PRIOR:  # Kandinsky 3 and later have no prior
        common |= {
            "prior_steps": _int(v.get("prior_steps")),
            "prior_guidance_scale": v.get("prior_guidance_scale"),
        }
    if not v.get("input_size"):
        common |= {"width": _int(v.get("width")), "height": _int(v.get("height"))}
    fields = {**common, **_task_fields(task, v)}
    return BODIES[task](**{k: x for k, x in fields.items() if x is not None})


def _sampler(name: str | None, schedule: str | None) -> str | None:
    """The sampler name the API takes: the menu's sampler with the schedule type as its suffix ("UniPC
    Karras"; the planner refuses a combination kandi lacks). The model's own sampler has no type to set."""
    if name in (None, "", MODEL_DEFAULT):
        return None
    if schedule in (None, "", "Automatic") or name.endswith(f" {schedule}"):
        return name
    return f"{name} {schedule}"


def _task_fields(task: str, v: dict[str, Any]) -> dict[str, Any]:
    if task == "img2img":
        return {
            "image": _image(v.get("image"), "image", "upload the image to redraw"),
            "strength": v.get("strength"),
        }
    if task == "inpaint":
        return _inpaint_fields(v)
    if task == "mix":
        return _mix_fields(v)
    if task == "controlnet":
        hint = _image(v.get("hint"), "hint", "upload a depth map (white = near)")
        if v.get("image") is None:
            return {"hint": hint}
        return {"hint": hint, "image": png_base64(v["image"]), "strength": v.get("strength")}
    return {}


def _inpaint_fields(v: dict[str, Any]) -> dict[str, Any]:
    editor = v.get("editor") or {}
    image = _image(editor.get("background"), "image", "upload the image to repaint or extend")
    out: dict[str, Any] = {"image": image, "strength": v.get("strength")}
    if v.get("mode") == EXTEND:
        margins = {k: _int(v.get(k)) or 0 for k in ("left", "top", "right", "bottom")}
        if not any(margins.values()):
            raise FieldError("outpaint", "set at least one margin to extend the image by")
        return out | {"outpaint": margins, "width": None, "height": None}
    mask = editor_mask(editor)
    if mask is None:
        raise FieldError("mask", "paint over the part to repaint with the brush (or choose to extend)")
    feather = _int(v.get("feather"))
    return out | {"mask": png_base64(mask), "paste_back": bool(v.get("paste_back")), "feather": feather}


def _mix_fields(v: dict[str, Any]) -> dict[str, Any]:
    items = []
    for k in range(MIX_SLOTS):
        weight = v.get(f"weight{k}")
        if v.get(f"kind{k}") == "Image":
            if v.get(f"image{k}") is not None:
                items.append({"image": png_base64(v[f"image{k}"]), "weight": weight})
        elif (v.get(f"text{k}") or "").strip():
            items.append({"text": v[f"text{k}"].strip(), "weight": weight})
    if len(items) < 2:
        raise FieldError("items", "give at least two items (texts or images) to mix")
    return {"items": items, "prompt": ""}


def _image(im: Image.Image | None, name: str, hint: str) -> str:
    if im is None:
        raise FieldError(name, hint)
    return png_base64(im)


def _int(x: Any) -> int | None:
    return None if x is None or x == "" else int(round(float(x)))


def _seed(x: Any) -> int | None:
    s = _int(x)
    return None if s is None or s < 0 else s  # -1 (or any negative): a random seed, shown afterwards


def editor_mask(value: dict[str, Any] | None) -> Image.Image | None:
    """The repaint mask of a gr.ImageEditor value: white where any brush layer has paint, as an "L"
    image of the background's size; None when nothing is painted."""
    from PIL import Image, ImageChops

    if not value or value.get("background") is None:
        return None
    size = value["background"].size
    mask = Image.new("L", size, 0)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:  # a layer drawn on a canvas of another size still covers the same area
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha.point(lambda v: 255 if v > 0 else 0))
    return mask if mask.getbbox() else None
