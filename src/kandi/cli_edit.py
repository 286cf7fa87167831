"""Kandinsky 2.2 image editing on the command line: `kandi img2img`, `inpaint`, `mix` and `controlnet`.

Each command checks its own arguments and opens its input files, then runs like `kandi generate`
(`cli.run_task`): the same options, PNG metadata, `--from-png` and one-line errors. The kandi JSON chunk
also names every input file with its SHA-256, so `--from-png` makes the image again only from the very
same files, and says so in one line when one has changed or gone.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli import (
    OTHER_IMAGE_SUFFIXES,
    Command,
    Task,
    UsageError,
    add_common_args,
    finite_float,
    pixels_int,
    run_task,
    unit_float,
)

Recorded = dict[str, Any] | None  # the --from-png metadata, or None

# ---------------------------------------------------------------------------------------- input files


@dataclass(frozen=True)
class Input:
    """An input image file, opened and fingerprinted."""

    path: Path  # absolute
    sha256: str
    image: Any  # PIL image

    def record(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256}


def _input(given: str | None, role: str, name: str, recorded: Recorded, png: str | None) -> Input | None:
    """The input `role` (named `name` in messages): the file given, else the file the PNG was made from,
    which must still hold the same bytes; None if neither names one."""
    if given is not None:
        path = Path(given).expanduser().absolute()
        image = _open(path, name)
        return Input(path, _sha256(path, name), image)
    entry = ((recorded or {}).get("inputs") or {}).get(role)
    if entry is None:
        return None
    path = Path(entry.get("path", ""))
    if not path.is_file():
        raise ValueError(f"{png} was made from the {name} {path}, which is missing: give it again")
    if _sha256(path, name) != entry.get("sha256"):
        raise ValueError(
            f"{png} was made from the {name} {path}, which has changed since (another SHA-256): "
            "the image cannot be made again from it"
        )
    return Input(path, entry["sha256"], _open(path, name))


def _need(found: Input | None, what: str) -> Input:
    if found is None:
        raise UsageError(f"{what} is needed (or --from-png FILE)")
    return found


def _sha256(path: Path, name: str) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise ValueError(f"{name}: cannot read {str(path)!r} ({e.strerror or e})") from None


def _open(path: Path, name: str) -> Any:
    from .pipelines.images import open_image

    return open_image(path, name)


def _default_size(image: Any) -> tuple[int, int]:
    """An input's (width, height), each rounded to the nearest multiple of 64 (the 2.2 decoder's)."""
    return tuple(max(64, int(v / 64 + 0.5) * 64) for v in image.size)


def _setting(args: argparse.Namespace, key: str, recorded: Recorded, parse: Any, default: Any) -> Any:
    """An editing option: as typed, else the PNG's (checked as if typed), else the default."""
    if getattr(args, key) is not None:
        return getattr(args, key)
    extra = (recorded or {}).get("options", {}).get("extra") or {}
    if key not in extra:
        return default
    value = extra[key]
    try:
        return parse(",".join(map(str, value)) if isinstance(value, list) else str(value))
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{args.from_png}: bad {key} in its kandi metadata: {e}") from None


def _add_strength(p: argparse.ArgumentParser, default: float, what: str) -> None:
    p.add_argument(
        "--strength",
        type=unit_float,
        metavar="S",
        help=f"how much to change {what}: the share of the decoder steps run, from 0 (unchanged) to 1 "
        f"(drawn anew) (default {default})",
    )


def _add_image_prompt(p: argparse.ArgumentParser, image_help: str, size_from: str = "IMAGE") -> None:
    p.add_argument("image", nargs="?", metavar="IMAGE", help=f"{image_help} (optional with --from-png)")
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="what to draw (optional with --from-png)")
    add_common_args(p, size_from)


