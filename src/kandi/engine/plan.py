"""The one planner: a `Request` from any shell -> a `Plan` (which task generator runs, with which inputs
and `GenerationOptions`, on which model).

Values come from, in rising order: the model's and the task's defaults, the PNG being replayed
(`request.recorded`), and what the request gives. Every value is checked here (requests.py holds the
checks), so a bad value is refused the same way in the CLI, the server and a batch job, before any
model loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import GenerationOptions
from .models import ModelChoice, choose_model, defaults
from .requests import (
    COMMAND_ROLES,
    NUMBERS,
    PHRASES,
    TASKS,
    Input,
    Limits,
    MixItem,
    Request,
    RequestError,
    UsageError,
    check_limits,
    check_prompt,
    check_seeds,
    default_size,
    file_sha256,
    margins,
    pixels_int,
    random_seed,
    unit_float,
)


@dataclass
class Plan:
    """What runs for a request: `task`(models, opts, **kwargs) of pipelines.k22_tasks / k3_tasks."""

    task: str
    opts: GenerationOptions
    model: ModelChoice
    kwargs: dict[str, Any] = field(default_factory=dict)  # the task's inputs: PIL images, strength...
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # input files: {"path", "sha256"} each
    fields: dict[str, Any] = field(default_factory=dict)  # more A1111 fields, e.g. Denoising strength
    prior_runs: int = 1  # prior runs per image (mix: one per text and one more), for progress totals
    strength: float = 1.0  # the share of the decoder steps run, likewise
    notes: list[str] = field(default_factory=list)
    loras: list[tuple[str, float]] = field(default_factory=list)  # LoRA files and scales to apply
    lora_info: list[dict[str, Any]] = field(default_factory=list)  # what the kandi chunk records of them
    prompt: str | None = None  # the prompt the model reads, when it differs (LoRA tags taken out)
    hires: Any = None  # hires.HiresOptions of a hi-res pass, or None

    @property
    def command(self) -> str:
        return TASKS[self.task].command

    @property
    def role(self) -> str:
        return TASKS[self.task].role


@dataclass
class _Task:
    """A command's own part of the plan, before the shared options."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # default (width, height) instead of the model's
    fixed: dict[str, Any] = field(default_factory=dict)  # options the task sets, over all others
    fields: dict[str, Any] = field(default_factory=dict)
    prior_runs: int = 1
    strength: float = 1.0


Chooser = Callable[[str | None, str | None, dict[str, Any] | None, str], ModelChoice]


def plan(req: Request, limits: Limits | None = None, choose: Chooser = choose_model,
         family: str | None = None, label: str | None = None) -> Plan:  # fmt: skip
    """The request's Plan. `choose(name, prior, recorded, role)` picks the model (the server's picks among
    the models it loaded); `family` and `label` say what that model is when known before choosing."""
    limits = limits or Limits()
    if req.command not in COMMAND_ROLES:
        raise UsageError(f"unknown command {req.command!r} (one of {', '.join(COMMAND_ROLES)})")
    task = PLANNERS[req.command](req)
    _check_family(family, label, task.name)
    model = choose(req.model, req.prior, req.recorded, TASKS[task.name].role)
    fam = family or (model.spec.family if model.spec else None)
    _check_family(fam, model.label, task.name)
    if fam == "k5i2i":
        _k5_edit(req, task, model.label)
    opts = _options(req, model, task, fam, limits)
    _check_sampler_family(opts.scheduler, fam, model.label)
    p = Plan(task.name, opts, model, task.kwargs, task.inputs, task.fields, task.prior_runs, task.strength,
             list(req.notes))  # fmt: skip
    _loras(req, p)
    _hires(req, p, limits)
    return p


def _recorded_extra(req: Request, key: str) -> Any:
    return (((req.recorded or {}).get("options") or {}).get("extra") or {}).get(key)


