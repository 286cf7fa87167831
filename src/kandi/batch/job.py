"""`kandi batch` job files: one request a line, as a text, JSONL or CSV file, planned into `Request`s.

A text job holds one prompt a line (blank lines and `#` comments skipped). A JSONL job holds one JSON
object a line, a CSV job one row per request under a header; their fields are GenerationOptions' names
(with a few aliases: `negative`, `cfg`, `size`, `name`...) plus `task` and the task's inputs (`image`,
`mask`, `hint`, `strength`, ...), read exactly as the matching `kandi` command reads its arguments.
Defaults come from the command line. Relative input paths are read from the job file's folder.

Planning gives every item its seed (the file's, else one derived from the job seed and the item's
index), its output names and an id that changes whenever anything that shapes its images changes (the
request, the input files' bytes, the model), so a rerun redoes an edited line instead of skipping it.
A malformed line is an item with an `error`: it is reported, and the other items run.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import Limits, UsageError
from ..engine import Request as EngineRequest
from ..engine.models import choose_model
from ..engine.plan import plan as plan_request
from ..engine.requests import (
    COMMAND_ROLES,
    OTHER_IMAGE_SUFFIXES,
    check_seeds,
    finite_float,
    lora_arg,
    margins,
    pixels_int,
    positive_int,
    request_from_fields,
    seed_int,
    unit_float,
    whole_int,
)

COMMANDS = ("generate", "img2img", "inpaint", "mix", "controlnet")
TASKS = {  # what a job's `task` may say -> the kandi command that does it
    **dict.fromkeys(("generate", "text_to_image", "text2img", "txt2img", "t2i"), "generate"),
    **dict.fromkeys(("img2img", "image_to_image", "i2i"), "img2img"),
    **dict.fromkeys(("inpaint", "inpainting", "outpaint", "outpainting"), "inpaint"),
    "mix": "mix",
    **dict.fromkeys(("controlnet", "depth"), "controlnet"),
}
ROLES = COMMAND_ROLES  # which decoder a command needs
INPUTS = ("image", "mask", "hint")  # fields naming an input file
COMMAND_FIELDS = {  # each command's own arguments (argparse names), besides the options all share
    "generate": ("hires", "hires_strength", "hires_steps", "hires_upscaler"),
    "img2img": ("image", "strength"),
    "inpaint": ("image", "mask", "outpaint", "strength", "paste_back", "feather"),
    "mix": ("items",),
    "controlnet": ("hint", "image", "strength"),
}
OPTIONS = ("prompt", "negative_prompt", "model", "prior", "width", "height", "steps", "prior_steps",
           "guidance_scale", "prior_guidance_scale", "seed", "num_images", "scheduler", "lora")  # fmt: skip
ALIASES = {
    "sampler": "scheduler",
    "sampler_name": "scheduler",
    "negative": "negative_prompt",
    "guidance": "guidance_scale",
    "cfg": "guidance_scale",
    "cfg_scale": "guidance_scale",
    "prior_guidance": "prior_guidance_scale",
    "images": "num_images",
    "num_images_per_prompt": "num_images",
    "name": "output",
    "command": "task",
    "mask_image": "mask",
    "num_inference_steps": "steps",
}


# --------------------------------------------------------------------------------------- field values


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {json.dumps(value)}")
    return value


def _typed(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """A field read with the command line's own check (a JSON number or its text)."""

    def read(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a number, got {json.dumps(value)}")
        return parse(str(value).strip())

    return read


def _flag(value: Any) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in words:
        return words[str(value).strip().lower()]
    raise ValueError(f"expected true or false, got {json.dumps(value)}")


def _scheduler(value: Any) -> str:
    """A sampler by its A1111 or diffusers name, checked as the command line checks it."""
    from ..schedulers.names import canonical

    canonical(_text(value))
    return value.strip()


def _items(value: Any) -> list[str]:
    """mix's ITEM WEIGHT pairs: a JSON list (in a CSV cell: its text), flat as on the command line."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError('expected a JSON list such as ["a red cat", 0.6, "dog.png", 0.4]') from None
    if not isinstance(value, list) or not value or len(value) % 2:
        raise ValueError('expected a list of ITEM, WEIGHT pairs, such as ["a red cat", 0.6, "dog.png", 0.4]')
    return [str(v) for v in value]


FIELDS: dict[str, Callable[[Any], Any]] = {
    "prompt": _text,
    "negative_prompt": _text,
    "task": _text,
    "model": _text,
    "prior": _text,
    "width": _typed(positive_int),
    "height": _typed(positive_int),
    "steps": _typed(positive_int),
    "prior_steps": _typed(positive_int),
    "guidance_scale": _typed(finite_float),
    "prior_guidance_scale": _typed(finite_float),
    "seed": _typed(seed_int),
    "num_images": _typed(positive_int),
    "scheduler": _scheduler,
    "sampler": _scheduler,
    "image": _text,
    "mask": _text,
    "hint": _text,
    "strength": _typed(unit_float),
    "paste_back": _flag,
    "feather": _typed(pixels_int),
    "outpaint": margins,
    "items": _items,
    "output": _text,
    "lora": lambda v: [list(lora_arg(x)) for x in (v if isinstance(v, list) and not _is_pair(v) else [v])],
    "hires": _typed(finite_float),
    "hires_strength": _typed(unit_float),
    "hires_steps": _typed(whole_int),
    "hires_upscaler": _text,
}


def _is_pair(v: list) -> bool:
    """["a.safetensors", 0.8] is one LoRA; ["a.safetensors", "b.safetensors:0.5"] two."""
    return (
        len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int | float) and not isinstance(v[1], bool)
    )


def _size(value: Any) -> dict[str, int]:
    """`size`: WIDTHxHEIGHT, or one number for both."""
    w, _, h = str(value).strip().lower().partition("x")
    read = _typed(positive_int)
    return {"width": read(w), "height": read(h or w)}


def read_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """A request's fields by their canonical names, each checked; ValueError naming the first bad one."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).strip().lower().replace("-", "_").replace(" ", "_")
        name = ALIASES.get(name, name)
        if value is None or value == "":
            continue
        if name not in FIELDS and name != "size":
            raise ValueError(f"unknown field {key!r} (known: {', '.join([*FIELDS, 'size'])})")
        try:
            out |= _size(value) if name == "size" else {name: FIELDS[name](value)}
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------- files


@dataclass
class Item:
    """One request line of a job file: its fields, or why the line could not be read."""

    index: int  # 0-based among the job's items: the i of image_{i}.png
    line: int  # 1-based line of the job file
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_job(path: Path) -> list[Item]:
    """The items of a job file (.txt or any other name: prompts; .jsonl / .ndjson; .csv / .tsv)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        raise UsageError(f"{path}: write one JSON object a line in a .jsonl file (a .json job is not read)")
    if suffix in {".png", *OTHER_IMAGE_SUFFIXES}:
        raise UsageError(f"{path} is an image, not a job file (a text file with one prompt a line, or a .jsonl "
                         "or .csv file with one request a line)")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text file: a job file holds one prompt a line (UTF-8), or one "
                         "JSON / CSV request a line") from None  # fmt: skip
    if suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(text)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(text, "\t" if suffix == ".tsv" else ",")
    else:
        rows = ((n, {"prompt": line.strip()}) for n, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#"))  # fmt: skip
    return [_item(index, line, raw) for index, (line, raw) in enumerate(rows)]


def _item(index: int, line: int, raw: dict[str, Any] | str) -> Item:
    """The item of one row: its fields read, or the error (a text) that made the row unreadable."""
    if isinstance(raw, str):
        return Item(index, line, error=raw)
    try:
        return Item(index, line, read_fields(raw))
    except ValueError as e:
        return Item(index, line, error=str(e))


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"not JSON ({e.msg} at column {e.colno})"
            continue
        if isinstance(row, str):  # a bare JSON string is a prompt
            row = {"prompt": row}
        yield n, row if isinstance(row, dict) else "expected a JSON object {...}"


def _csv_rows(text: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    start = 2  # the header is line 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if None in row:
            yield line, f"{len(row[None])} more cells than the header has"
        elif any((v or "").strip() for v in row.values()):
            yield line, {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}


# ------------------------------------------------------------------------------------------- planning


@dataclass
class Request:
    """One item, planned: everything a worker needs to make its images (plain data, sent to Ray workers)."""

    index: int
    line: int
    id: str = ""  # index plus a digest of everything that shapes the images
    command: str = "generate"
    args: dict[str, Any] = field(default_factory=dict)  # the command's arguments, as argparse names them
    names: list[str] = field(default_factory=list)  # output files, relative to the output folder
    model: tuple[str, str | None] = ("", None)  # (decoder, prior): items of one model share its load
    group: tuple = ()  # items of one model and group may share a tensor batch
    error: str | None = None
    write: bool = True  # False: already done; made again only because its batch runs (see batch.py)

    @property
    def where(self) -> str:
        return f"item {self.index} (line {self.line})"

    @property
    def prompt(self) -> str:
        return self.args.get("prompt") or ""


def derive_seed(job_seed: int, index: int) -> int:
    """Item `index`'s seed when the job file gives none: fixed by the job seed, far from its neighbours'
    (seed + k is the item's image k, so plain job_seed + index would repeat images)."""
    digest = hashlib.sha256(f"kandi-batch:{job_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def plan(items: list[Item], defaults: dict[str, Any], job_dir: Path, job_seed: int,
         limits: Limits | None = None) -> list[Request]:  # fmt: skip
    """Every item as a Request, planned by the engine as its kandi command would be (so a bad value or
    input file is the item's `error` before any model work); the first claim on an output name wins."""
    requests, owners = [], {}
    for item in items:
        req = Request(item.index, item.line, error=item.error)
        if req.error is None:
            try:
                _plan_one(req, item.fields, defaults, job_dir, job_seed, limits or Limits())
                req.error = _claim(req, owners)
            except (ValueError, OSError) as e:
                req.error = one_line(e)
        if req.error is not None:
            req.id = f"{req.index}-invalid"  # recorded as failed; never skipped on a rerun
        requests.append(req)
    return requests


def _claim(req: Request, owners: dict[str, Request]) -> str | None:
    """Take the request's output names, unless an earlier item has one of them."""
    taken = [n for n in req.names if n in owners]
    if taken:
        return f"output {taken[0]} is taken by {owners[taken[0]].where}"
    owners.update(dict.fromkeys(req.names, req))
    return None


def one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def _plan_one(req: Request, fields: dict[str, Any], defaults: dict[str, Any], job_dir: Path,
              job_seed: int, limits: Limits) -> None:  # fmt: skip
    req.command = _command(fields)
    own = set(COMMAND_FIELDS[req.command])
    stray = [f for f in fields if f in FIELDS and f not in (*OPTIONS, *own, "task", "output")]
    if stray:
        raise ValueError(f"{stray[0]} does not apply to {fields.get('task') or req.command}")
    if req.command != "mix" and not fields.get("prompt"):
        raise ValueError("no prompt")
    if "mask" in fields and "outpaint" in fields:
        raise ValueError("give a mask (inpaint) or outpaint margins, not both")
    if "outpaint" in fields:  # the margins set the size: the job's -W/-H are not for this item
        defaults = {k: v for k, v in defaults.items() if k not in ("width", "height")}
    args = {**dict.fromkeys((*OPTIONS, *own)), **defaults, **fields}
    if "lora" in fields and "lora" in defaults:  # a line's LoRAs add to the job's
        args["lora"] = [*defaults["lora"], *fields["lora"]]
    args.pop("task", None)
    output = args.pop("output", None)
    args = _resolve_paths(args, job_dir)
    if args["seed"] in (None, -1):
        args["seed"] = derive_seed(job_seed, req.index)
    args["num_images"] = args["num_images"] or 1
    check_seeds(args["seed"], args["num_images"])
    req.args, req.names = args, output_names(output, req.index, args["num_images"])
    planned = plan_request(engine_request(req), limits)  # every value and input checked now
    model = choose_model(args["model"], args["prior"], None, ROLES.get(req.command, "decoder"))
    req.model = (model.decoder, model.prior)
    req.group = _group(req, planned.opts)
    req.id = f"{req.index}-{_digest(req)}"


def _command(fields: dict[str, Any]) -> str:
    """The item's command: its `task`, else what its inputs call for."""
    if "task" in fields:
        key = fields["task"].strip().lower().replace("-", "_")
        if key not in TASKS:
            raise ValueError(f"unknown task {fields['task']!r} (one of {', '.join(sorted(TASKS))})")
        if key.startswith("outpaint") and "outpaint" not in fields:
            raise ValueError("outpaint needs outpaint margins: LEFT,TOP,RIGHT,BOTTOM")
        return TASKS[key]
    for name, command in (("items", "mix"), ("hint", "controlnet"), ("mask", "inpaint"),
                          ("outpaint", "inpaint"), ("image", "img2img")):  # fmt: skip
        if name in fields:
            return command
    return "generate"


def _resolve_paths(args: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """Input files as absolute paths, relative ones read from the job's folder (mix: its image items)."""
    out = dict(args)
    for name in INPUTS:
        if out.get(name):
            out[name] = str((job_dir / Path(out[name]).expanduser()).absolute())
    if out.get("lora"):
        out["lora"] = [[str((job_dir / Path(p).expanduser()).absolute()), scale] for p, scale in out["lora"]]
    if out.get("items"):
        words = list(out["items"])
        for k in range(0, len(words), 2):
            words[k] = _mix_item(words[k], job_dir)
        out["items"] = words
    return out


def _mix_item(word: str, job_dir: Path) -> str:
    if word.startswith("text:"):
        return word
    path = job_dir / Path(word.removeprefix("image:")).expanduser()
    if word.startswith("image:") or path.is_file():
        return f"image:{path.absolute()}"
    if path.suffix.lower() in {".png", *OTHER_IMAGE_SUFFIXES}:  # a typo should not become a prompt
        raise ValueError(f"no such image file {word!r} (write text:{word} to use it as a text)")
    return word


def output_names(output: str | None, index: int, n: int) -> list[str]:
    """The item's PNG names: image_{index}.png (image_{index}_{k}.png for several), or `output`'s."""
    stem = f"image_{index}"
    if output is not None:
        path = Path(output.strip())
        if path.is_absolute() or ".." in path.parts or not path.name:
            raise ValueError(f"output {output!r}: a name inside the output folder, such as cats/red.png")
        if path.suffix.lower() in OTHER_IMAGE_SUFFIXES:
            raise ValueError(f"output {output!r}: kandi writes PNG files (the parameters live in PNG chunks)")
        stem = path.with_suffix("").as_posix() if path.suffix.lower() == ".png" else path.as_posix()
    return [f"{stem}.png"] if n == 1 else [f"{stem}_{k}.png" for k in range(n)]


def _group(req: Request, opts: Any) -> tuple:
    """Text-to-image items batch with others of the same size, steps, guidance and scheduler; any other
    item runs alone (its inputs set its size; a hi-res pass or LoRAs, their own run)."""
    if req.command != "generate" or req.args.get("hires") or req.args.get("lora"):
        return ("alone", req.index)
    return ("generate", opts.width, opts.height, opts.steps, opts.guidance_scale, opts.scheduler)


def engine_request(req: Request) -> EngineRequest:
    """The item as an engine Request, as its kandi command would make it from the same arguments."""
    a = req.args
    hires = {"scale": a.get("hires"), "strength": a.get("hires_strength"), "steps": a.get("hires_steps"),
             "upscaler": a.get("hires_upscaler")}  # fmt: skip
    hires = {k: v for k, v in hires.items() if v is not None}
    if hires and "scale" not in hires:
        raise ValueError("hires_strength, hires_steps and hires_upscaler go with hires (the scale)")
    loras = [(p, s) for p, s in a.get("lora") or []] or None
    return request_from_fields(req.command, a | {"loras": loras, "hires": hires or None})


def _digest(req: Request) -> str:
    """What shapes the item's images: the command, its arguments, the model, the input files' bytes."""
    inputs = {name: _sha256(req.args[name]) for name in INPUTS if req.args.get(name)}
    for k, word in enumerate(req.args.get("items") or []):
        if k % 2 == 0 and word.startswith("image:"):
            inputs[f"item{k // 2 + 1}"] = _sha256(word.removeprefix("image:"))
    data = {
        "command": req.command,
        "args": req.args,
        "names": req.names,
        "model": req.model,
        "inputs": inputs,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # OSError (missing, unreadable) makes the item's error
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