def _edited(name: str, strength: float, **task: Any) -> Task:
    """A Task whose decoder starts part way (`strength`): A1111's Denoising strength, kept in the options."""
    fixed = task.pop("fixed", {})
    extra = {"strength": strength, **fixed.pop("extra", {})}
    return Task(name, strength=strength, fields={"Denoising strength": strength}, fixed={**fixed, "extra": extra},
                **task)  # fmt: skip


# -------------------------------------------------------------------------------------------- img2img

IMG2IMG_EXAMPLES = """examples:
  kandi img2img photo.png "the same street in winter, oil painting" -s 42
  kandi img2img sketch.png "a castle on a hill" --strength 0.7 --num-images 4 -o castles/"""


def add_img2img_args(p: argparse.ArgumentParser) -> None:
    _add_image_prompt(p, "the image to redraw")
    _add_strength(p, 0.3, "IMAGE (diffusers' default)")


def img2img(args: argparse.Namespace) -> int:
    """Image to image: IMAGE noised to --strength, then drawn again after PROMPT."""
    return run_task(args, _plan_img2img)


def _plan_img2img(args: argparse.Namespace, recorded: Recorded) -> Task:
    image = _need(_input(args.image, "image", "IMAGE", recorded, args.from_png), "an IMAGE")
    strength = _setting(args, "strength", recorded, unit_float, 0.3)
    return _edited("image_to_image", strength, kwargs={"image": image.image, "strength": strength},
                   inputs={"image": image.record()}, size=_default_size(image.image))  # fmt: skip


# -------------------------------------------------------------------------------------------- inpaint

INPAINT_EXAMPLES = """examples:
  kandi inpaint room.png "a red armchair" --mask chair-mask.png -s 7
  kandi inpaint room.png "a red armchair" --mask chair-mask.png --paste-back --feather 8
  kandi inpaint beach.png "a wide sandy beach" --outpaint 256,0,256,0"""


