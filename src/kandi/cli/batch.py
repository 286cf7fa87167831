"""`kandi batch JOB`: every request of a job file, resumable, on this machine or on a Ray cluster.

The command checks its arguments, reads and plans the job (`batch_job`), opens the output folder and its
manifest (`batch.OutputFolder`) and runs what is not yet done, locally (`batch.run_local`) or with
`--ray` (`batch_ray`). Exit status: 0 when every item is done, 1 when one failed (each is in the
manifest with its error; a rerun tries it again), 2 for a usage error, 130 when interrupted (a rerun goes
on where it stopped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..configs import DEFAULT_MODEL, REGISTRY
from ..engine.models import choose_model
from ..engine.models import runtime as runtime_of
from ..engine.requests import random_seed
from .common import (
    COMPILE_HELP,
    Command,
    UsageError,
    add_limit_args,
    add_lora_args,
    dtype_name,
    finite_float,
    limits_of,
    positive_int,
    seed_int,
)

BATCH_EXAMPLES = """examples:
  kandi batch prompts.txt -s 42                  # one prompt a line -> outputs/image_0.png, image_1.png, ...
  kandi batch requests.jsonl -o run1/ --steps 30  # one JSON request a line (also .csv); options are defaults
  kandi batch prompts.txt --batch-size 8         # text-to-image items through the decoder 8 at a time
  kandi batch prompts.txt --ray                  # on a local Ray instance (pip install 'kandi[ray]')
  kandi batch prompts.txt --ray auto --workers 4 # on the running Ray cluster, 4 model replicas

Stop it at any time and run the same command again: finished images are kept and skipped.
A JSONL line: {"prompt": "a red cat", "negative_prompt": "blurry", "seed": 7, "size": "768x512",
  "steps": 30, "num_images": 2, "output": "cats/red"}; with "task": "img2img" / "inpaint" / "outpaint" /
  "mix" / "controlnet" and its inputs ("image", "mask", "hint", "strength", "outpaint", "items", ...)."""

DEFAULT_FIELDS = ("negative_prompt", "model", "prior", "width", "height", "steps", "prior_steps",
                  "guidance_scale", "prior_guidance_scale", "num_images", "scheduler")  # fmt: skip


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB", help="a text file (one prompt a line), or a .jsonl / .csv file "
                   "(one request a line); relative image paths are read from its folder")  # fmt: skip
    p.add_argument("-o", "--output", default="outputs", metavar="FOLDER",
                   help="where the images and manifest.jsonl go (default outputs/)")  # fmt: skip
    p.add_argument("-s", "--seed", type=seed_int, metavar="SEED",
                   help="the job seed, from which an item without a seed gets its own (default: the one "
                   "recorded in FOLDER's manifest, else 0; -1: random)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="text-to-image items of one model and size that go through the decoder together "
                   "(default 4 on a GPU, 1 on the CPU)")  # fmt: skip
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray: a local instance, or the cluster at ADDRESS (auto, host:6379, "
                   "ray://host:10001)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="with --ray: model replicas (default one per GPU; without GPUs, one per node)")  # fmt: skip
    d = REGISTRY[DEFAULT_MODEL]
    g = p.add_argument_group("defaults for the items (a job line's own fields win)")
    g.add_argument("-n", "--negative-prompt", metavar="TEXT", help="what not to draw")
    g.add_argument("-m", "--model", help=f"a model name ({', '.join(REGISTRY)}; default {DEFAULT_MODEL}), "
                   "or a decoder's Hugging Face id or folder")  # fmt: skip
    g.add_argument("--prior", metavar="REPO", help="the prior's Hugging Face id or folder")
    g.add_argument("-W", "--width", type=positive_int, help=f"image width (default {d.default_size})")
    g.add_argument("-H", "--height", type=positive_int, help=f"image height (default {d.default_size})")
    g.add_argument(
        "--steps", type=positive_int, metavar="N", help=f"decoder steps (default {d.default_steps})"
    )
    g.add_argument("--prior-steps", type=positive_int, metavar="N", help="prior steps")
    g.add_argument("--guidance-scale", "--cfg", type=finite_float, metavar="SCALE", help="decoder guidance")
    g.add_argument("--prior-guidance-scale", type=finite_float, metavar="SCALE", help="prior guidance")
    g.add_argument("--num-images", type=positive_int, metavar="N", help="images per item (default 1)")
    g.add_argument("--sampler", "--scheduler", dest="scheduler", metavar="NAME",
                   help="decoder sampler by its A1111 or diffusers name (e.g. \"DPM++ 2M Karras\")")  # fmt: skip
    r = p.add_argument_group("how to run")
    r.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda if available, else cpu)")
    r.add_argument("--dtype", type=dtype_name, help="fp32, fp16 or bf16 (default fp16 on cuda, fp32 on cpu)")
    r.add_argument("--variant", help="weights variant to load, e.g. fp16")
    r.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    r.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_lora_args(g)
    add_limit_args(p.add_argument_group("limits, checked for every item before any work"))


def batch(args: argparse.Namespace) -> int:
    """Run a job file's requests; see the module docstring for the exit status."""
    from ..batch.runner import OutputFolder

    if args.workers is not None and args.ray is None:
        raise UsageError("--workers is the number of Ray workers: add --ray")
    items = _read(Path(args.job).expanduser())
    if args.model is not None:  # the job's default model: a wrong one is one error, before any work
        choose_model(args.model, args.prior)
    runtime_of(args.device, args.dtype, None)
    output = OutputFolder(Path(args.output).expanduser())
    try:
        summary = _run(args, items, output)
    finally:
        output.close()
    print(f"{summary.line()} (manifest: {output.manifest})", flush=True)
    return 1 if summary.failed else 0


