"""`kandi upscale IMAGE...`: enlarge images with Lanczos or a learned upscaler (Real-ESRGAN and the like,
`pip install 'kandi[upscale]'`), in tiles so large images fit in memory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine import requests
from ..engine.requests import Limits, RequestError, UsageError
from .common import Command, _arg, _check_writable, _write_new, positive_int

UPSCALE_EXAMPLES = """examples:
  kandi upscale photo.png --scale 2                          # Lanczos -> photo-x2.png
  kandi upscale art.png --scale 4 --upscaler RealESRGAN_x4plus.pth -o big/
  kandi upscale *.png --scale 4 --upscaler RealESRGAN_x4plus --upscaler-dir models/"""


def add_upscale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images to enlarge")
    p.add_argument("--scale", type=_arg(requests.positive_int), default=2, metavar="N",
                   help="how many times larger, 1 to 8 (default 2)")  # fmt: skip
    p.add_argument("--upscaler", default="lanczos", metavar="NAME",
                   help="lanczos (default), nearest, a learned upscaler's file, or its name in --upscaler-dir")  # fmt: skip
    p.add_argument("--upscaler-dir", metavar="DIR", help="a folder of learned upscalers (.pth, .safetensors)")
    p.add_argument("--tile", type=_arg(requests.whole_int), default=512, metavar="PX",
                   help="run a learned upscaler in tiles of PX pixels (default 512; 0: the whole image at once)")  # fmt: skip
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="a .png file (one image), or a folder (default: beside each image)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default cuda if available, else cpu)")
    p.add_argument("--max-size", type=positive_int, default=Limits().max_side, metavar="PX",
                   help="refuse an output side over four times PX (default 4096)")  # fmt: skip


def upscale(args: argparse.Namespace) -> int:
    from ..engine.models import runtime
    from ..engine.upscaling import check_factor, find_upscaler, upscale_image
    from ..pipelines.images import open_image

    limits = Limits(max_side=args.max_size)
    device, _ = runtime(args.device, None)
    find_upscaler(args.upscaler, args.upscaler_dir)  # a wrong name is said before any image is read
    out = Path(args.output).expanduser() if args.output else None
    if out is not None and out.suffix.lower() == ".png" and len(args.images) > 1:
        raise UsageError("-o FILE.png takes one IMAGE; give a folder for several")
    images = []
    for name in args.images:  # every input is read and checked before the first is upscaled
        image = open_image(Path(name).expanduser(), "IMAGE")
        try:
            check_factor(args.scale, image, limits)
        except RequestError as e:
            raise RequestError(f"{name}: {e}") from None
        images.append((Path(name), image))
    for path, image in images:
        made = upscale_image(
            image, args.scale, args.upscaler, args.upscaler_dir, limits, args.tile, str(device)
        )
        target = _target(out, path, args.scale)
        _check_writable(target.parent)
        written = _write_new(target, made.png)
        print(f"{written}  {made.image.size[0]}x{made.image.size[1]} ({made.upscaler})", flush=True)
    return 0


def _target(out: Path | None, source: Path, scale: int) -> Path:
    name = f"{source.stem}-x{scale}.png"
    if out is None:
        return source.with_name(name)
    if out.suffix.lower() == ".png" and not out.is_dir():
        return out
    return out / name


COMMANDS = {"upscale": Command(add_upscale_args, upscale, "enlarge images (Lanczos or a learned upscaler)",
                               UPSCALE_EXAMPLES)}  # fmt: skip
