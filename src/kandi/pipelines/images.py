"""Image, mask and hint inputs: what users pass (PIL, numpy, tensors, files) to what the models take.

The conversions that diffusers' Kandinsky pipelines do are reproduced value for value (so outputs
match), and the inputs diffusers trips over (RGBA, greyscale, 16-bit, wrong sizes, file paths) are
converted first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageFilter
import torch
import torch.nn.functional as F

ImageInput = Any  # PIL image, numpy array, torch tensor, path, or a list of them


# ------------------------------------------------------------------------------------- any -> PIL


def open_image(path: str | os.PathLike, name: str = "image") -> PIL.Image.Image:
    from ..utils import load_image

    try:
        return load_image(path, convert_method=lambda im: im)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode as 8-bit RGB: alpha composited over white, 16-bit and float greyscale rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = PIL.Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = PIL.Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = PIL.Image.alpha_composite(white, img)
    return img.convert("RGB")


def array_to_pil(a: np.ndarray, name: str) -> PIL.Image.Image:
    """An (H, W), (H, W, 1|3|4) array: uint8 / uint16 as such, floats read as [0, 1]."""
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        pass
    elif a.ndim != 2:
        raise ValueError(f"{name}: an array must be (H, W) or (H, W, 1|3|4), got shape {list(a.shape)}")
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(a, 0, 1) * 255.0).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise TypeError(f"{name}: arrays must be uint8, uint16 or float in [0, 1], got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return PIL.Image.fromarray(a)


def as_pil(image: Any, name: str) -> PIL.Image.Image:
    """One image of any accepted kind (PIL, path, numpy) as an RGB PIL image."""
    if isinstance(image, str | os.PathLike):
        image = open_image(image, name)
    elif isinstance(image, np.ndarray):
        image = array_to_pil(image, name)
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(
            f"{name} must be a PIL image, a numpy array, a torch tensor or a file path, got {type(image).__name__}"
        )
    return to_rgb(image)


def as_list(x: Any) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def check_present(value: Any, name: str) -> None:
    if value is None or (isinstance(value, list | tuple) and len(value) == 0):
        raise ValueError(f"{name} is required: pass a PIL image, numpy array, torch tensor or file path")


# ------------------------------------------------------------------------ decoder img2img inputs


def preprocess(images: ImageInput, height: int, width: int, name: str = "image") -> torch.Tensor:
    """Images to a (B, 3, height, width) tensor in [-1, 1], as diffusers' VaeImageProcessor does.

    PIL images are resized bicubic (reducing_gap 1) to exactly (width, height); tensors are expected in
    [0, 1] (or already [-1, 1]) and resized nearest when their size differs.
    """
    check_present(images, name)
    items = as_list(images)
    if all(isinstance(i, torch.Tensor) for i in items):
        return _tensor_images(items, height, width, name)
    pils = [as_pil(i, name) if not isinstance(i, torch.Tensor) else _refuse_mix(name) for i in items]
    pils = [_rgb_resized(p, height, width) for p in pils]
    arr = np.stack([np.array(p).astype(np.float32) / 255.0 for p in pils])
    return 2.0 * torch.from_numpy(arr.transpose(0, 3, 1, 2)) - 1.0


def native_size(images: ImageInput, multiple: int, name: str = "image") -> tuple[int, int]:
    """(H, W) of the first image, rounded down to `multiple` (at least one multiple): the size an img2img
    without height/width (Kandinsky 3) works at. diffusers rounds to 8 and then fails in the UNet when
    the size is not a multiple of 64; kandi rounds to what the UNet takes."""
    check_present(images, name)
    first = as_list(images)[0]
    if isinstance(first, torch.Tensor):
        h, w = first.shape[-2:]
    else:
        w, h = as_pil(first, name).size
    return tuple(max(multiple, v // multiple * multiple) for v in (int(h), int(w)))


def _rgb_resized(img: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    return img.resize((width, height), resample=PIL.Image.BICUBIC, reducing_gap=1)


def _refuse_mix(name: str):
    raise TypeError(f"{name}: do not mix torch tensors with other image types in one list")


def _tensor_images(items: list[torch.Tensor], height: int, width: int, name: str) -> torch.Tensor:
    x = torch.cat([t if t.ndim == 4 else t[None] for t in items])
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"{name}: tensors must be (3, H, W) or (B, 3, H, W) images, got shape {list(x.shape)}"
        )
    if x.shape[1] == 4:
        raise ValueError(
            f"{name}: a 4-channel tensor looks like MoVQ latents; pass images (3 channels, values in [0, 1])"
        )
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.float()
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width))
    return x if x.min() < 0 else 2.0 * x - 1.0


def postprocess(image: torch.Tensor, output_type: str) -> Any:
    """Decoded [-1, 1] images as the img2img pipelines return them ("pt" in [0, 1])."""
    from .common import to_output

    return to_output(image, output_type, raw_pt=False)


# ---------------------------------------------------------------------------------- inpainting


def prepare_inpaint(
    image: ImageInput, mask: ImageInput, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep mask, image) as diffusers' Kandinsky inpainting prepares them.

    Masks: white / 1 = repaint, black / 0 = keep (diffusers >= 0.19), binarised at 0.5; returned
    inverted (1 = keep). PIL masks are resized LANCZOS, images bicubic, to (width, height).
    """
    check_present(image, "image")
    check_present(mask, "mask_image")
    if isinstance(image, torch.Tensor):
        return _tensor_inpaint(image, mask)
    if isinstance(mask, torch.Tensor):
        raise TypeError("mask_image is a torch.Tensor but image is not: pass both as tensors, or neither")
    imgs = [_rgb_resized(as_pil(i, "image"), height, width) for i in as_list(image)]
    x = torch.from_numpy(np.stack([np.array(i) for i in imgs]).transpose(0, 3, 1, 2)).float() / 127.5 - 1.0
    m = torch.from_numpy(np.concatenate([_mask_array(m, height, width)[None, None] for m in as_list(mask)]))
    m = (m >= 0.5).to(torch.float32)
    _same_batch(x, m)
    return 1 - m, x


