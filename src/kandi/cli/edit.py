"""Kandinsky 2.2 image editing on the command line: `kandi img2img`, `inpaint`, `mix` and `controlnet`.

Each command's arguments become an engine Request, planned and run like `kandi generate`
(`common.run_task`): the same options, PNG metadata, `--from-png` and one-line errors. The kandi JSON chunk
also names every input file with its SHA-256, so `--from-png` makes the image again only from the very
same files, and says so in one line when one has changed or gone.
"""

from __future__ import annotations

import argparse

from .common import Command, add_common_args, margins, pixels_int, run_task, unit_float


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


# -------------------------------------------------------------------------------------------- img2img

IMG2IMG_EXAMPLES = """examples:
  kandi img2img photo.png "the same street in winter, oil painting" -s 42
  kandi img2img sketch.png "a castle on a hill" --strength 0.7 --num-images 4 -o castles/"""


def add_img2img_args(p: argparse.ArgumentParser) -> None:
    _add_image_prompt(p, "the image to redraw")
    _add_strength(p, 0.3, "IMAGE (diffusers' default)")


def img2img(args: argparse.Namespace) -> int:
    """Image to image: IMAGE noised to --strength, then drawn again after PROMPT."""
    return run_task(args)


# -------------------------------------------------------------------------------------------- inpaint

INPAINT_EXAMPLES = """examples:
  kandi inpaint room.png "a red armchair" --mask chair-mask.png -s 7
  kandi inpaint room.png "a red armchair" --mask chair-mask.png --paste-back --feather 8
  kandi inpaint beach.png "a wide sandy beach" --outpaint 256,0,256,0"""


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
    return run_task(args)


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
    return run_task(args)


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
    return run_task(args)


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
