"""What a shell asks of the engine: one `Request` type, the task vocabulary, and every value check.

The CLI, the server and the batch runner turn their input (argparse, JSON bodies, job lines) into a
`Request`; each check below exists once and raises `RequestError` naming the field, so every shell
refuses the same values with the same words, before any model work.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
OTHER_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


class RequestError(ValueError):
    """A request value kandi cannot take: `field` names it (in the shell's own spelling where it differs),
    `status` is the HTTP answer the server gives."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)  # the message names the field in its own words
        self.field, self.message, self.status = field, message, status


class UsageError(RequestError):
    """A mistake in what was asked (on the command line: exit status 2)."""


# -------------------------------------------------------------------------------------------- tasks


class TaskRow(NamedTuple):
    name: str  # the task generator in pipelines.k22_tasks / k3_tasks
    command: str  # the kandi command that makes it (recorded in the PNG, for --from-png)
    role: str  # which decoder of a model: "decoder", "inpaint" or "controlnet"
    api: str  # the native API's URL name
    families: tuple[str, ...]  # the model families that can do it


TASKS: dict[str, TaskRow] = {
    row.name: row
    for row in (
        TaskRow("text_to_image", "generate", "decoder", "txt2img", ("k21", "k22", "k3", "k31", "k5")),
        TaskRow("image_to_image", "img2img", "decoder", "img2img", ("k21", "k22", "k3", "k31", "k5i2i")),
        TaskRow("inpaint", "inpaint", "inpaint", "inpaint", ("k21", "k22", "k31")),
        TaskRow("outpaint", "inpaint", "inpaint", "inpaint", ("k21", "k22", "k31")),
        TaskRow("mix", "mix", "decoder", "mix", ("k21", "k22")),
        TaskRow("controlnet", "controlnet", "controlnet", "controlnet", ("k22",)),
    )
}
COMMANDS = ("generate", "img2img", "inpaint", "mix", "controlnet")
COMMAND_ROLES = {"generate": "decoder", "img2img": "decoder", "inpaint": "inpaint", "mix": "decoder",
                 "controlnet": "controlnet"}  # fmt: skip


def tasks_of(family: str) -> list[str]:
    return [name for name, row in TASKS.items() if family in row.families]


# ------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """How big a request may be, checked before any model loads; every shell has options to raise them
    (`--max-size`, `--max-steps`, `--max-images`, `--max-prompt`)."""

    max_side: int = 4096  # width and height, pixels
    max_steps: int = 1000
    max_images: int = 64  # per request
    max_prompt: int = 4000  # characters; the text encoders read 77 (CLIP) or 128 (T5) tokens
    max_upload_bytes: int = 16 * 2**20  # one image upload (server)
    max_upload_pixels: int = 4096 * 4096  # one image upload, as its header declares (server)

    @property
    def max_body_bytes(self) -> int:
        # base64 grows bytes by 4/3; a request may carry an image, a mask and a few mix images
        return 6 * (self.max_upload_bytes * 4 // 3) + 2**20


SERVER_PHRASES = {"server": "yes"}  # the server's requests: limits are "this server's", set by its operator


def check_limits(limits: Limits, *, width: int | None = None, height: int | None = None,
                 steps: int | None = None, num_images: int | None = None, prior_steps: int | None = None,
                 names: dict[str, str] | None = None) -> None:  # fmt: skip
    """RequestError naming the first value past a limit; `names` spells the fields as the shell does."""
    names = names or {}
    hint = {"max_side": "--max-size", "max_steps": "--max-steps", "max_images": "--max-images"}
    for key, value, top in (("width", width, "max_side"), ("height", height, "max_side"),
                            ("steps", steps, "max_steps"), ("prior_steps", prior_steps, "max_steps"),
                            ("num_images", num_images, "max_images")):  # fmt: skip
        if value is not None and value > getattr(limits, top):
            name = names.get(key, key)
            if "server" in names:  # a client cannot raise a server's limits: no option to name
                raise RequestError(
                    f"{name}: {value} is over this server's limit of {getattr(limits, top)}", name
                )
            raise RequestError(f"{name} {value} is over the limit of {getattr(limits, top)} (raise it with "
                               f"{hint[top]})", name)  # fmt: skip


def check_prompt(
    text: str | None, limits: Limits, name: str = "prompt", names: dict[str, str] | None = None
) -> None:
    if text is not None and len(text) > limits.max_prompt:
        if "server" in names:
            raise RequestError(f"{name}: {len(text)} characters is over this server's limit of {limits.max_prompt}",
                               name)  # fmt: skip
        raise RequestError(
            f"the {name.replace('_', ' ')} is {len(text)} characters, over the limit of {limits.max_prompt} "
            "(the text encoders read only the first 77 tokens, 128 for Kandinsky 3; raise it with --max-prompt)",
            name,
        )


def check_seeds(seed: int, n: int, name: str = "seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(
            f"{name}: expected an integer from 0 to {MAX_SEED}, or -1 for random, got {seed}", name
        )
    if seed + n - 1 > MAX_SEED:
        raise RequestError(f"seeds {seed} to {seed + n - 1} pass the largest seed {MAX_SEED}", name)


def random_seed() -> int:
    """The seed of a request that asks for a random one (the only place kandi draws one)."""
    import secrets

    return secrets.randbelow(2**31)


# ------------------------------------------------------------------------------ values typed as text


def _parser(conv: Any, ok: Any, what: str) -> Any:
    """A parser of typed text (or a JSON value) that converts with `conv` and accepts what passes `ok`;
    ValueError says what was expected."""

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            value = None
        try:
            out = conv(str(value)) if value is not None else None
        except ValueError:
            out = None
        if out is None or not ok(out):
            raise ValueError(f"expected {what}, got {value!r}")
        return out

    parse.what = what
    return parse


positive_int = _parser(int, lambda v: v >= 1, "a positive integer")
finite_float = _parser(float, math.isfinite, "a finite number")
unit_float = _parser(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
pixels_int = _parser(int, lambda v: v >= 0, "a whole number of pixels >= 0")
whole_int = _parser(int, lambda v: v >= 0, "a whole number >= 0")
seed_int = _parser(int, lambda v: -1 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}, or -1 for random")
NUMBERS = {  # the numeric GenerationOptions fields, checked the same way typed, read from a PNG or a job
    "width": positive_int,
    "height": positive_int,
    "steps": positive_int,
    "prior_steps": positive_int,
    "num_images": positive_int,
    "guidance_scale": finite_float,
    "prior_guidance_scale": finite_float,
    "seed": seed_int,
}


def margins(value: Any) -> tuple[int, int, int, int]:
    """Outpainting margins LEFT,TOP,RIGHT,BOTTOM: "32,0,32,0", [32, 0, 32, 0] or {"left": 32, ...};
    four whole numbers of pixels >= 0, not all 0."""
    if isinstance(value, dict):
        unknown = set(value) - {"left", "top", "right", "bottom"}
        value = None if unknown else [value.get(k, 0) for k in ("left", "top", "right", "bottom")]
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    try:
        values = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or not any(values):
        raise ValueError(
            "expected LEFT,TOP,RIGHT,BOTTOM (or a list of four, or left/top/right/bottom fields): four whole "
            f"numbers of pixels >= 0, not all 0; got {value!r}"
        )
    return values


DTYPES = {
    **dict.fromkeys(("fp32", "float32"), "float32"),
    **dict.fromkeys(("fp16", "float16", "half"), "float16"),
    **dict.fromkeys(("bf16", "bfloat16"), "bfloat16"),
}


def dtype_name(text: str) -> str:
    name = DTYPES.get(str(text).lower())
    if name is None:
        raise ValueError(f"expected fp32, fp16 or bf16, got {text!r}")
    return name


def default_size(image: Any) -> tuple[int, int]:
    """An input's (width, height), each rounded to the nearest multiple of 64 (the 2.2 decoder's)."""
    return tuple(max(64, int(v / 64 + 0.5) * 64) for v in image.size)


# ------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """An input image: opened, and (for a file) its absolute path and SHA-256, which the PNG records so
    `--from-png` makes the image again only from the very same file."""

    image: Any  # PIL image
    path: Path | None = None
    sha256: str | None = None

    def record(self) -> dict[str, str] | None:
        return None if self.path is None else {"path": str(self.path), "sha256": self.sha256}


def open_input(path: str | Path, name: str) -> Input:
    from ..pipelines.images import open_image

    p = Path(path).expanduser().absolute()
    image = open_image(p, name)
    return Input(image, p, file_sha256(p, name))


def file_sha256(path: Path, name: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise RequestError(f"{name}: cannot read {str(path)!r} ({e.strerror or e})", name) from None
    return h.hexdigest()


class MixItem(NamedTuple):
    """One ingredient of a mix: a text, or an image (None: the file the --from-png image was made from)."""

    kind: str  # "text" or "image"
    value: Any  # str for a text; Input, or None, for an image
    weight: float


# ------------------------------------------------------------------------------------------ request

# How messages name what a request lacks or must change; a shell may say it in its own words (the CLI
# names its arguments: see cli.common.CLI_PHRASES).
PHRASES = {
    "prompt": "a prompt",
    "image": "an image",
    "mask": "a mask (white = repaint) or outpaint margins",
    "hint": "a hint (a depth map)",
    "file:image": "image",
    "file:mask": "mask",
    "file:hint": "hint",
    "file:init": "image",
    "feather": "feather blends the pasted-back pixels: set paste_back",
    "outpaint size": "outpainting sets the size (the image plus the margins): leave out width and height",
    "outpaint paste": "outpainting always keeps the original pixels: leave paste_back on",
    "strength": "strength needs an image to start from",
    "mix": "mix needs items: texts and images with weights",
    "from-png": "",
}


@dataclass
class Request:
    """One request to the engine, whichever shell it came from. None means "not given": the planner fills
    it from the PNG being replayed (`recorded`), else from the model's and the task's defaults."""

    command: str = "generate"  # generate, img2img, inpaint, mix, controlnet
    prompt: str | None = None
    negative_prompt: str | None = None
    model: str | None = None  # a registry name, a folder or a hub id
    prior: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    prior_steps: int | None = None
    guidance_scale: float | None = None
    prior_guidance_scale: float | None = None
    seed: int | None = None  # None or -1: random
    num_images: int | None = None
    scheduler: str | None = None
    # the task's own inputs
    image: Input | None = None
    mask: Input | None = None
    hint: Input | None = None
    outpaint: tuple[int, int, int, int] | None = None
    strength: float | None = None
    paste_back: bool | None = None
    feather: int | None = None
    items: list[MixItem] | None = None
    # web-UI features (any command for LoRAs; text to image for the hi-res pass)
    loras: list[tuple[str, float]] | None = None  # LoRA files and their scales
    lora_dir: str | None = None  # where `<lora:NAME:SCALE>` prompt tags find NAME
    hires: dict[str, Any] | None = None  # hires.HiresOptions fields: scale, strength, steps, upscaler...
    upscaler_dir: str | None = None  # where a hi-res pass finds a learned upscaler by name
    # replaying a PNG: its metadata (see replay.py) and where it came from
    recorded: dict[str, Any] | None = None
    source: str | None = None
    notes: list[str] = field(default_factory=list)  # what was adapted, e.g. a sampler kandi lacks
    names: dict[str, str] = field(default_factory=dict)  # how the shell spells fields, for messages

    OPTIONS = ("prompt", "negative_prompt", "scheduler", *NUMBERS)


FILE_FIELDS = {"image": "image", "mask": "mask", "hint": "hint"}


def request_from_fields(command: str, fields: dict[str, Any], recorded: dict[str, Any] | None = None,
                        source: str | None = None) -> Request:  # fmt: skip
    """A Request from plain values (a parsed command line, a batch job line): input files are paths,
    opened here; mix items are ITEM WEIGHT words; outpaint margins in any of `margins`' forms."""
    known = {k: fields.get(k) for k in Request.__dataclass_fields__ if fields.get(k) is not None}
    for name in FILE_FIELDS:
        if isinstance(known.get(name), str | Path):
            known[name] = open_input(known[name], _file_name(command, name))
    if known.get("items") is not None:
        known["items"] = mix_items(list(known["items"]))
    if known.get("outpaint") is not None:
        try:
            known["outpaint"] = margins(known["outpaint"])
        except ValueError as e:
            raise UsageError(str(e), "outpaint") from None
    known.pop("recorded", None)
    known.pop("source", None)
    return Request(**{**known, "command": command}, recorded=recorded, source=source)