def _mask_array(mask: Any, height: int, width: int) -> np.ndarray:
    """One mask as float32 (H, W) in [0, 1]; PIL (any mode, any size) resized to (width, height)."""
    if isinstance(mask, str | os.PathLike):
        mask = open_image(mask, "mask_image")
    if isinstance(mask, PIL.Image.Image):
        mask = mask_to_l(mask).resize((width, height), resample=PIL.Image.LANCZOS)
        return np.array(mask).astype(np.float32) / 255.0
    if isinstance(mask, np.ndarray):
        a = mask.astype(np.float32)
        if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
            a = a[..., :3].mean(-1) if a.shape[-1] >= 3 else a[..., 0]
        if a.ndim != 2:
            raise ValueError(
                f"mask_image: an array must be (H, W) or (H, W, C), got shape {list(mask.shape)}"
            )
        if mask.dtype == np.uint8:
            a = a / 255.0
        elif mask.dtype == np.uint16:
            a = a / 65535.0
        if a.shape != (height, width):  # diffusers never resizes numpy masks; a mismatch would crash later
            a = np.array(PIL.Image.fromarray(a).resize((width, height), resample=PIL.Image.NEAREST))
        return a
    raise TypeError(
        f"mask_image must be a PIL image, numpy array, torch tensor or file path, got {type(mask).__name__}"
    )


def mask_to_l(mask: PIL.Image.Image) -> PIL.Image.Image:
    """A mask image as 8-bit greyscale; an RGBA mask whose colour is empty uses its alpha."""
    if mask.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb(mask).convert("L")
    if mask.mode in ("RGBA", "LA") and not np.asarray(mask.convert("RGB")).any():
        return mask.getchannel("A")
    return mask.convert("L")


def _tensor_inpaint(image: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(mask, torch.Tensor):
        raise TypeError("image is a torch.Tensor but mask_image is not: pass both as tensors, or neither")
    if image.ndim == 3:
        image = image[None]
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None] if mask.shape[0] == 1 else mask[:, None]
    if image.ndim != 4 or image.shape[1] != 3 or mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"image must be (B, 3, H, W) and mask_image (B, 1, H, W); got {list(image.shape)} and {list(mask.shape)}"
        )
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"image is {list(image.shape[-2:])} but mask_image is {list(mask.shape[-2:])}: they must match"
        )
    if image.min() < -1 or image.max() > 1:
        raise ValueError("image tensors for inpainting must hold values in [-1, 1]")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask_image tensors must hold values in [0, 1]")
    m = (mask >= 0.5).to(torch.float32)  # a new tensor: the caller's mask is left as it was
    _same_batch(image, m)
    return 1 - m, image.to(torch.float32)


def _same_batch(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.shape[0] != mask.shape[0] and 1 not in (image.shape[0], mask.shape[0]):
        raise ValueError(
            f"got {image.shape[0]} images but {mask.shape[0]} masks: pass one mask per image, or one for all"
        )


_DILATE = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])