def margins(text: str) -> tuple[int, int, int, int]:
    """--outpaint's LEFT,TOP,RIGHT,BOTTOM: four whole numbers of pixels >= 0, not all 0."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or not any(values):
        raise argparse.ArgumentTypeError(
            f"expected LEFT,TOP,RIGHT,BOTTOM: four whole numbers of pixels >= 0, not all 0; got {text!r}"
        )
    return values


def add_inpaint_args(p: argparse.ArgumentParser) -> None:
    _add_image_prompt(p, "the image to paint into")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--mask",
        metavar="MASK",
        help="what to repaint: white is repainted, black kept (a mask of another size is stretched to IMAGE's)",
    )
    where.add_argument(
        "--outpaint",
        type=margins,
        metavar="L,T,R,B",
        help="extend IMAGE by this many pixels left, top, right and bottom; the output is exactly that "
        "size, the original pixels are kept exactly (always pasted back), and -W/-H do not apply",
    )
    _add_strength(p, 1.0, "the masked area")
    p.add_argument(
        "--paste-back",
        action=argparse.BooleanOptionalAction,
        help="put IMAGE's own pixels back outside the mask, exactly (default off; always on with --outpaint)",
    )
    p.add_argument(
        "--feather",
        type=pixels_int,
        metavar="N",
        help="with paste-back: blend over N pixels inside the mask's edge (default 0, or 8 with --outpaint)",
    )


def inpaint(args: argparse.Namespace) -> int:
    """Inpainting (IMAGE repainted where --mask is white) or outpainting (IMAGE extended by --outpaint)."""
    return run_task(args, _plan_inpaint)


def _plan_inpaint(args: argparse.Namespace, recorded: Recorded) -> Task:
    image = _need(_input(args.image, "image", "IMAGE", recorded, args.from_png), "an IMAGE")
    strength = _setting(args, "strength", recorded, unit_float, 1.0)
    pads = args.outpaint or (None if args.mask else _setting(args, "outpaint", recorded, margins, None))
    if pads is not None:
        return _plan_outpaint(args, recorded, image, strength, pads)
    where = "--mask MASK or --outpaint LEFT,TOP,RIGHT,BOTTOM"
    mask = _need(_input(args.mask, "mask", "MASK", recorded, args.from_png), where)
    if mask.image.size != image.image.size:
        (w, h), (mw, mh) = image.image.size, mask.image.size
        print(f"warning: the {mw}x{mh} mask is stretched to the {w}x{h} image", file=sys.stderr)
    paste = args.paste_back
    if paste is None:
        paste = ((recorded or {}).get("options", {}).get("extra") or {}).get("paste_back") is True
    feather = _setting(args, "feather", recorded, pixels_int, 0)
    if feather and not paste:
        raise UsageError("--feather blends the pasted-back pixels: add --paste-back")
    kwargs = {
        "image": image.image,
        "mask": mask.image,
        "strength": strength,
        "paste_back": paste,
        "feather": feather,
    }
    return _edited("inpaint", strength, kwargs=kwargs, role="inpaint", size=_default_size(image.image),
                   inputs={"image": image.record(), "mask": mask.record()},
                   fixed={"extra": {"paste_back": paste, "feather": feather}})  # fmt: skip


def _plan_outpaint(args: argparse.Namespace, recorded: Recorded, image: Input, strength: float,
                   pads: tuple[int, int, int, int]) -> Task:  # fmt: skip
    if args.width is not None or args.height is not None:
        raise UsageError("--outpaint sets the size (IMAGE plus the margins): leave out -W/-H")
    if args.paste_back is False:
        raise UsageError("--outpaint always keeps the original pixels: leave out --no-paste-back")
    feather = _setting(args, "feather", recorded, pixels_int, 8)
    left, top, right, bottom = pads
    w, h = image.image.size
    kwargs = dict(image=image.image, left=left, top=top, right=right, bottom=bottom, strength=strength,
                  feather=feather)  # fmt: skip
    size = {"width": left + w + right, "height": top + h + bottom}
    return _edited("outpaint", strength, kwargs=kwargs, role="inpaint", inputs={"image": image.record()},
                   fixed={**size, "extra": {"outpaint": list(pads), "feather": feather}})  # fmt: skip


# ------------------------------------------------------------------------------------------------ mix

MIX_EXAMPLES = """examples:
  kandi mix "a red cat" 0.6 photo-of-my-dog.png 0.4 -s 1
  kandi mix "a castle" 0.5 "text:starry.png" 0.25 "image:~/art/starry night" 0.25 -n blurry"""


def add_mix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "items",
        nargs="*",
        metavar="ITEM WEIGHT",
        help="texts and image files, each followed by its weight (used as given, not normalised). An ITEM "
        "that is a file is an image, anything else a text; prefix text: or image: to say which",
    )
    add_common_args(p)


def mix(args: argparse.Namespace) -> int:
    """Images from a weighted mix of texts and images (the prior's interpolate, then the decoder)."""
    return run_task(args, _plan_mix)


def _plan_mix(args: argparse.Namespace, recorded: Recorded) -> Task:
    pairs = _pairs(args.items) if args.items else _recorded_pairs(recorded, args.from_png)
    items, record, inputs = [], [], {}
    for k, (kind, value, weight) in enumerate(pairs, 1):
        if kind == "text":
            items.append(value)
            record.append({"text": value, "weight": weight})
        else:  # value None: the file the PNG was made from
            found = _need(
                _input(value, f"item{k}", f"item {k}", recorded, args.from_png), f"item {k}'s image"
            )
            items.append(found.image)
            inputs[f"item{k}"] = found.record()
            record.append({"image": f"item{k}", "weight": weight})
    texts = [i for i in items if isinstance(i, str)]
    # A1111 readers show the prompt: the texts of the mix; the whole mix is in the kandi chunk
    return Task("mix", {"items": items, "weights": [w for *_, w in pairs]}, inputs=inputs,
                fixed={"prompt": " | ".join(texts), "extra": {"mix": record}}, prior_runs=len(texts) + 1)  # fmt: skip


def _pairs(words: list[str]) -> list[tuple[str, str, float]]:
    """ITEM WEIGHT ... as (kind, value, weight)."""
    if len(words) % 2:
        raise UsageError(f"mix takes ITEM WEIGHT pairs: {words[-1]!r} has no WEIGHT")
    out = []
    for item, text in zip(words[::2], words[1::2]):
        try:
            weight = finite_float(text)
        except argparse.ArgumentTypeError:
            raise UsageError(f"the WEIGHT of {item!r} must be a number, got {text!r}") from None
        out.append((*_kind(item), weight))
    return out


def _kind(item: str) -> tuple[str, str]:
    for kind in ("text", "image"):
        if item.startswith(f"{kind}:"):
            return kind, item[len(kind) + 1 :]
    path = Path(item).expanduser()
    if path.is_file():
        return "image", item
    if path.suffix.lower() in {".png", *OTHER_IMAGE_SUFFIXES}:  # a typo should not become a prompt
        raise UsageError(f"no such image file {item!r} (write text:{item} to use it as a text)")
    return "text", item


def _recorded_pairs(recorded: Recorded, png: str | None) -> list[tuple[str, str | None, float]]:
    if recorded is None:
        raise UsageError("mix needs ITEM WEIGHT pairs (or --from-png FILE)")
    entries = (recorded["options"].get("extra") or {}).get("mix")
    try:
        return [("text", e["text"], finite_float(str(e["weight"]))) if "text" in e
                else ("image", None, finite_float(str(e["weight"]))) for e in entries]  # fmt: skip
    except (TypeError, KeyError, argparse.ArgumentTypeError):
        raise ValueError(f"{png}: bad mix in its kandi metadata") from None


# ----------------------------------------------------------------------------------------- controlnet

CONTROLNET_EXAMPLES = """examples:
  kandi controlnet depth.png "a robot in a greenhouse" -s 3
  kandi controlnet depth.png "a robot in a greenhouse" --image robot.png --strength 0.5"""


def add_controlnet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "hint",
        nargs="?",
        metavar="HINT",
        help="a depth map (white is near; greyscale or 16-bit) laying out the image (optional with --from-png)",
    )
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="what to draw (optional with --from-png)")
    add_common_args(p, "HINT")
    p.add_argument("--image", metavar="INIT", help="start from this image instead of noise")
    _add_strength(p, 0.3, "INIT (needs --image)")


