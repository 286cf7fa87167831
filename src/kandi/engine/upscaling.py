"""Upscaling an image, for every shell (`kandi upscale`, A1111's extra-single-image): the request's
checks, the upscaler found by name, and the PNG it makes (the source's text chunks kept, plus A1111's
`postprocessing` line)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .requests import Limits, RequestError

MAX_FACTOR = 8


@dataclass
class Upscaled:
    image: Any  # PIL image
    png: bytes
    upscaler: str  # the name shown (Lanczos, or the model file's stem)


def find_upscaler(name: str | None, folder: str | None) -> tuple[str, str | None]:
    """(key, model file) of an upscaler: lanczos / nearest, a model file, or a model's name in `folder`."""
    from ..upscale import list_upscalers

    key = (name or "lanczos").strip()
    if key.lower() in ("lanczos", "nearest", "none"):
        return ("lanczos" if key.lower() == "none" else key.lower()), None
    path = Path(key).expanduser()
    if path.is_file():
        return path.stem, str(path.absolute())
    items = list_upscalers(folder)
    for item in items:
        if item["path"] and key.lower() in (item["name"].lower(), item["key"].lower()):
            return item["name"], item["path"]
    known = ", ".join(i["name"] for i in items)
    where = f"in {folder}" if folder else "(give a model file, or a folder of them with --upscaler-dir)"
    raise RequestError(f"unknown upscaler {key!r}: known here are {known}; no model of that name {where}",
                       "upscaler")  # fmt: skip


def check_factor(scale: Any, image: Any, limits: Limits) -> int:
    """A whole factor from 1 to 8, and an output of at most four times the size limit per side."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or int(scale) != scale
        or not 1 <= scale <= MAX_FACTOR
    ):
        raise RequestError(f"expected a whole upscale factor from 1 to {MAX_FACTOR}, got {scale!r}", "scale")
    w, h = image.size[0] * int(scale), image.size[1] * int(scale)
    top = 4 * limits.max_side
    if max(w, h) > top:
        raise RequestError(f"the upscaled image would be {w}x{h}, over the limit of {top} pixels a side "
                           "(four times --max-size)", "scale")  # fmt: skip
    return int(scale)


def upscale_image(image: Any, scale: Any, upscaler: str | None = None, folder: str | None = None,
                  limits: Limits | None = None, tile: int = 512, device: str = "cpu") -> Upscaled:  # fmt: skip
    """`image` upscaled `scale` times with the named upscaler, as a PNG that keeps its text chunks."""
    from PIL.PngImagePlugin import PngInfo

    from ..upscale import upscale

    factor = check_factor(scale, image, limits or Limits())
    key, path = find_upscaler(upscaler, folder)
    try:
        out = upscale(image.convert("RGB"), factor, key if path is None else "model", model_path=path, tile=tile,
                      device=device)  # fmt: skip
    except ImportError as e:
        raise RequestError(f"{e} (learned upscalers need the upscale extra: pip install 'kandi[upscale]')",
                           "upscaler") from None  # fmt: skip
    shown = {"lanczos": "Lanczos", "nearest": "Nearest"}.get(key, key)
    info = PngInfo()
    for k, v in (getattr(image, "text", None) or {}).items():
        if k != "postprocessing":
            info.add_itxt(k, str(v))
    info.add_itxt("postprocessing", f"Postprocess upscale by: {factor}, Postprocess upscaler: {shown}")
    buf = io.BytesIO()
    out.save(buf, format="PNG", pnginfo=info)
    return Upscaled(out, buf.getvalue(), shown)