def grow_repaint(keep: torch.Tensor) -> torch.Tensor:
    """Grow the repaint area (keep == 0) by one latent pixel, towards the six neighbours diffusers uses.

    Same result as diffusers' `prepare_mask` double loop (up, down, left, right and the two diagonals
    up-left / down-right, copied from the original Kandinsky code), as one convolution.
    """
    repaint = (keep < 1).to(torch.float32)
    k = _DILATE.to(repaint.device)[None, None]
    grown = F.conv2d(repaint, k, padding=1) > 0
    return (~grown).to(keep.dtype)


# --------------------------------------------------------------------------------------- hints


def prepare_hint(hint: Any, height: int, width: int, batch: int) -> torch.Tensor:
    """A ControlNet hint as (B, 3, height, width) in [0, 1].

    Tensors are used as given (diffusers' contract) and resized bilinearly if their size differs; PIL
    images, arrays and files (e.g. depth maps, greyscale or 16-bit) become 3-channel [0, 1] tensors.
    """
    check_present(hint, "hint")
    items = as_list(hint)
    if all(isinstance(h, torch.Tensor) for h in items):
        x = torch.cat([h if h.ndim == 4 else h[None] for h in items])
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"hint tensors must be (B, 3, H, W) (or 1 channel), got shape {list(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    else:
        pils = [as_pil(h, "hint") if not isinstance(h, torch.Tensor) else _refuse_mix("hint") for h in items]
        arr = np.stack([np.array(p.resize((width, height), resample=PIL.Image.BICUBIC)) for p in pils])
        x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False)
    if x.shape[0] not in (1, batch):
        raise ValueError(
            f"got {x.shape[0]} hints for {batch} image embeddings: pass one per embedding, or one for all"
        )
    return x


def match_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Repeat a single input for every embedding; otherwise the counts must agree."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(
        f"got {x.shape[0]} {name}s for {batch} image embeddings: pass one per embedding, or one for all"
    )


# --------------------------------------------------------------------------- outpainting, paste


def outpaint_canvas(
    image: PIL.Image.Image, left: int, top: int, right: int, bottom: int
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The image on a larger canvas, and the mask of the new margins (white = to paint).

    The margins are filled by stretching the border pixels outward and blurring, a neutral start that
    keeps colours continuous at the seam (the model repaints them anyway).
    """
    for name, v in (("left", left), ("top", top), ("right", right), ("bottom", bottom)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"outpaint margin {name} must be a whole number of pixels >= 0, got {v!r}")
    if left + top + right + bottom == 0:
        raise ValueError("outpaint margins are all 0: give at least one side to extend")
    w, h = image.size
    arr = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    canvas = PIL.Image.fromarray(arr).filter(PIL.ImageFilter.GaussianBlur(radius=8))
    canvas.paste(image, (left, top))
    mask = PIL.Image.new("L", canvas.size, 255)
    mask.paste(0, (left, top, left + w, top + h))
    return canvas, mask


def paste_back(
    original: torch.Tensor, result: torch.Tensor, keep: torch.Tensor, feather: int = 0
) -> torch.Tensor:
    """`result` where the mask repaints (keep < 0.5), `original` elsewhere, exactly.

    Images (B, 3, H, W), keep mask (B, 1, H, W). With `feather` > 0 the blend ramps up over that many
    pixels inside the repainted area, so the seam is soft while every kept pixel stays the original:
    repeated inpainting passes then never drift in colour through MoVQ round trips.
    """
    repaint = (keep < 0.5).to(result.dtype)
    alpha = repaint
    if feather > 0:
        shrunk = -F.max_pool2d(-repaint, 2 * feather + 1, stride=1, padding=feather)
        alpha = _blur(shrunk, feather / 2) * repaint
    return alpha * result + (1 - alpha) * original


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W), edges replicated."""
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def outpaint_margins(
    width: int, height: int, left: int, top: int, right: int, bottom: int, multiple: int = 64
) -> tuple[int, int, int, int]:
    """Margins grown (right and bottom) so the canvas is a multiple of `multiple` pixels each way.

    The extra strip is generated too and cropped off afterwards, so the requested canvas comes out
    exactly, and the original pixels are never resampled.
    """
    w, h = width + left + right, height + top + bottom
    return left, top, right + (-w) % multiple, bottom + (-h) % multiple


def image_size(images: Sequence[Any]) -> tuple[int, int] | None:
    """(height, width) of the first image of a list, if it has one."""
    first = images[0] if images else None
    if isinstance(first, PIL.Image.Image):
        return first.height, first.width
    if isinstance(first, np.ndarray) and first.ndim >= 2:
        return first.shape[0], first.shape[1]
    if isinstance(first, torch.Tensor) and first.ndim >= 3:
        return first.shape[-2], first.shape[-1]
    return None
