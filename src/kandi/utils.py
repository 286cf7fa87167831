"""Image helpers that the diffusers examples import from `diffusers.utils`."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import PIL.Image
import PIL.ImageOps


def load_image(
    image: str | os.PathLike | PIL.Image.Image,
    convert_method: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None,
) -> PIL.Image.Image:
    """Open an image from a path or http(s) URL (or pass a PIL image through), EXIF-rotated, as RGB."""
    if isinstance(image, PIL.Image.Image):
        img = image
    elif isinstance(image, str | os.PathLike):
        img = _open(str(image))
    else:
        raise TypeError(f"load_image takes a path, URL or PIL image, got {type(image).__name__}")
    img = PIL.ImageOps.exif_transpose(img)
    return convert_method(img) if convert_method is not None else img.convert("RGB")


def _open(src: str) -> PIL.Image.Image:
    if src.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(src, timeout=30) as r:  # noqa: S310 (http(s) only, checked above)
                data = r.read()
        except OSError as e:
            raise ValueError(f"could not download the image {src}: {e}") from None
        return _decode(io.BytesIO(data), src)
    if not os.path.isfile(src):
        raise ValueError(f"image file not found: {src} (pass a path to an existing file or an http(s) URL)")
    return _decode(src, src)


def _decode(fp, name: str) -> PIL.Image.Image:
    try:
        img = PIL.Image.open(fp)
        img.load()
    except (PIL.UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name} is not a readable image ({e})") from None
    return img


def make_image_grid(
    images: list[PIL.Image.Image], rows: int, cols: int, resize: int | None = None
) -> PIL.Image.Image:
    """Tile `rows * cols` images (row-major) into one image; `resize` first makes each resize x resize."""
    if len(images) != rows * cols:
        raise ValueError(f"make_image_grid got {len(images)} images for a {rows}x{cols} grid")
    if resize is not None:
        images = [img.resize((resize, resize)) for img in images]
    w, h = images[0].size
    grid = PIL.Image.new("RGB", size=(cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid
