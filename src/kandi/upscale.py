"""Image upscaling: Lanczos / nearest (PIL), and learned upscalers (Real-ESRGAN, ESRGAN, SwinIR, ... files)
read by spandrel (`pip install 'kandi[upscale]'`), run in overlapping tiles so large images fit in memory.

kandi holds no network code for these models: spandrel recognises the architecture from the weights.
Weights are read safely (safetensors, or torch.load with weights_only=True) before spandrel sees them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# the tiling is shared with the MoVQ / VAE tiling; run_tiled and spans stay importable from here
from .models.tiling import run_tiled, spans  # noqa: F401

BUILTIN = {"lanczos": "Lanczos", "nearest": "Nearest"}
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
MAX_SCALE = 8
MAX_PASSES = 3  # a 2x model run again for 4x, as A1111 does, then resized to the exact size
_CACHE: dict[tuple[str, int, int, str], Any] = {}


# -------------------------------------------------------------------------------------- spandrel


@contextlib.contextmanager
def _placeholder_torchvision() -> Iterator[None]:
    """A stand-in `torchvision` only while spandrel is imported: spandrel imports it for two architectures
    (LaMa inpainting, RestoreFormer faces) that are no upscalers, and PyPI's torchvision does not import
    beside every torch build. Those two then fail when used; the stand-in is gone after the import."""

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise ImportError("this spandrel architecture needs torchvision, which is not installed")

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {n: sys.modules.get(n) for n in names}
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.__getattr__ = lambda name: missing  # type: ignore[method-assign]  # module-level __getattr__
    mods = [types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms"), fn]
    mods[0].transforms, mods[1].functional = mods[1], fn  # type: ignore[attr-defined]
    sys.modules.update(zip(names, mods))
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def spandrel() -> Any:
    """The spandrel module; ImportError with the install command when it is missing."""
    try:
        import spandrel as sp
    except ImportError as e:
        if not (e.name or "").startswith("torchvision") and "torchvision" not in str(e):
            raise ImportError(
                "learned upscalers need spandrel: pip install 'kandi[upscale]' (or pip install spandrel)"
            ) from None
    except RuntimeError:  # a torchvision built for another torch fails to register its operators
        pass
    else:
        return sp
    for name in [n for n in sys.modules if n == "spandrel" or n.startswith("spandrel.")]:
        del sys.modules[name]  # the half-done import
    with _placeholder_torchvision():
        import spandrel as sp
    return sp


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An upscaler's state dict, read safely; ValueError for other files."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"upscaler model {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # safetensors' own error types for damaged files
            raise ValueError(f"upscaler model {p} is not a readable safetensors file ({e})") from None
    if p.suffix not in MODEL_SUFFIXES:
        raise ValueError(f"upscaler model {p} has suffix {p.suffix!r}; accepted: {', '.join(MODEL_SUFFIXES)}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them (or TorchScript archives): refused
        raise ValueError(f"upscaler model {p} cannot be read safely as a state dict ({e})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"upscaler model {p} does not hold a state dict")
    return sd


def load_upscaler(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """A learned upscaler (spandrel ImageModelDescriptor, in eval mode on `device`), cached by file."""
    p = Path(path)
    st = p.stat() if p.is_file() else None
    key = (str(p.resolve()), st.st_size if st else 0, st.st_mtime_ns if st else 0, str(device))
    if key not in _CACHE:
        sp = spandrel()
        sd = sp.canonicalize_state_dict(read_weights(p))
        try:
            model = sp.ModelLoader().load_from_state_dict(sd)
        except sp.UnsupportedModelError:
            raise ValueError(f"{p.name} is no upscaler architecture that spandrel knows") from None
        if not isinstance(model, sp.ImageModelDescriptor) or model.purpose not in ("SR", "Restoration"):
            raise ValueError(
                f"{p.name} is a {model.architecture.name} model for {model.purpose}, not an upscaler"
            )
        _CACHE.clear()  # one learned upscaler in memory at a time
        _CACHE[key] = model.to(device).eval()
    return _CACHE[key]


# ----------------------------------------------------------------------------------------- tiling


# ---------------------------------------------------------------------------------------- upscaling


def _to_tensor(image: Any) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)


def _to_pil(x: torch.Tensor) -> Any:
    import PIL.Image

    # in place, then one uint8 copy: for a large output no second float image is made
    arr = x[0].clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return PIL.Image.fromarray(arr)


def _check(image: Any, scale: float, upscaler: str, model_path: Any) -> str:
    import PIL.Image

    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"upscale takes a PIL image, not {type(image).__name__}")
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"upscale factor {scale} is out of range; accepted: 1 to {MAX_SCALE}")
    key = upscaler.strip().lower()
    if key not in BUILTIN and key != "model" and not model_path:
        raise ValueError(
            f"unknown upscaler {upscaler!r}: use {' or '.join(BUILTIN)}, or give a learned upscaler's model_path"
        )
    return key


def resize_to(image: Any, size: tuple[int, int], upscaler: str = "lanczos", model_path: Any = None,
              tile: int = 512, overlap: int = 48, device: str | torch.device = "cpu") -> Any:  # fmt: skip
    """`image` at exactly `size` (W, H): PIL Lanczos / nearest, or a learned upscaler run (up to 3 times)
    until it is at least that large, then Lanczos to the exact size."""
    import PIL.Image

    w, h = size
    key = _check(image, max(w / image.width, h / image.height, 1), upscaler, model_path)
    if key in BUILTIN:
        resample = PIL.Image.LANCZOS if key == "lanczos" else PIL.Image.NEAREST
        return image.convert("RGB").resize((w, h), resample=resample)
    model = load_upscaler(model_path, device)
    out = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if out.width >= w and out.height >= h:
            break
        out = _run_model(model, out, tile, overlap, device)
    return out if out.size == (w, h) else out.resize((w, h), resample=PIL.Image.LANCZOS)


@torch.inference_mode()  # spandrel's outputs are inference tensors: the in-place steps run in this mode
def _run_model(model: Any, image: Any, tile: int, overlap: int, device: str | torch.device) -> Any:
    x = _to_tensor(image).to(device=device, dtype=next(model.model.parameters()).dtype)
    # the descriptor pads each tile to the architecture's size requirements and crops the result back
    return _to_pil(run_tiled(model, x, int(model.scale), tile, overlap))


def resize_cover(image: Any, size: tuple[int, int], upscaler: str = "lanczos", model_path: Any = None,
                 tile: int = 512, overlap: int = 48, device: str | torch.device = "cpu") -> Any:  # fmt: skip
    """`image` scaled to cover `size` (W, H) keeping its aspect ratio, then centre-cropped to it."""
    w, h = size
    s = max(w / image.width, h / image.height)
    cw, ch = max(w, round(image.width * s)), max(h, round(image.height * s))
    out = resize_to(image, (cw, ch), upscaler, model_path, tile, overlap, device)
    left, top = (cw - w) // 2, (ch - h) // 2
    return out if (cw, ch) == (w, h) else out.crop((left, top, left + w, top + h))


def upscale(image: Any, scale: int, upscaler: str = "lanczos", model_path: str | os.PathLike | None = None,
            tile: int = 512, overlap: int = 48, device: str | torch.device = "cpu") -> Any:  # fmt: skip
    """`image` (PIL) `scale` times larger: "lanczos", "nearest", or a learned upscaler's `model_path`
    (`upscaler` is then its name, e.g. the file stem), run in `tile`-px tiles (0: whole image at once)."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or int(scale) != scale:
        raise ValueError(f"upscale factor {scale!r} must be a whole number from 1 to {MAX_SCALE}")
    if tile < 0 or overlap < 0 or (tile and overlap * 2 >= tile):
        raise ValueError(
            f"tile {tile} / overlap {overlap}: need tile >= 0 and, when tiling, overlap < tile / 2"
        )
    _check(image, int(scale), upscaler, model_path)
    size = (image.width * int(scale), image.height * int(scale))
    key = upscaler.strip().lower()
    return resize_to(image, size, key if key in BUILTIN else "model", model_path, tile, overlap, device)


def list_upscalers(folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The built-in upscalers, then the model files of `folder` (and its subfolders): name, path, as
    A1111's /sdapi/v1/upscalers lists them (the scale is only known once a model is loaded)."""
    items: list[dict[str, Any]] = [
        {"name": shown, "key": key, "path": None} for key, shown in BUILTIN.items()
    ]
    root = Path(folder) if folder else None
    if root is not None and root.is_dir():
        for p in sorted(q for q in root.rglob("*") if q.is_file() and q.suffix in MODEL_SUFFIXES):
            items.append({"name": p.stem, "key": p.stem, "path": str(p)})
    return items
