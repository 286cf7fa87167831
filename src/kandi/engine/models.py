"""Which model a request names, on which device and dtype, and the one loader every shell uses.

`choose_model` resolves a registry name, a folder or a hub id to its repos (for a registered model, the
decoder of the task's role: plain, inpainting or ControlNet); `runtime` picks the device and dtype;
`load` loads a model's prior and decoder (or Kandinsky 3's one repo), sharing a prior already loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..configs import DEFAULT_MODEL, REGISTRY, ModelSpec, resolve_model
from ..errors import ModelNotFoundError
from .requests import DTYPES, UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelChoice:
    label: str  # what the metadata calls it: the registry name, or the decoder as given
    decoder: str  # hub id or absolute folder
    prior: str | None  # None: the one the decoder's model card names
    spec: ModelSpec | None


def registered(name: str) -> ModelSpec | None:
    try:
        return resolve_model(name)
    except ValueError:
        return None


def choose_model(
    name: str | None, prior: str | None = None, recorded: dict[str, Any] | None = None, role: str = "decoder"
) -> ModelChoice:
    """The model and its repos; for a registered model, its `role` decoder (decoder, inpaint, controlnet).
    With no name, the model a replayed PNG was made with (its very repos), else the default model."""
    if name is None and recorded is not None:
        label, repos = recorded["options"].get("model") or DEFAULT_MODEL, recorded.get("repos") or {}
        if repos.get("decoder"):
            return ModelChoice(label, repos["decoder"], prior or repos.get("prior"), registered(label))
        name = label
    name = name or DEFAULT_MODEL
    spec = registered(name)
    if spec is not None:
        decoder = getattr(spec, f"{role}_repo")
        if decoder is None and spec.family in ("k3", "k5", "k5i2i"):
            does = {"k3": "makes images from text and redraws images (generate, img2img)",
                    "k5": "makes images from text (generate)", "k5i2i": "edits images after a prompt (img2img)"}  # fmt: skip
            raise UsageError(f"{spec.name} {does[spec.family]}; for {role} use --model kandinsky-2.2")
        if decoder is None:
            raise UsageError(f"{spec.name} has no {role} decoder: name one with -m REPO")
        return ModelChoice(spec.name, decoder, prior or spec.prior_repo, spec)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return ModelChoice(folder.resolve().name, str(folder.resolve()), prior, None)
    from ..loading.hub import looks_like_repo_id

    if not looks_like_repo_id(name):
        raise UsageError(
            f"unknown model {name!r}: not a known model ({', '.join(sorted(REGISTRY))}), "
            "a folder, or a Hugging Face id (owner/name)"
        )
    return ModelChoice(name, name, prior, None)


def defaults(spec: ModelSpec | None, family: str | None = None) -> dict[str, Any]:
    """A model's own defaults (a folder or hub id of no known model: the default model's)."""
    s = spec or REGISTRY[DEFAULT_MODEL]
    d = {"width": s.default_size, "height": s.default_size, "steps": s.default_steps,
         "guidance_scale": s.default_guidance}  # fmt: skip
    if (family or s.family) not in ("k3", "k31", "k5", "k5i2i"):
        d |= {"prior_steps": s.default_prior_steps, "prior_guidance_scale": s.default_prior_guidance}
    return d


def runtime(
    device: str | None, dtype: str | None, recorded: dict[str, Any] | None = None
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
    if dev.type == "cpu" and dtype == "bfloat16":
        from .. import fast

        try:  # bf16 where the CPU computes it natively (AMX, AVX-512 BF16); refused where it would crawl
            fast.check_cpu_dtype(torch.bfloat16, how="--dtype fp32")
        except ValueError as e:
            raise UsageError(f"--dtype bf16: {e}") from None
    elif dev.type == "cpu" and dtype != "float32":
        from ..errors import warn_once

        # the same words as the Python API's warning (compat.base), so both shells say it alike
        warn_once(f"running {dtype} weights on the CPU: this works but is about 100x slower than float32 "
                  "(use --dtype fp32 on a machine without a GPU)")  # fmt: skip
    return dev, getattr(torch, dtype)


def is_k3(model: ModelChoice, variant: str | None, hub: dict[str, Any]) -> bool:
    if model.spec is not None:
        return model.spec.family == "k3"
    from ..loading.hub import resolve_repo_dir
    from ..loading.pipeline import read_model_index

    root = resolve_repo_dir(model.decoder, variant=variant, **hub)
    return read_model_index(root)["_class_name"].startswith("Kandinsky3")


def load(model: ModelChoice, device: torch.device, dtype: torch.dtype, variant: str | None = None,
         offline: bool = False, downloads: bool = False, shared_prior: Any = None,
         role: str = "decoder") -> tuple[ModelChoice, Any]:  # fmt: skip
    """The model's prior and decoder on `device` (the prior from the decoder's model card if not named;
    `shared_prior`: loaded models whose prior is reused when it is the same repo); for Kandinsky 3 its
    one repo. Returns the choice with its prior filled in, and the K22Models or K3Models."""
    from ..loading.hub import connected_repos, resolve_repo_dir
    from ..pipelines.k22_tasks import K22Models
    from .console import progress_bars

    hub = {"local_files_only": True} if offline else {}
    try:
        with progress_bars(downloads=downloads):
            fam = model.spec.family if model.spec else None
            if fam == "k31":  # ai-forever's own layout: the model's UNet for the task's role
                from ..pipelines.k31_tasks import load_for_task

                task = "inpaint" if role == "inpaint" else "text_to_image"
                return replace(model, prior=None), load_for_task(
                    model.spec.name, task, torch_dtype=dtype, **hub
                ).to(device)
            if fam in ("k5", "k5i2i"):
                from ..pipelines.k5_tasks import K5Models

                return replace(model, prior=None), K5Models.load(
                    model.decoder, torch_dtype=dtype, variant=variant, **hub
                ).to(device)
            if is_k3(model, variant, hub):  # no prior: text encoder, UNet and MoVQ in one repo
                from ..pipelines.k3_tasks import K3Models

                k3 = K3Models.load(model.decoder, torch_dtype=dtype, variant=variant, **hub)
                return replace(model, prior=None), _placed(k3.to(device), device, dtype)
            if model.prior is None:
                card = connected_repos(resolve_repo_dir(model.decoder, variant=variant, **hub))
                model = replace(model, prior=card.get("prior") or REGISTRY[DEFAULT_MODEL].prior_repo)
            shared = shared_prior[1] if shared_prior and shared_prior[0].prior == model.prior else None
            models = K22Models.load(model.decoder, model.prior, torch_dtype=dtype, variant=variant,
                                    shared_prior=shared, **hub)  # fmt: skip
    except ModelNotFoundError as e:
        raise with_download_hint(e, model.spec) from None
    return model, _placed(models.to(device), device, dtype)


def compiled(models: Any) -> str:
    """torch.compile the loaded models' UNet and decoder (`--compile`); the line that says what it costs."""
    from .. import fast

    try:
        return fast.compile_models(models)
    except ValueError as e:
        raise UsageError(f"--compile: {e}") from None