def _file_name(command: str, name: str) -> str:
    """How messages name an input file: the CLI's argument names."""
    return "INIT" if (command, name) == ("controlnet", "image") else name.upper()


def mix_items(words: list[Any]) -> list[MixItem]:
    """ITEM WEIGHT ... as MixItems. An ITEM that is a file is an image, anything else a text; `text:` and
    `image:` prefixes say which."""
    if len(words) % 2:
        raise UsageError(f"mix takes ITEM WEIGHT pairs: {words[-1]!r} has no WEIGHT", "items")
    out = []
    for k, (item, text) in enumerate(zip(words[::2], words[1::2]), 1):
        try:
            weight = finite_float(text)
        except ValueError:
            raise UsageError(f"the WEIGHT of {item!r} must be a number, got {text!r}", "items") from None
        kind, value = _kind(str(item))
        out.append(MixItem(kind, open_input(value, f"item {k}") if kind == "image" else value, weight))
    return out


def _kind(item: str) -> tuple[str, str]:
    for kind in ("text", "image"):
        if item.startswith(f"{kind}:"):
            return kind, item[len(kind) + 1 :]
    path = Path(item).expanduser()
    if path.is_file():
        return "image", item
    if path.suffix.lower() in {".png", *OTHER_IMAGE_SUFFIXES}:  # a typo should not become a prompt
        raise UsageError(f"no such image file {item!r} (write text:{item} to use it as a text)", "items")
    return "text", item


def lora_arg(value: Any) -> tuple[str, float]:
    """A LoRA as `PATH[:SCALE]` (the scale after the last colon, so a Windows drive letter stays in the
    path), or [path, scale] / {"path", "scale"} from a job file or JSON body."""
    if isinstance(value, dict):
        value = [value.get("path"), value.get("scale", 1.0)]
    if isinstance(value, list | tuple):
        if len(value) != 2 or not isinstance(value[0], str):
            raise ValueError(f"expected a LoRA as PATH[:SCALE] or [path, scale], got {value!r}")
        return value[0], finite_float(value[1])
    text = str(value).strip()
    path, sep, scale = text.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()):
        try:
            return path, finite_float(scale)
        except ValueError:
            pass
    if not text:
        raise ValueError("expected a LoRA as PATH[:SCALE], got nothing")
    return text, 1.0
