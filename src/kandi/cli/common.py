"""What every `kandi` command shares: argument types over the engine's checks, the drawing options,
`run_task` (argparse -> engine Request -> Plan -> images written), and `kandi generate` / `download`.

A thin shell over `kandi.engine`: torch, transformers and the pipelines are imported inside the
commands, so `kandi --help` answers at once.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from ..configs import DEFAULT_MODEL, REGISTRY
from ..engine import Limits, Step, plan, replay, requests
from ..engine.console import progress_bars
from ..engine.models import compiled, load, registered, runtime
from ..engine.requests import OTHER_IMAGE_SUFFIXES, UsageError, lora_arg, request_from_fields
from ..engine.run import run, total_steps
from ..errors import ModelNotFoundError
from ..pngmeta import write_bytes_new


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the usage block and the error on two lines; main prints one
        raise UsageError(message)


# ------------------------------------------------------------------------------------- argument types


COMPILE_HELP = "torch.compile the UNet and the decoder: faster steps; the first image pays for the compile"

# the A1111 names of kandi.schedulers.names.SAMPLERS, written out so that `--help` needs no torch import
# (tests/test_sampler_names.py checks the two agree)
SAMPLER_HELP = (
    'DDPM, DDIM, "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", Euler, "Euler a", '
    'UniPC, DEIS, "DPM++ 2S", PLMS, LCM, Heun, DPM2, "DPM2 Karras", "DPM2 a", "DPM2 a Karras", LMS, '
    '"LMS Karras", "DPM++ SDE", "DPM++ SDE Karras"'
)


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type over one of the engine's value checks (the same words in every shell)."""

    def typed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return typed


positive_int = _arg(requests.positive_int)
finite_float = _arg(requests.finite_float)
unit_float = _arg(requests.unit_float)
pixels_int = _arg(requests.pixels_int)
seed_int = _arg(requests.seed_int)
dtype_name = _arg(requests.dtype_name)
margins = _arg(requests.margins)


# ------------------------------------------------------------------------------------------ generate


GENERATE_EXAMPLES = """examples:
  kandi generate "a red cat on a sofa, oil painting" -s 42
  kandi generate "a lighthouse at dawn" -n "blurry, low quality" --num-images 4 -o lighthouses/
  kandi generate --from-png outputs/kandi-42.png -o again.png
  kandi download kandinsky-2.2"""


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="what to draw (optional with --from-png)")
    add_common_args(p)
    add_hires_args(p)


def family_defaults(attr: str) -> str:
    """A default as each model family has it: "4.0 (kandinsky-3: 3.0)"."""
    d = REGISTRY[DEFAULT_MODEL]
    others = {s.name: getattr(s, attr) for s in REGISTRY.values() if getattr(s, attr) != getattr(d, attr)}
    more = "; ".join(f"{name}: {v}" for name, v in others.items())
    return f"{getattr(d, attr)}" + (f" ({more})" if more else "")