def _placed(models: Any, device: torch.device, dtype: torch.dtype) -> Any:
    import torch

    from .. import fast

    if device.type == "cpu":
        fast.keep_freed_memory_by_default()  # the shells' processes run steps back to back: keep their pages
    if device.type == "cpu" and dtype == torch.bfloat16:  # runtime() let it through: native bf16
        fast.use_bf16_layout(models)
    return models


def family(models: Any) -> str:
    from ..pipelines.k3_tasks import K3Models
    from ..pipelines.k5_tasks import K5Models
    from ..pipelines.k31_tasks import K31Models

    if isinstance(models, K3Models):
        return "k3"
    if isinstance(models, K31Models):
        return "k31"
    if isinstance(models, K5Models):
        return "k5i2i" if models.edits else "k5"
    return "k21" if models.k21 else "k22"


def with_download_hint(e: ModelNotFoundError, spec: ModelSpec | None) -> ModelNotFoundError:
    """The loader suggests `kandi download <repo id>`; for a registered model, name the model instead."""
    msg = str(e)
    if spec is not None:
        for repo in (spec.decoder_repo, spec.prior_repo):
            msg = msg.replace(f"kandi download {repo}", f"kandi download {spec.name}")
        for repo in (spec.inpaint_repo, spec.controlnet_repo):  # only fetched with --all
            msg = msg.replace(f"kandi download {repo}", f"kandi download {spec.name} --all")
    return ModelNotFoundError(msg)