def _read(job: Path) -> list[Any]:
    from ..batch.job import read_job

    if job.is_dir():
        raise UsageError(f"{job} is a folder: give a job file (one prompt a line, or a .jsonl / .csv file)")
    if not job.is_file():
        raise UsageError(f"no such job file: {job}")
    items = read_job(job)
    if not items:
        raise UsageError(f"{job} holds no requests (one prompt a line, or one JSON / CSV request a line)")
    return items


def _run(args: argparse.Namespace, items: list[Any], output: Any) -> Any:
    from ..batch.job import plan
    from ..batch.runner import Driver, Runtime, run_local

    job_seed = _job_seed(args.seed, output)
    defaults = {k: getattr(args, k) for k in DEFAULT_FIELDS if getattr(args, k) is not None}
    if args.lora:  # the command line's paths are from here, not from the job's folder
        defaults["lora"] = [[str(Path(p).expanduser().absolute()), scale] for p, scale in args.lora]
    if args.lora_dir:
        defaults["lora_dir"] = str(Path(args.lora_dir).expanduser().absolute())
    requests = plan(items, defaults, Path(args.job).expanduser().parent.absolute(), job_seed, limits_of(args))
    runtime = Runtime(args.device, args.dtype, args.variant, args.offline, args.batch_size or 0, args.compile)
    show = not args.quiet and sys.stderr.isatty()
    driver = Driver(output, requests, job_seed, show)
    try:
        driver.start()
        if args.ray is None:
            run_local(driver, requests, _local(runtime), show)
        else:
            from ..batch.ray_runner import run_on_ray

            run_on_ray(driver, requests, runtime, args.ray or None, args.workers)
    except KeyboardInterrupt:
        driver.close()
        print(f"interrupted after {driver.summary.line()}: run the same command again to go on",
              file=sys.stderr)  # fmt: skip
        raise
    finally:
        driver.close()
    return driver.summary


def _job_seed(given: int | None, output: Any) -> int:
    """--seed; else the seed of the run recorded in the output folder (a rerun goes on with it); else 0."""
    if given == -1:
        return random_seed()
    if given is not None:
        return given
    recorded = output.job_seed()
    return 0 if recorded is None else recorded


def _local(runtime: Any) -> Any:
    """The runtime on this machine: the device checked now (before any work), the batch size set."""
    from dataclasses import replace

    device, dtype = runtime_of(runtime.device, runtime.dtype, None)
    batch_size = runtime.batch_size or (4 if device.type == "cuda" else 1)
    return replace(
        runtime, device=str(device), dtype=str(dtype).removeprefix("torch."), batch_size=batch_size
    )


COMMANDS: dict[str, Command] = {
    "batch": Command(
        add_batch_args,
        batch,
        "run a job file of prompts or requests, resumably (also on Ray)",
        BATCH_EXAMPLES,
    ),  # fmt: skip
}
