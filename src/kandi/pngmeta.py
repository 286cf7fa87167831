"""Generation parameters in PNG text chunks: AUTOMATIC1111's `parameters` text and kandi's own JSON.

`parameters` is what A1111, SD.Next, Civitai and PNG-info readers show: the prompt, a `Negative prompt:`
line when there is one, then one line of `key: value` pairs (A1111 `create_infotext`). The `kandi`
chunk holds every option as JSON (and the command, and each input file's path and SHA-256), so
`kandi COMMAND --from-png` can rebuild the request exactly.
PIL is imported inside the functions, so importing this module (the CLI does) stays free.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

PARAMETERS_KEY = "parameters"
KANDI_KEY = "kandi"


def quote(value: Any) -> str:
    """A1111's infotext quoting: JSON-quote a value only if it holds a separator (`,` `:` or newline)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_parameters(
    opts: dict[str, Any],
    *,
    sampler: str,
    size: tuple[int, int],
    version: str,
    extra: dict[str, Any] | None = None,
    prior: bool = True,
) -> str:
    """The A1111 `parameters` text of one image: `opts` holds its GenerationOptions fields and own seed.

    `extra` fields (e.g. img2img's `Denoising strength`) go before `Version`, which A1111 writes last;
    the prior's fields only for a model with a prior (2.x, not Kandinsky 3).
    """
    fields = {
        "Steps": opts["steps"],
        "Sampler": sampler,
        "CFG scale": float(opts["guidance_scale"]),
        "Seed": opts["seed"],
        "Size": f"{size[0]}x{size[1]}",
        "Model": opts["model"],
        **(
            {"Prior steps": opts["prior_steps"], "Prior CFG scale": float(opts["prior_guidance_scale"])}
            if prior
            else {}
        ),
        **(extra or {}),
        "Version": f"kandi {version}",
    }
    line = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items())
    # A1111 writes the negative line only for a non-empty negative prompt
    negative = f"\nNegative prompt: {opts['negative_prompt']}" if opts.get("negative_prompt") else ""
    return f"{opts['prompt']}{negative}\n{line}"


def describe(opts: dict[str, Any], info: dict[str, Any], size: tuple[int, int], version: str,
             fields: dict[str, Any] | None = None) -> tuple[str, str]:  # fmt: skip
    """The two text chunks of one image: (A1111 `parameters` text, kandi JSON).

    `opts` are the image's GenerationOptions fields (its own seed, one image); `info` what else the kandi
    chunk records: "sampler", "repos" (a "prior" of None means a model without one), "command", inputs.
    """
    text = format_parameters(opts, sampler=info["sampler"], size=size, version=version, extra=fields,
                             prior=(info.get("repos") or {}).get("prior") is not None)  # fmt: skip
    return text, json.dumps({"version": version, "options": opts, **info}, ensure_ascii=False)


def png_bytes(image: Any, params_text: str, options_json: str) -> bytes:
    """`image` encoded as PNG with both text chunks, in memory (what the server sends)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=_pnginfo(params_text, options_json))
    return buf.getvalue()


def _pnginfo(params_text: str, options_json: str) -> Any:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    _add_text(info, PARAMETERS_KEY, params_text)
    _add_text(info, KANDI_KEY, options_json)
    return info


def _add_text(info: Any, key: str, value: str) -> None:
    # tEXt is Latin-1 by the PNG spec and many readers decode it as UTF-8 anyway: keep it for pure ASCII
    # and put anything else (Russian, Chinese prompts) in a UTF-8 iTXt chunk
    if value.isascii():
        info.add_text(key, value)
    else:
        info.add_itxt(key, value)


def write_png(path: str | os.PathLike, image: Any, params_text: str, options_json: str) -> Path:
    """Save `image` as a PNG at `path` with both text chunks, atomically and never over an existing file."""
    return write_bytes_new(path, png_bytes(image, params_text, options_json))


def write_bytes_new(path: str | os.PathLike, data: bytes) -> Path:
    """`data` at `path`, atomically and never over an existing file: written to a temporary file in the
    same folder and then hard-linked to `path`, which fails with FileExistsError if `path` exists, so a
    reader never sees half a file and nothing is overwritten."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _publish(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # filesystems without hard links (FAT, some network shares): a rename, checked first
        if path.exists():
            raise FileExistsError(f"{path} exists") from None
        os.replace(tmp, path)


def read_png_text(path: str | os.PathLike | Any) -> dict[str, str]:
    """All text chunks (tEXt, zTXt, iTXt) of a PNG file (a path or a binary file object); ValueError if it
    is not a PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ValueError(f"{path} is a {im.format} image, not a PNG")
            return {k: str(v) for k, v in im.text.items()}
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not a PNG image") from None


def read_png_options(path: str | os.PathLike) -> dict[str, Any]:
    """The kandi JSON chunk of a PNG written by kandi: {"options": {...}, "repos": {...}, ...}."""
    text = read_png_text(path).get(KANDI_KEY)
    if text is None:
        raise ValueError(f"{path} has no kandi metadata")
    return parse_kandi(text, path)


def parse_kandi(text: str, path: Any = "the PNG") -> dict[str, Any]:
    """A kandi chunk's JSON, checked for what replaying needs (options with a prompt)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} has unreadable kandi metadata ({e})") from None
    opts = data.get("options") if isinstance(data, dict) else None
    if not isinstance(opts, dict) or not isinstance(opts.get("prompt"), str):
        raise ValueError(f"{path} has unreadable kandi metadata (no options with a prompt)")
    return data


_PAIR = re.compile(r'\s*([\w][\w \-/()]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """An A1111 `parameters` text back into fields: "Prompt", "Negative prompt" and each `key: value` of
    the last line (numbers as numbers, JSON-quoted values unquoted), as A1111's PNG-info shows them."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = _PAIR.findall(last)
    fields: dict[str, Any] = {}
    if len(pairs) >= 3:  # A1111's own test that the last line holds the settings
        lines = lines[:-1]
        for key, value in pairs:
            fields[key.strip()] = _value(value.strip())
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **fields}


def _value(text: str) -> Any:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text
