"""What clients send, checked before any model work: limits, and images decoded from base64 safely.

An upload is refused before decoding when its bytes pass the limit, and when the size its header
declares passes the pixel limit (a decompression bomb: a few KB of PNG that inflate to gigabytes).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from ..engine.requests import Limits as EngineLimits
from ..engine.requests import RequestError

__all__ = ["FieldError", "Limits", "decode_image", "decode_mask", "encode_png_base64"]


@dataclass(frozen=True)
class Limits(EngineLimits):
    """A server's limits: the engine's, with the stricter defaults of a machine shared by many clients
    (the `kandi serve` options of the same names)."""

    max_side: int = 2048
    max_steps: int = 200
    max_images: int = 8


class FieldError(RequestError):
    """A request field with a bad value: answered as `status` with the field's name in the JSON error."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}", field, status)
        self.message = message


def decode_image(data: Any, field: str, limits: Limits) -> Any:
    """A base64 string (or data: URL) of a PNG/JPEG/WebP... as an RGB PIL image, within `limits`."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data.strip():
        raise FieldError(field, "expected an image as a base64 string (or a data: URL)")
    text = data.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise FieldError(field, "a data: URL must be base64 encoded (data:image/png;base64,...)")
    if len(text) * 3 // 4 > limits.max_upload_bytes:
        raise FieldError(field, f"the image is over this server's upload limit of {limits.max_upload_bytes} bytes",
                         413)  # fmt: skip
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise FieldError(field, "not valid base64") from None
    try:
        im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise FieldError(field, f"the image declares a size over this server's limit of "
                         f"{limits.max_upload_pixels} pixels", 413) from None  # fmt: skip
    except (UnidentifiedImageError, OSError):
        raise FieldError(field, "not an image kandi can read (PNG, JPEG, WebP, BMP, GIF, TIFF)") from None
    w, h = im.size
    if w * h > limits.max_upload_pixels:
        raise FieldError(field, f"the image is {w}x{h}, over this server's limit of {limits.max_upload_pixels} "
                         "pixels", 413)  # fmt: skip
    try:
        im.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise FieldError(field, f"the image is damaged or cut short ({e})") from None
    return im


def decode_mask(data: Any, field: str, limits: Limits, invert: bool = False) -> Any:
    """A mask upload as a PIL "L" image, white = repaint (as the CLI's mask files); an image with
    transparency (a brush layer) counts its opaque pixels as white. `invert`: black = repaint (A1111's
    inpainting_mask_invert)."""
    from PIL import ImageOps

    im = decode_image(data, field, limits)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = im.convert("RGBA").getchannel("A")
        mask = alpha if alpha.getextrema()[0] < 255 else im.convert("L")
    else:
        mask = im.convert("L")
    return ImageOps.invert(mask) if invert else mask


def encode_png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