def add_common_args(p: argparse.ArgumentParser, size_from: str | None = None) -> None:
    """generate's options, which every drawing command takes; `size_from`: the input whose size is the
    default width and height (rounded to multiples of 64), instead of the model's."""
    size = (
        f"{size_from}'s, rounded to the nearest multiple of 64"
        if size_from
        else family_defaults("default_size")
    )
    p.add_argument("-n", "--negative-prompt", metavar="TEXT", help="what not to draw")
    p.add_argument(
        "-m",
        "--model",
        help=f"a model name ({', '.join(REGISTRY)}; default {DEFAULT_MODEL}), "
        "or a 2.2 decoder's Hugging Face id or folder",
    )
    p.add_argument(
        "--prior", metavar="REPO", help="the prior's Hugging Face id or folder (default: the model's)"
    )
    p.add_argument("-W", "--width", type=positive_int, help=f"image width in pixels (default {size})")
    p.add_argument("-H", "--height", type=positive_int, help=f"image height in pixels (default {size})")
    p.add_argument(
        "--steps",
        type=positive_int,
        metavar="N",
        help=f"decoder steps (default {family_defaults('default_steps')})",
    )
    p.add_argument("--prior-steps", type=positive_int, metavar="N",
                   help=f"prior steps, 2.x (default {REGISTRY[DEFAULT_MODEL].default_prior_steps})")  # fmt: skip
    p.add_argument(
        "--guidance-scale",
        "--cfg",
        type=finite_float,
        metavar="SCALE",
        help=f"decoder classifier-free guidance (default {family_defaults('default_guidance')})",
    )
    p.add_argument(
        "--prior-guidance-scale",
        type=finite_float,
        metavar="SCALE",
        help=f"prior classifier-free guidance, 2.x (default {REGISTRY[DEFAULT_MODEL].default_prior_guidance})",
    )
    p.add_argument(
        "-s", "--seed", type=seed_int, help="seed of the first image; image i gets seed+i (default random)"
    )
    p.add_argument("--num-images", type=positive_int, metavar="N", help="how many images (default 1)")
    p.add_argument("-o", "--output", metavar="PATH", help="a .png file, or a folder (default outputs/)")
    add_runtime_args(p)
    p.add_argument(
        "--sampler",
        "--scheduler",
        dest="scheduler",
        metavar="NAME",
        help="decoder sampler, by its A1111 or diffusers class name, with ' Karras' or ' Exponential' for "
        f"that schedule type where it has one: {SAMPLER_HELP} (default the checkpoint's own)",
    )
    p.add_argument(
        "--from-png",
        metavar="FILE",
        help="make FILE's image again from its metadata (kandi's, or an AUTOMATIC1111 PNG's parameters; "
        "options given here override it)",
    )
    add_lora_args(p)
    add_limit_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_lora_args(p: Any) -> None:
    p.add_argument("--lora", action="append", type=_arg(lora_arg), metavar="PATH[:SCALE]",
                   help="apply a LoRA file (2.2 decoder/prior, Kandinsky 3 UNet) at SCALE (default 1); repeat "
                   "for several")  # fmt: skip
    p.add_argument("--lora-dir", metavar="DIR",
                   help="where <lora:NAME:SCALE> tags of the prompt find NAME.safetensors (A1111 syntax)")  # fmt: skip


def add_hires_args(p: Any) -> None:
    """AUTOMATIC1111's hires fix: the image at its size, upscaled, then redrawn at the larger size."""
    g = p.add_argument_group("hi-res pass (A1111's hires fix)")
    g.add_argument("--hires", type=finite_float, metavar="SCALE",
                   help="after the image is made, upscale it SCALE times and redraw it (e.g. 2)")  # fmt: skip
    g.add_argument("--hires-strength", type=unit_float, metavar="S",
                   help="denoising strength of the second pass (default 0.5)")  # fmt: skip
    g.add_argument("--hires-steps", type=_arg(requests.whole_int), metavar="N",
                   help="steps of the second pass (default 0: as many as the first)")  # fmt: skip
    g.add_argument("--hires-upscaler", metavar="NAME",
                   help="lanczos (default), nearest, latent, latent-bicubic, ..., or a learned upscaler's file or "
                   "its name in --upscaler-dir")  # fmt: skip
    g.add_argument("--upscaler-dir", metavar="DIR", help="a folder of learned upscalers (.pth, .safetensors)")


def hires_of(args: argparse.Namespace) -> dict[str, Any] | None:
    """The hi-res fields of the command line, or None when no --hires* option is given."""
    given = {"scale": args.hires, "strength": args.hires_strength, "steps": args.hires_steps,
             "upscaler": args.hires_upscaler}  # fmt: skip
    if all(v is None for v in given.values()):
        return None
    if args.hires is None:
        raise UsageError("--hires-strength, --hires-steps and --hires-upscaler go with --hires SCALE")
    return {k: v for k, v in given.items() if v is not None}