def _loras(req: Request, p: Plan) -> None:
    """LoRAs: the request's files, else the replayed PNG's (the very same bytes), and `<lora:NAME:SCALE>`
    tags of the prompt found in the LoRA folder; the model reads the prompt without the tags."""
    from ..lora import extract_prompt_loras, find_lora, format_lora_hashes, lora_hash

    given = [(str(path), float(scale)) for path, scale in req.loras or []]
    recorded = [] if req.loras is not None else _recorded_extra(req, "loras") or []
    for entry in recorded:
        path = Path(entry.get("path", ""))
        if not path.is_file() or lora_hash(path) != entry.get("hash"):
            raise RequestError(f"{req.source} was made with the LoRA {path}, which is missing or has changed "
                               "since (another hash): give it again with its scale")  # fmt: skip
        given.append((str(path), float(entry.get("scale", 1.0))))
    files = list(given)
    if "<lora:" in p.opts.prompt:
        try:
            cleaned, tags = extract_prompt_loras(p.opts.prompt)
            if tags and req.lora_dir is None:
                raise ValueError(
                    "the prompt names LoRAs (<lora:NAME:SCALE>) but no LoRA folder is set (--lora-dir)"
                )
            files += [(str(find_lora(name, req.lora_dir)), scale) for name, scale in tags]
        except ValueError as e:
            raise RequestError(str(e), "prompt") from None
        p.prompt = cleaned
    for path, _ in files:
        if not Path(path).is_file():
            raise RequestError(f"LoRA file not found: {path}", "lora")
    if not files:
        return
    p.loras = files
    hashes = {path: lora_hash(path) for path, _ in files}
    p.lora_info = [
        {"name": Path(f).stem, "path": str(Path(f).absolute()), "scale": s, "hash": hashes[f]}
        for f, s in files
    ]
    p.fields["Lora hashes"] = format_lora_hashes([(Path(f).stem, hashes[f][:12]) for f, _ in files])
    if given:  # the files given (not the prompt's tags, which the prompt keeps) for --from-png
        p.opts.extra = {**p.opts.extra, "loras": [i for i in p.lora_info if (i["path"], i["scale"]) in
                                                   {(str(Path(f).absolute()), s) for f, s in given}]}  # fmt: skip


def _hires(req: Request, p: Plan, limits: Limits) -> None:
    """A1111's hires fix: the first pass at the planned size, then img2img at the target size."""
    from dataclasses import asdict

    from ..pipelines.hires import HiresOptions, hires_fields, target_size, upscaler_kind

    fields = req.hires if req.hires is not None else _recorded_extra(req, "hires")
    if not fields:
        return
    if p.task != "text_to_image":
        raise UsageError("the hi-res pass applies to text to image (generate, txt2img)", "hires")
    fields = dict(fields)
    name = str(fields.get("upscaler") or "lanczos")
    if upscaler_kind(name) == "model" and not fields.get("model_path"):
        fields["model_path"] = _upscaler_file(name, req.upscaler_dir)
    try:
        h = HiresOptions(**{k: v for k, v in fields.items() if k in HiresOptions.__dataclass_fields__})
        h.validate()
    except (TypeError, ValueError) as e:
        raise RequestError(str(e), "hires") from None
    w, hh = target_size(p.opts.width, p.opts.height, h)
    check_limits(limits, width=w, height=hh, steps=h.steps or None, names=req.names)
    p.hires = h
    p.fields.update(hires_fields(h))
    p.opts.extra = {**p.opts.extra, "hires": asdict(h)}


def _upscaler_file(name: str, folder: str | None) -> str:
    """A learned upscaler named by its file (a path) or by its name in the upscaler folder."""
    from ..upscale import list_upscalers

    if Path(name).expanduser().is_file():
        return str(Path(name).expanduser().absolute())
    for item in list_upscalers(folder) if folder else []:
        if item["path"] and name in (item["name"], item["key"]):
            return item["path"]
    where = f"in {folder}" if folder else "(no upscaler folder is set: --upscaler-dir)"
    raise RequestError(f"unknown upscaler {name!r}: not lanczos, nearest, a latent mode, a file, or a model "
                       f"{where}", "hires")  # fmt: skip