def controlnet(args: argparse.Namespace) -> int:
    """ControlNet: images after PROMPT with the layout of a depth map."""
    return run_task(args, _plan_controlnet)


def _plan_controlnet(args: argparse.Namespace, recorded: Recorded) -> Task:
    hint = _need(_input(args.hint, "hint", "HINT", recorded, args.from_png), "a HINT")
    init = _input(args.image, "image", "INIT", recorded, args.from_png)
    task = {"kwargs": {"hint": hint.image}, "role": "controlnet", "size": _default_size(hint.image),
            "inputs": {"hint": hint.record()}}  # fmt: skip
    if init is None:
        if args.strength is not None:
            raise UsageError("--strength needs --image INIT (the image to start from)")
        return Task("controlnet", **task)
    strength = _setting(args, "strength", recorded, unit_float, 0.3)
    task["kwargs"] |= {"image": init.image, "strength": strength}
    task["inputs"]["image"] = init.record()
    return _edited("controlnet", strength, **task)


# ----------------------------------------------------------------------------------------------- main

COMMANDS: dict[str, Command] = {
    "img2img": Command(add_img2img_args, img2img, "redraw an image after a text prompt", IMG2IMG_EXAMPLES),
    "inpaint": Command(
        add_inpaint_args,
        inpaint,
        "repaint part of an image (a mask), or extend it (outpaint)",
        INPAINT_EXAMPLES,
    ),
    "mix": Command(add_mix_args, mix, "make images from a weighted mix of texts and images", MIX_EXAMPLES),
    "controlnet": Command(
        add_controlnet_args, controlnet, "make images with the layout of a depth map", CONTROLNET_EXAMPLES
    ),
}