def add_runtime_args(p: Any) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda if available, else cpu)")
    p.add_argument("--dtype", type=dtype_name, help="fp32, fp16 or bf16 (default fp16 on cuda, fp32 on cpu)")
    p.add_argument("--variant", help="weights variant to load, e.g. fp16")
    p.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def add_limit_args(p: Any, base: Limits | None = None) -> None:
    """The request limits, checked before any model loads (the same options as `kandi serve`'s)."""
    d = base or Limits()
    p.add_argument("--max-size", type=positive_int, default=d.max_side, metavar="PX",
                   help=f"refuse a width or height over PX (default {d.max_side})")  # fmt: skip
    p.add_argument("--max-steps", type=positive_int, default=d.max_steps, metavar="N",
                   help=f"refuse more steps than N (default {d.max_steps})")  # fmt: skip
    p.add_argument("--max-images", type=positive_int, default=d.max_images, metavar="N",
                   help=f"refuse more images per request than N (default {d.max_images})")  # fmt: skip
    p.add_argument("--max-prompt", type=positive_int, default=d.max_prompt, metavar="CHARS",
                   help=f"refuse a prompt longer than CHARS characters (default {d.max_prompt})")  # fmt: skip


def limits_of(args: argparse.Namespace, **more: Any) -> Limits:
    return Limits(max_side=args.max_size, max_steps=args.max_steps, max_images=args.max_images,
                  max_prompt=args.max_prompt, **more)  # fmt: skip


CLI_PHRASES = {  # how the engine's messages name things on the command line
    "prompt": "a PROMPT",
    "image": "an IMAGE",
    "mask": "--mask MASK or --outpaint LEFT,TOP,RIGHT,BOTTOM",
    "hint": "a HINT",
    "file:image": "IMAGE",
    "file:mask": "MASK",
    "file:hint": "HINT",
    "file:init": "INIT",
    "feather": "--feather blends the pasted-back pixels: add --paste-back",
    "outpaint size": "--outpaint sets the size (IMAGE plus the margins): leave out -W/-H",
    "outpaint paste": "--outpaint always keeps the original pixels: leave out --no-paste-back",
    "strength": "--strength needs --image INIT (the image to start from)",
    "mix": "mix needs ITEM WEIGHT pairs",
    "from-png": " (or --from-png FILE)",
    "width": "-W/--width",
    "height": "-H/--height",
    "steps": "--steps",
    "prior_steps": "--prior-steps",
    "num_images": "--num-images",
    "scheduler": "--sampler",
}


def generate(args: argparse.Namespace) -> int:
    """Text to image."""
    return run_task(args)


def run_task(args: argparse.Namespace) -> int:
    """Every drawing command: check everything, load the models, then write each image as soon as it is made."""
    recorded = _recorded(args.from_png, args.command)
    fields = vars(args) | {"loras": args.lora, "hires": hires_of(args) if hasattr(args, "hires") else None}
    req = request_from_fields(args.command, fields, recorded, args.from_png)
    req.names = CLI_PHRASES
    p = plan(req, limits_of(args))
    seeds = [p.opts.seed + i for i in range(p.opts.num_images)]
    targets = _output_targets(args.output, seeds)
    device, dtype = runtime(args.device, args.dtype, recorded)
    variant = args.variant or (recorded or {}).get("variant")
    show_progress = not args.quiet and sys.stderr.isatty()
    p.model, models = load(p.model, device, dtype, variant, args.offline, show_progress, role=p.role)
    if args.compile:
        print(compiled(models), file=sys.stderr, flush=True)
    with _Bars(show_progress, total_steps(models, p)) as bars:
        for made, target in zip(run(models, p, variant, bars.step), targets):
            bars.close()
            if made.index == 0 and made.image.size != (p.opts.width, p.opts.height):
                w, h = made.image.size
                print(f"warning: {p.opts.width}x{p.opts.height} is rounded up to {w}x{h}, a size the model makes",
                      file=sys.stderr)  # fmt: skip
            path = _write_new(target, made.png)
            print(f"{path}  seed {made.seed}", flush=True)
    return 0


def _recorded(png: str | None, command: str) -> dict[str, Any] | None:
    """The --from-png metadata, which must come from the same command (an inpainting is no text to image)."""
    if not png:
        return None
    data = replay.recorded(png, command)
    if data.get("notes"):
        print(f"warning: {png} is not a kandi PNG; from its A1111 parameters kandi could not take: "
              f"{'; '.join(data['notes'])}", file=sys.stderr)  # fmt: skip
    return data


