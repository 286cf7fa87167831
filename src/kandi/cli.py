"""The `kandi` command line: `kandi generate "a red cat"`, `kandi download`, and (in `cli_edit`) the
image editing commands `img2img`, `inpaint`, `mix` and `controlnet`.

A thin shell over the generation core: each command checks its arguments, builds `GenerationOptions` and
a `Task` (which `kandi.pipelines.k22_tasks` function draws, with which inputs), and `run_task` does the
rest. torch, transformers and the pipelines are imported inside the commands, so `kandi --help` answers
at once. Every user error ends as one line on stderr (see `main`).
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from . import __version__
from .cli_console import _progress_bars, _quiet_third_party
from .configs import DEFAULT_MODEL, REGISTRY, GenerationOptions, ModelSpec, resolve_model
from .errors import KandiError, ModelNotFoundError
from .pngmeta import describe, read_png_options, write_png

if TYPE_CHECKING:
    import torch

    from .pipelines.k22_tasks import K22Models


class UsageError(Exception):
    """A mistake on the command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the usage block and the error on two lines; main prints one
        raise UsageError(message)


# ------------------------------------------------------------------------------------- argument types

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
DTYPES = {
    **dict.fromkeys(("fp32", "float32"), "float32"),
    **dict.fromkeys(("fp16", "float16", "half"), "float16"),
    **dict.fromkeys(("bf16", "bfloat16"), "bfloat16"),
}
OTHER_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