def _check_sampler_family(name: str | None, fam: str | None, label: str) -> None:
    """Kandinsky 3.1 runs its own samplers and Kandinsky 5 flow matching: a DDPM-family name is refused
    before any model loads (only Euler is correct for a flow model)."""
    if name is None or fam not in ("k31", "k5", "k5i2i"):
        return
    from ..schedulers.names import canonical

    if fam in ("k5", "k5i2i") and canonical(name) == "Euler":
        return
    which = (
        "its own samplers (the original DDIM, or Flash's fixed steps)"
        if fam == "k31"
        else "flow-matching Euler only"
    )
    raise UsageError(f"{label} runs {which}: leave out the sampler {name!r}", "scheduler")


def _check_family(fam: str | None, label: str | None, task: str) -> None:
    if fam is not None and fam not in TASKS[task].families:
        can = [row.api for row in TASKS.values() if fam in row.families]
        can = list(dict.fromkeys(can))
        other = {("k5", "image_to_image"): " (for img2img use kandinsky-5-i2i)",
                 ("k5i2i", "text_to_image"): " (for txt2img use kandinsky-5)"}.get((fam, task), "")  # fmt: skip
        raise RequestError(f"{label} cannot do {TASKS[task].api}; it does: {', '.join(can)}{other}", "model")


def _k5_edit(req: Request, task: _Task, label: str) -> None:
    """Kandinsky 5 editing redraws the whole image (no strength) at the source image's own size unless
    one is given, as Kandinsky5I2IPipeline does (then snapped to the model's sizes)."""
    strength = task.kwargs.pop("strength", None)
    task.strength, task.fields = 1.0, {k: v for k, v in task.fields.items() if k != "Denoising strength"}
    task.fixed = {
        **task.fixed,
        "extra": {k: v for k, v in task.fixed.get("extra", {}).items() if k != "strength"},
    }
    if req.strength is not None and strength is not None:  # the API bodies always hold one: not an error
        req.notes.append(
            f"strength {req.strength} is ignored: {label} redraws the whole image after the prompt"
        )
    task.size = task.kwargs["image"].size


def _options(
    req: Request, model: ModelChoice, task: _Task, fam: str | None, limits: Limits
) -> GenerationOptions:
    """Defaults (the model's and the task's, or the PNG's options), overridden by what the request gives,
    then by what the task fixes (its extra options, e.g. strength)."""
    d = defaults(model.spec, fam)
    if task.size is not None:
        d["width"], d["height"] = task.size
    if req.recorded is not None:  # a kandi PNG records every option; an A1111 one some
        d |= {k: v for k, v in req.recorded["options"].items() if v is not None or k == "negative_prompt"}
        d["num_images"] = 1
    d.update({k: getattr(req, k) for k in Request.OPTIONS if getattr(req, k) is not None})
    d.update(task.fixed, model=model.label)
    if d.get("prompt") is None:
        raise UsageError(f"{_say(req, 'prompt')} is needed{_say(req, 'from-png')}", "prompt")
    opts = GenerationOptions.from_dict(d)
    if opts.scheduler is not None:
        from ..schedulers.names import canonical

        try:
            canonical(opts.scheduler)
        except ValueError as e:
            raise UsageError(f"{req.names.get('scheduler', 'scheduler')}: {e}", "scheduler") from None
    if opts.seed in (None, -1):
        opts.seed = random_seed()
    _check_numbers(opts.to_dict(), req.source)
    check_seeds(opts.seed, opts.num_images)
    check_prompt(opts.prompt, limits, names=req.names)
    check_prompt(opts.negative_prompt, limits, "negative_prompt", req.names)
    check_limits(limits, width=opts.width, height=opts.height, steps=opts.steps, num_images=opts.num_images,
                 prior_steps=opts.prior_steps if fam not in ("k3", "k31", "k5", "k5i2i") else None, names=req.names)  # fmt: skip
    return opts