def _output_targets(output: str | None, seeds: list[int]) -> list[Path]:
    """The path of each image (a free name is picked at writing time); the folder is made and checked."""
    out = Path(output or "outputs").expanduser()
    if out.suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise UsageError(
            f"--output {output}: kandi writes PNG files (the parameters live in PNG text chunks)"
        )
    if out.suffix.lower() == ".png" and not out.is_dir():
        folder = out.parent
        names = [out.name] if len(seeds) == 1 else [f"{out.stem}-{s}.png" for s in seeds]
    else:
        folder, names = out, [f"kandi-{s}.png" for s in seeds]
    _check_writable(folder)
    return [folder / n for n in names]


def _check_writable(folder: Path) -> None:
    # a real probe file, not os.access: access() says yes to root on read-only mounts and no to ACLs
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".kandi-probe-{secrets.token_hex(4)}"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None


class _Bars:
    """One tqdm bar per image on a terminal (closed as each image is done); nothing otherwise."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total, self.bar, self.stage = show, total, None, None

    def step(self, s: Step) -> None:
        if not self.show:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=f"image {s.image + 1}/{s.num_images}", total=self.total, unit="step",
                            file=sys.stderr, leave=False, dynamic_ncols=True)  # fmt: skip
        # a new stage (prior, decoder) is drawn at once; steps within one at tqdm's own pace
        self.bar.set_postfix_str(s.stage, refresh=s.stage != self.stage)
        self.stage = s.stage
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.stage = None, None

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _write_new(target: Path, png: bytes) -> Path:
    """Write one PNG at `target`, or at `name-1.png`, `name-2.png`... if that exists (and say so)."""
    path, k = target, 0
    while True:
        try:
            write_bytes_new(path, png)
        except FileExistsError:
            k += 1
            path = target.with_name(f"{target.stem}-{k}{target.suffix}")
            continue
        if k:
            print(f"warning: {target} exists: this image is {path.name}", file=sys.stderr)
        return path


# ------------------------------------------------------------------------------------------ download


def add_download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        metavar="MODEL",
        help=f"a model name ({', '.join(REGISTRY)}; default {DEFAULT_MODEL}) or a Hugging Face id",
    )
    p.add_argument("--all", action="store_true", help="also the inpainting and ControlNet decoders")
    p.add_argument("--variant", help="weights variant to fetch, e.g. fp16 (half the size)")
    p.add_argument("--offline", action="store_true", help="only check that the weights are in the cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def download(args: argparse.Namespace) -> int:
    """Fetch every repo a model needs into the Hugging Face cache, so generate works offline."""
    from ..loading.hub import offline, resolve_repo_dir

    hub = {"local_files_only": True} if args.offline else {}
    for role, repo in _download_repos(args.model, args.all):
        try:
            with progress_bars(downloads=not args.quiet and sys.stderr.isatty(), transformers=False):
                path = resolve_repo_dir(repo, variant=args.variant, **hub)
        except ModelNotFoundError as e:
            if not offline(args.offline):
                raise
            raise ModelNotFoundError(
                f"{repo} is not in the Hugging Face cache and offline mode is on "
                f"(HF_HUB_OFFLINE=1 or --offline): run `kandi download {args.model}` with network access"
            ) from e
        print(f"{role}: {repo} -> {path}", flush=True)
    return 0


def _download_repos(name: str, everything: bool) -> list[tuple[str, str]]:
    spec = registered(name)
    if spec is None:
        from ..loading.hub import looks_like_repo_id

        if not looks_like_repo_id(name):
            raise UsageError(
                f"unknown model {name!r}: not a known model ({', '.join(sorted(REGISTRY))}) "
                "or a Hugging Face id (owner/name)"
            )
        return [("repo", name)]
    roles = {"decoder": spec.decoder_repo, "prior": spec.prior_repo}
    if everything:
        roles |= {"inpaint": spec.inpaint_repo, "controlnet": spec.controlnet_repo}
    return [(role, repo) for role, repo in roles.items() if repo]


class Command(NamedTuple):
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str
    examples: str = ""


COMMANDS: dict[str, Command] = {
    "generate": Command(add_generate_args, generate, "make images from a text prompt", GENERATE_EXAMPLES),
    "download": Command(add_download_args, download, "fetch a model's weights for offline use"),
}
