"""Replaying a PNG (`--from-png`): its recorded request, from kandi's own chunk or from the `parameters`
chunk that AUTOMATIC1111 (and kandi) write.

A kandi PNG gives back everything (options, model repos, input files with their SHA-256, device and
dtype). A PNG from another tool gives what its A1111 text holds: prompt, negative prompt, steps,
sampler, CFG scale, seed, size and model, each taken when kandi can use it; what could not be taken is
said in `notes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pngmeta import KANDI_KEY, PARAMETERS_KEY, parse_kandi, parse_parameters
from .models import registered
from .requests import NUMBERS, RequestError, UsageError

A1111_FIELDS = {"Steps": "steps", "CFG scale": "guidance_scale", "Seed": "seed", "Prior steps": "prior_steps",
                "Prior CFG scale": "prior_guidance_scale"}  # fmt: skip
IGNORED = {"Version", "Model hash", "Denoising strength"}  # said elsewhere, or nothing to take


def read_png_text(path: str | Path) -> dict[str, str]:
    """A PNG's text chunks; a file that is no PNG, or a damaged one, is a RequestError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise RequestError(f"{path} is a {im.format} image, not a PNG")
            im.load()  # the text chunks after the image data are read only with it
            return {k: str(v) for k, v in im.text.items()}
    except UnidentifiedImageError:
        raise RequestError(f"{path} is not a PNG image") from None
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, RequestError):
            raise
        raise RequestError(f"{path} is a damaged PNG ({e})") from None


def recorded(path: str | Path, command: str) -> dict[str, Any]:
    """What `path` records, as kandi's chunk is laid out ({"options": ..., "repos": ..., ...}); it must
    come from the same command (an inpainting is no text to image)."""
    texts = read_png_text(path)
    if KANDI_KEY in texts:
        data = _kandi(texts[KANDI_KEY], path)
    elif PARAMETERS_KEY in texts:
        data = from_parameters(texts[PARAMETERS_KEY], path)
    else:
        raise RequestError(f"{path} has no kandi metadata and no A1111 parameters: nothing to make again")
    made_by = data.get("command", "generate")
    if made_by != command:
        raise UsageError(f"{path} was made by `kandi {made_by}`: run `kandi {made_by} --from-png {path}`")
    return data


def _kandi(text: str, path: str | Path) -> dict[str, Any]:
    try:
        return parse_kandi(text, path)
    except ValueError as e:
        raise RequestError(str(e)) from None


def from_parameters(text: str, path: str | Path = "the PNG") -> dict[str, Any]:
    """An A1111 `parameters` text as a recorded text-to-image request, with `notes` on what was left."""
    p = parse_parameters(text)
    opts: dict[str, Any] = {
        "prompt": p.get("Prompt") or "",
        "negative_prompt": p.get("Negative prompt") or None,
    }
    notes: list[str] = []
    for key, name in A1111_FIELDS.items():
        if key in p:
            try:
                opts[name] = NUMBERS[name](p[key])
            except ValueError:
                notes.append(f"{key} {p[key]!r}")
    size = str(p.get("Size", ""))
    w, _, h = size.partition("x")
    if w.isdigit() and h.isdigit():
        opts["width"], opts["height"] = int(w), int(h)
    elif size:
        notes.append(f"Size {size!r}")
    sampler = str(p.get("Sampler", "")).strip()
    if sampler:
        from ..schedulers.names import from_a1111

        name, said = from_a1111(sampler, p.get("Schedule type"))
        if name is not None:
            opts["scheduler"] = name
        notes += said
    model = str(p.get("Model", "")).strip()
    spec = registered(model) if model else None
    if spec is not None:
        opts["model"] = spec.name
    elif model:
        notes.append(f"Model {model!r} (not a Kandinsky model kandi knows: the default model is used)")
    taken = {
        "Prompt",
        "Negative prompt",
        "Size",
        "Sampler",
        "Schedule type",
        "Model",
        *A1111_FIELDS,
        *IGNORED,
    }
    notes += [f"{k}: {p[k]}" for k in p if k not in taken]
    return {"command": "generate", "options": opts, "notes": notes, "source": "parameters"}