def _check_numbers(d: dict[str, Any], source: str | None) -> None:
    """Values given were checked by the shell; these checks catch bad values read from a PNG."""
    for name, parse in NUMBERS.items():
        if d.get(name) is None and name in ("prior_steps", "prior_guidance_scale"):
            continue
        try:
            parse(d.get(name))
        except ValueError as e:
            where = f"{source}: bad {name} in its metadata" if source else f"bad {name}"
            raise RequestError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------- the commands' own parts


def _say(req: Request, key: str) -> str:
    """A phrase of the messages, in the shell's words (see requests.PHRASES)."""
    return req.names.get(key, PHRASES[key]) if req.source is None or key != "from-png" else ""


def _input(given: Input | None, role: str, name: str, req: Request) -> Input | None:
    """The input `role`: the one given, else the file the replayed PNG was made from, which must still
    hold the same bytes; None if neither names one."""
    if given is not None:
        return given
    entry = ((req.recorded or {}).get("inputs") or {}).get(role)
    if entry is None:
        return None
    path = Path(entry.get("path", ""))
    if not path.is_file():
        raise RequestError(f"{req.source} was made from the {name} {path}, which is missing: give it again")
    if file_sha256(path, name) != entry.get("sha256"):
        raise RequestError(
            f"{req.source} was made from the {name} {path}, which has changed since (another SHA-256): "
            "the image cannot be made again from it"
        )
    from ..pipelines.images import open_image

    return Input(open_image(path, name), path, entry["sha256"])


def _need(found: Input | None, what: str, req: Request, field: str) -> Input:
    if found is None:
        raise UsageError(f"{what} is needed{_say(req, 'from-png')}", field)
    return found


def _setting(req: Request, key: str, parse: Any, default: Any) -> Any:
    """A task option: as given, else the replayed PNG's (checked as if given), else the default."""
    if getattr(req, key) is not None:
        return getattr(req, key)
    extra = ((req.recorded or {}).get("options") or {}).get("extra") or {}
    if key not in extra:
        return default
    try:
        return parse(extra[key])
    except ValueError as e:
        raise RequestError(f"{req.source}: bad {key} in its metadata: {e}") from None


def _inputs(**found: Input) -> dict[str, dict[str, str]]:
    return {k: v.record() for k, v in found.items() if v.record() is not None}


def _edited(name: str, strength: float, **task: Any) -> _Task:
    """A task whose decoder starts part way (`strength`): A1111's Denoising strength, kept in the options."""
    fixed = task.pop("fixed", {})
    extra = {"strength": strength, **fixed.pop("extra", {})}
    return _Task(name, strength=strength, fields={"Denoising strength": strength},
                 fixed={**fixed, "extra": extra}, **task)  # fmt: skip


def _text_to_image(req: Request) -> _Task:
    return _Task("text_to_image")


def _img2img(req: Request) -> _Task:
    image = _need(_input(req.image, "image", _say(req, "file:image"), req), _say(req, "image"), req, "image")
    strength = _setting(req, "strength", unit_float, 0.3)
    return _edited("image_to_image", strength, kwargs={"image": image.image, "strength": strength},
                   inputs=_inputs(image=image), size=default_size(image.image))  # fmt: skip


def _inpaint(req: Request) -> _Task:
    image = _need(_input(req.image, "image", _say(req, "file:image"), req), _say(req, "image"), req, "image")
    strength = _setting(req, "strength", unit_float, 1.0)
    if req.mask is not None and req.outpaint is not None:
        raise UsageError("give a mask (inpaint) or outpaint margins, not both", "mask")
    pads = req.outpaint or (None if req.mask else _setting(req, "outpaint", margins, None))
    if pads is not None:
        return _outpaint(req, image, strength, pads)
    mask = _need(_input(req.mask, "mask", _say(req, "file:mask"), req), _say(req, "mask"), req, "mask")
    if mask.image.size != image.image.size:
        from ..errors import warn_once

        (w, h), (mw, mh) = image.image.size, mask.image.size
        warn_once(f"the {mw}x{mh} mask is stretched to the {w}x{h} image")
    paste = req.paste_back
    if paste is None:
        paste = ((req.recorded or {}).get("options", {}).get("extra") or {}).get("paste_back") is True
    feather = _setting(req, "feather", pixels_int, 0)
    if feather and not paste:
        raise UsageError(_say(req, "feather"), "feather")
    kwargs = {"image": image.image, "mask": mask.image, "strength": strength, "paste_back": paste,
              "feather": feather}  # fmt: skip
    return _edited("inpaint", strength, kwargs=kwargs, size=default_size(image.image),
                   inputs=_inputs(image=image, mask=mask), fixed={"extra": {"paste_back": paste, "feather": feather}})  # fmt: skip