def _number(conv: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type that converts with `conv` and accepts only values passing `ok`."""

    def parse(text: str) -> Any:
        try:
            value = conv(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
finite_float = _number(float, math.isfinite, "a finite number")
unit_float = _number(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
pixels_int = _number(int, lambda v: v >= 0, "a whole number of pixels >= 0")
seed_int = _number(int, lambda v: -1 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}, or -1 for random")
# the numeric GenerationOptions fields, checked the same way whether typed or read from a PNG
NUMBERS = {
    "width": positive_int,
    "height": positive_int,
    "steps": positive_int,
    "prior_steps": positive_int,
    "num_images": positive_int,
    "guidance_scale": finite_float,
    "prior_guidance_scale": finite_float,
    "seed": seed_int,
}
OPTION_ARGS = ("prompt", "negative_prompt", "scheduler", *NUMBERS)


def dtype_name(text: str) -> str:
    name = DTYPES.get(text.lower())
    if name is None:
        raise argparse.ArgumentTypeError(f"expected fp32, fp16 or bf16, got {text!r}")
    return name


# ------------------------------------------------------------------------------------------ generate


GENERATE_EXAMPLES = """examples:
  kandi generate "a red cat on a sofa, oil painting" -s 42
  kandi generate "a lighthouse at dawn" -n "blurry, low quality" --num-images 4 -o lighthouses/
  kandi generate --from-png outputs/kandi-42.png -o again.png
  kandi download kandinsky-2.2"""


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="what to draw (optional with --from-png)")
    add_common_args(p)


def add_common_args(p: argparse.ArgumentParser, size_from: str | None = None) -> None:
    """generate's options, which every drawing command takes; `size_from`: the input whose size is the
    default width and height (rounded to multiples of 64), instead of the model's."""
    d = REGISTRY[DEFAULT_MODEL]
    size = f"{size_from}'s, rounded to the nearest multiple of 64" if size_from else d.default_size
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
        "--steps", type=positive_int, metavar="N", help=f"decoder steps (default {d.default_steps})"
    )
    p.add_argument(
        "--prior-steps", type=positive_int, metavar="N", help=f"prior steps (default {d.default_prior_steps})"
    )
    p.add_argument(
        "--guidance-scale",
        "--cfg",
        type=finite_float,
        metavar="SCALE",
        help=f"decoder classifier-free guidance (default {d.default_guidance})",
    )
    p.add_argument(
        "--prior-guidance-scale",
        type=finite_float,
        metavar="SCALE",
        help=f"prior classifier-free guidance (default {d.default_prior_guidance})",
    )
    p.add_argument(
        "-s", "--seed", type=seed_int, help="seed of the first image; image i gets seed+i (default random)"
    )
    p.add_argument("--num-images", type=positive_int, metavar="N", help="how many images (default 1)")
    p.add_argument("-o", "--output", metavar="PATH", help="a .png file, or a folder (default outputs/)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda if available, else cpu)")
    p.add_argument("--dtype", type=dtype_name, help="fp32, fp16 or bf16 (default fp16 on cuda, fp32 on cpu)")
    p.add_argument(
        "--scheduler",
        type=str.lower,
        choices=("ddpm", "ddim"),
        help="decoder scheduler (default the checkpoint's)",
    )
    p.add_argument("--variant", help="weights variant to load, e.g. fp16")
    p.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    p.add_argument(
        "--from-png",
        metavar="FILE",
        help="make FILE's image again from its metadata (options given here override it)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def generate(args: argparse.Namespace) -> int:
    """Text to image."""
    return run_task(args, lambda args, recorded: Task("text_to_image"))


@dataclass
class Task:
    """What a drawing command asks of `kandi.pipelines.k22_tasks`, beyond the options all commands share."""

    name: str  # the k22_tasks function, called as name(models, opts, **kwargs)
    kwargs: dict[str, Any] = field(default_factory=dict)  # its inputs (images opened, options checked)
    role: str = "decoder"  # which of the model's decoders: "decoder", "inpaint" or "controlnet"
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # input files: {"path", "sha256"} each
    size: tuple[int, int] | None = None  # default (width, height) instead of the model's
    fixed: dict[str, Any] = field(default_factory=dict)  # options the command sets, over all others
    fields: dict[str, Any] = field(default_factory=dict)  # more A1111 fields, e.g. Denoising strength
    prior_runs: int = 1  # prior runs per image (mix: one per text and one more), for the progress bar
    strength: float = 1.0  # the share of the decoder steps run, likewise


Plan = Callable[[argparse.Namespace, dict[str, Any] | None], Task]


def run_task(args: argparse.Namespace, plan: Plan) -> int:
    """Every drawing command: check everything, load the models, then write each image as soon as it is made.

    `plan(args, recorded)` checks the command's own arguments and opens its input files (before any model
    work); `recorded` is the --from-png metadata, or None.
    """
    recorded = _recorded(args.from_png, args.command)
    task = plan(args, recorded)
    model = _choose_model(args.model, args.prior, recorded, task.role)
    opts = _options(args, model, recorded, task)
    seeds = [opts.seed + i for i in range(opts.num_images)]
    targets = _output_targets(args.output, seeds)
    device, dtype = _runtime(args.device, args.dtype, recorded)
    variant = args.variant or (recorded or {}).get("variant")
    show_progress = not args.quiet and sys.stderr.isatty()
    model, models = _load(model, device, dtype, variant, args.offline, show_progress)
    info = image_info(args.command, model, models, opts.scheduler, variant, device, dtype, task.inputs)
    for (seed, image), target in zip(_images(models, opts, task, show_progress), targets):
        if seed == seeds[0] and image.size != (opts.width, opts.height):
            w, h = image.size
            print(
                f"warning: {opts.width}x{opts.height} is rounded up to {w}x{h}, a size the model makes",
                file=sys.stderr,
            )
        path = _write_new(target, image, replace(opts, seed=seed, num_images=1), info, task.fields)
        print(f"{path}  seed {seed}", flush=True)
    return 0


def _recorded(png: str | None, command: str) -> dict[str, Any] | None:
    """The --from-png metadata, which must come from the same command (an inpainting is no text to image)."""
    if not png:
        return None
    recorded = read_png_options(png)
    made_by = recorded.get("command", "generate")
    if made_by != command:
        raise UsageError(f"{png} was made by `kandi {made_by}`: run `kandi {made_by} --from-png {png}`")
    return recorded


@dataclass(frozen=True)
class _Model:
    label: str  # what the metadata calls it: the registry name, or the decoder as given
    decoder: str  # hub id or absolute folder
    prior: str | None  # None: the one the decoder's model card names
    spec: ModelSpec | None


def _registered(name: str) -> ModelSpec | None:
    try:
        return resolve_model(name)
    except ValueError:
        return None


def _choose_model(
    name: str | None, prior: str | None, recorded: dict[str, Any] | None, role: str = "decoder"
) -> _Model:
    """The model and its repos; for a registered model, its `role` decoder (decoder, inpaint, controlnet)."""
    if name is None and recorded is not None:
        label, repos = recorded["options"].get("model") or DEFAULT_MODEL, recorded.get("repos") or {}
        if repos.get("decoder"):
            return _Model(label, repos["decoder"], prior or repos.get("prior"), _registered(label))
        name = label
    name = name or DEFAULT_MODEL
    spec = _registered(name)
    if spec is not None:
        decoder = getattr(spec, f"{role}_repo")
        if decoder is None and spec.family == "k3":
            raise UsageError(
                f"{spec.name} makes images from text and redraws images (generate, img2img); for {role} use "
                "--model kandinsky-2.2"
            )
        if decoder is None:
            raise UsageError(f"{spec.name} has no {role} decoder: name one with -m REPO")
        return _Model(spec.name, decoder, prior or spec.prior_repo, spec)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _Model(folder.resolve().name, str(folder.resolve()), prior, None)
    from .loading.hub import looks_like_repo_id

    if not looks_like_repo_id(name):
        raise UsageError(
            f"unknown model {name!r}: not a known model ({', '.join(sorted(REGISTRY))}), "
            "a folder, or a Hugging Face id (owner/name)"
        )
    return _Model(name, name, prior, None)


def _options(
    args: argparse.Namespace, model: _Model, recorded: dict[str, Any] | None, task: Task
) -> GenerationOptions:
    """Defaults (the model's and the task's, or the PNG's options), overridden by whatever was given on the
    command line, and then by what the task fixes (its extra options, e.g. strength)."""
    if recorded is not None:
        d = dict(recorded["options"], num_images=1)
    else:
        s = model.spec or REGISTRY[DEFAULT_MODEL]
        d = {
            "width": s.default_size,
            "height": s.default_size,
            "steps": s.default_steps,
            "guidance_scale": s.default_guidance,
            "prior_steps": s.default_prior_steps,
            "prior_guidance_scale": s.default_prior_guidance,
        }
        if task.size is not None:
            d["width"], d["height"] = task.size
    d.update({k: getattr(args, k) for k in OPTION_ARGS if getattr(args, k, None) is not None})
    d.update(task.fixed, model=model.label)
    if d.get("prompt") is None:
        raise UsageError("a PROMPT is needed (or --from-png FILE)")
    opts = GenerationOptions.from_dict(d)
    if opts.seed in (None, -1):
        opts.seed = secrets.randbelow(2**31)
    _check_numbers(opts.to_dict(), args.from_png)
    return opts


def _check_numbers(d: dict[str, Any], source: str | None) -> None:
    """Values typed were checked by argparse; these checks catch bad values read from a PNG."""
    for name, parse in NUMBERS.items():
        try:
            parse(str(d.get(name)))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{source or 'options'}: bad {name} in its kandi metadata: {e}") from None
    if d["seed"] + d["num_images"] - 1 > MAX_SEED:
        raise UsageError(
            f"seeds {d['seed']} to {d['seed'] + d['num_images'] - 1} pass the largest seed {MAX_SEED}"
        )


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


def _runtime(
    device: str | None, dtype: str | None, recorded: dict[str, Any] | None
) -> tuple[torch.device, torch.dtype]:
    """The device (default cuda if available) and dtype (default fp16 on cuda, fp32 on cpu) to run on."""
    import torch

    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UsageError(f"--device: unknown device {device!r} (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (try --device cpu)")
    if dtype is None and recorded and recorded.get("device") == dev.type:
        # same kind of device as the PNG was made on: its dtype too, or the pixels would differ
        dtype = recorded.get("dtype") if recorded.get("dtype") in DTYPES.values() else None
    dtype = dtype or ("float16" if dev.type == "cuda" else "float32")
    return dev, getattr(torch, dtype)


def _load(
    model: _Model, device: torch.device, dtype: torch.dtype, variant: str | None, offline: bool, bars: bool
) -> tuple[_Model, Any]:
    """The model's prior and decoder on `device` (the prior from the decoder's model card if not named);
    for Kandinsky 3 its one repo."""
    from .loading.hub import connected_repos, resolve_repo_dir
    from .pipelines.k22_tasks import K22Models

    hub = {"local_files_only": True} if offline else {}
    try:
        with _progress_bars(downloads=bars):
            if _is_k3(model, variant, hub):  # no prior: text encoder, UNet and MoVQ in one repo
                from .pipelines.k3_tasks import K3Models

                k3 = K3Models.load(model.decoder, torch_dtype=dtype, variant=variant, **hub)
                return replace(model, prior=None), k3.to(device)
            if model.prior is None:
                card = connected_repos(resolve_repo_dir(model.decoder, variant=variant, **hub))
                model = replace(model, prior=card.get("prior") or REGISTRY[DEFAULT_MODEL].prior_repo)
            models = K22Models.load(model.decoder, model.prior, torch_dtype=dtype, variant=variant, **hub)
    except ModelNotFoundError as e:
        raise _with_download_hint(e, model.spec) from None
    return model, models.to(device)


def _is_k3(model: _Model, variant: str | None, hub: dict[str, Any]) -> bool:
    if model.spec is not None:
        return model.spec.family == "k3"
    from .loading.hub import resolve_repo_dir
    from .loading.pipeline import read_model_index

    root = resolve_repo_dir(model.decoder, variant=variant, **hub)
    return read_model_index(root)["_class_name"].startswith("Kandinsky3")


def _with_download_hint(e: ModelNotFoundError, spec: ModelSpec | None) -> ModelNotFoundError:
    """The loader suggests `kandi download <repo id>`; for a registered model, name the model instead."""
    msg = str(e)
    if spec is not None:
        for repo in (spec.decoder_repo, spec.prior_repo):
            msg = msg.replace(f"kandi download {repo}", f"kandi download {spec.name}")
        for repo in (spec.inpaint_repo, spec.controlnet_repo):  # only fetched with --all
            msg = msg.replace(f"kandi download {repo}", f"kandi download {spec.name} --all")
    return ModelNotFoundError(msg)


def _sampler(models: K22Models, scheduler: str | None) -> str:
    """A1111's `Sampler`: the decoder scheduler's class without `Scheduler`, e.g. DDPM."""
    return (scheduler or type(models.scheduler).__name__).removesuffix("Scheduler").upper()


def image_info(command: str, model: _Model, models: Any, scheduler: str | None, variant: str | None,
               device: torch.device, dtype: torch.dtype, inputs: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the kandi chunk of each image records besides its options (`pngmeta.describe`'s `info`); the
    CLI, the server and the batch runner all write it, so `--from-png` works on any of their images."""
    return {
        "command": command,
        **({"inputs": inputs} if inputs else {}),
        "repos": {"decoder": model.decoder, "prior": model.prior},
        "variant": variant,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "sampler": _sampler(models, scheduler),
    }


def _images(models: Any, opts: GenerationOptions, task: Task, show: bool) -> Iterator[tuple[int, Any]]:
    """(seed, PIL image) of each image, made one at a time so each is saved as soon as it is done."""
    from .pipelines.tasks import Made, each_image, steps_per_image

    total = steps_per_image(models, opts, task.prior_runs, task.strength)
    bar = None
    try:
        for event in each_image(models, opts, task.name, **task.kwargs):
            if isinstance(event, Made):
                if bar is not None:
                    bar.close()
                    bar = None
                yield event.seed, event.image
            elif show:
                bar = bar or _bar(f"image {event.image + 1}/{event.num_images}", total)
                bar.set_postfix_str(event.stage, refresh=False)
                bar.update()
    finally:
        if bar is not None:
            bar.close()


def _bar(desc: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)


def _write_new(
    target: Path, image: Any, opts: GenerationOptions, info: dict[str, Any], fields: dict[str, Any]
) -> Path:
    """Write one PNG with its metadata at `target`, or at `name-1.png`, `name-2.png`... if that exists."""
    text, data = describe(opts.to_dict(), info, image.size, __version__, fields)
    path, k = target, 0
    while True:
        try:
            return write_png(path, image, text, data)
        except FileExistsError:
            k += 1
            path = target.with_name(f"{target.stem}-{k}{target.suffix}")


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
    from .loading.hub import offline, resolve_repo_dir

    hub = {"local_files_only": True} if args.offline else {}
    for role, repo in _download_repos(args.model, args.all):
        try:
            with _progress_bars(downloads=not args.quiet and sys.stderr.isatty(), transformers=False):
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
    spec = _registered(name)
    if spec is None:
        from .loading.hub import looks_like_repo_id

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


# ----------------------------------------------------------------------------------------------- main


class Command(NamedTuple):
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str
    examples: str = ""


# serve and batch go here; the image editing commands are in cli_edit (see `commands`)
COMMANDS: dict[str, Command] = {
    "generate": Command(add_generate_args, generate, "make images from a text prompt", GENERATE_EXAMPLES),
    "download": Command(add_download_args, download, "fetch a model's weights for offline use"),
}


def commands() -> dict[str, Command]:
    """Every subcommand in --help order. cli_edit builds on this module, so it is imported here, late."""
    from . import cli_batch, cli_edit, cli_serve

    return {"generate": COMMANDS["generate"], **cli_edit.COMMANDS, **cli_batch.COMMANDS, **cli_serve.COMMANDS,
            "download": COMMANDS["download"]}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kandi",
        description="Kandinsky image generation.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kandi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in commands().items():
        p = sub.add_parser(
            name,
            help=cmd.help,
            description=cmd.help,
            epilog=cmd.examples or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_args(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `kandi ARGS`; returns the exit status: 0, 1 (error), 2 (usage error) or 130 (interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        with _quiet_third_party():
            return args.run(args)
    except UsageError as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except (KandiError, ValueError, TypeError, OSError) as e:
        return _fail(_message(e), 1)


def _fail(message: str, status: int) -> int:
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"kandi: error: {one_line}", file=sys.stderr)
    return status


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:  # "[Errno 13] ..." reads badly
        return f"{e.filename}: {e.strerror}"
    return str(e) or type(e).__name__