def _outpaint(req: Request, image: Input, strength: float, pads: tuple[int, int, int, int]) -> _Task:
    if req.width is not None or req.height is not None:
        raise UsageError(_say(req, "outpaint size"), "width")
    if req.paste_back is False:
        raise UsageError(_say(req, "outpaint paste"), "paste_back")
    feather = _setting(req, "feather", pixels_int, 8)
    left, top, right, bottom = pads
    w, h = image.image.size
    kwargs = dict(image=image.image, left=left, top=top, right=right, bottom=bottom, strength=strength,
                  feather=feather)  # fmt: skip
    size = {"width": left + w + right, "height": top + h + bottom}
    return _edited("outpaint", strength, kwargs=kwargs, inputs=_inputs(image=image),
                   fixed={**size, "extra": {"outpaint": list(pads), "feather": feather}})  # fmt: skip


def _mix(req: Request) -> _Task:
    pairs = req.items if req.items else _recorded_pairs(req)
    items, record, inputs = [], [], {}
    for k, item in enumerate(pairs, 1):
        if item.kind == "text":
            items.append(item.value)
            record.append({"text": item.value, "weight": item.weight})
        else:  # value None: the file the PNG was made from
            found = _need(_input(item.value, f"item{k}", f"item {k}", req), f"item {k}'s image", req, "items")
            items.append(found.image)
            inputs |= _inputs(**{f"item{k}": found})
            record.append({"image": f"item{k}", "weight": item.weight})
    texts = [i for i in items if isinstance(i, str)]
    # A1111 readers show the prompt: the texts of the mix; the whole mix is in the kandi chunk
    return _Task("mix", {"items": items, "weights": [p.weight for p in pairs]}, inputs=inputs,
                 fixed={"prompt": " | ".join(texts), "extra": {"mix": record}}, prior_runs=len(texts) + 1)  # fmt: skip


def _recorded_pairs(req: Request) -> list[MixItem]:
    from .requests import finite_float

    if req.recorded is None:
        raise UsageError(_say(req, "mix") + _say(req, "from-png"), "items")
    entries = (req.recorded["options"].get("extra") or {}).get("mix")
    try:
        return [MixItem("text", e["text"], finite_float(e["weight"])) if "text" in e
                else MixItem("image", None, finite_float(e["weight"])) for e in entries]  # fmt: skip
    except (TypeError, KeyError, ValueError):
        raise RequestError(f"{req.source}: bad mix in its metadata") from None


def _controlnet(req: Request) -> _Task:
    hint = _need(_input(req.hint, "hint", _say(req, "file:hint"), req), _say(req, "hint"), req, "hint")
    init = _input(req.image, "image", _say(req, "file:init"), req)
    task = {"kwargs": {"hint": hint.image}, "size": default_size(hint.image), "inputs": _inputs(hint=hint)}
    if init is None:
        if req.strength is not None:
            raise UsageError(_say(req, "strength"), "strength")
        return _Task("controlnet", **task)
    strength = _setting(req, "strength", unit_float, 0.3)
    task["kwargs"] |= {"image": init.image, "strength": strength}
    task["inputs"] |= _inputs(image=init)
    return _edited("controlnet", strength, **task)


PLANNERS: dict[str, Callable[[Request], _Task]] = {
    "generate": _text_to_image,
    "img2img": _img2img,
    "inpaint": _inpaint,
    "mix": _mix,
    "controlnet": _controlnet,
}
