"""`from_pretrained` for pipelines: resolve the folder, pick the class, load the components.

Follows diffusers: `DiffusionPipeline.from_pretrained` picks the class named by model_index.json,
`load_connected_pipeline=True` (and the combined classes) also load the repo that the model card names
under `prior:`, keyword arguments named like a component replace it, and `prior_<name>` ones replace a
connected pipeline's component.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..loading.hub import connected_repos, resolve_repo_dir
from ..loading.pipeline import load_components, read_model_index

log = logging.getLogger(__name__)

# from_pretrained keywords that diffusers takes and kandi has no use for (accepted, ignored)
_IGNORED_LOAD_KWARGS = {"low_cpu_mem_usage", "use_safetensors", "use_onnx", "force_download", "proxies",
                        "output_loading_info", "resume_download", "mirror", "custom_revision", "provider",
                        "sess_options", "offload_folder", "offload_state_dict", "max_memory", "dduf_file",
                        "quantization_config", "use_flashpack", "disable_mmap"}  # fmt: skip
_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token")


# diffusers pipeline class name -> kandi module holding the class of the same name
_K22 = "kandi.compat.kandinsky22"
_K22_EDIT = "kandi.compat.kandinsky22_edit"
_K21 = "kandi.compat.kandinsky21"
_K3 = "kandi.compat.kandinsky3"
PIPELINE_MODULES = {
    "Kandinsky3Pipeline": _K3,
    "Kandinsky5T2IPipeline": "kandi.compat.kandinsky5",
    "Kandinsky3Img2ImgPipeline": _K3,
    "KandinskyPriorPipeline": _K21,
    "KandinskyPipeline": _K21,
    "KandinskyImg2ImgPipeline": _K21,
    "KandinskyInpaintPipeline": _K21,
    "KandinskyCombinedPipeline": _K21,
    "KandinskyImg2ImgCombinedPipeline": _K21,
    "KandinskyInpaintCombinedPipeline": _K21,
    "KandinskyV22PriorPipeline": _K22,
    "KandinskyV22Pipeline": _K22,
    "KandinskyV22CombinedPipeline": _K22,
    "KandinskyV22PriorEmb2EmbPipeline": _K22_EDIT,
    "KandinskyV22Img2ImgPipeline": _K22_EDIT,
    "KandinskyV22InpaintPipeline": _K22_EDIT,
    "KandinskyV22ControlnetPipeline": _K22_EDIT,
    "KandinskyV22ControlnetImg2ImgPipeline": _K22_EDIT,
    "KandinskyV22Img2ImgCombinedPipeline": _K22_EDIT,
    "KandinskyV22InpaintCombinedPipeline": _K22_EDIT,
}
# decoder class -> the combined class that also loads its prior ("connected pipeline")
CONNECTED = {
    "KandinskyPipeline": "KandinskyCombinedPipeline",
    "KandinskyImg2ImgPipeline": "KandinskyImg2ImgCombinedPipeline",
    "KandinskyInpaintPipeline": "KandinskyInpaintCombinedPipeline",
    "KandinskyV22Pipeline": "KandinskyV22CombinedPipeline",
    "KandinskyV22Img2ImgPipeline": "KandinskyV22Img2ImgCombinedPipeline",
    "KandinskyV22InpaintPipeline": "KandinskyV22InpaintCombinedPipeline",
}


def pipeline_class(name: str) -> type:
    import importlib

    module = PIPELINE_MODULES.get(name)
    if module is None:
        raise CheckpointError(
            f"model_index.json names the pipeline {name}, which kandi does not provide; kandi runs the Kandinsky "
            f"pipelines: {', '.join(sorted(PIPELINE_MODULES))}"
        )
    return getattr(importlib.import_module(module), name)


def _split_kwargs(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
    opts = {k: kwargs.pop(k) for k in ("torch_dtype", "variant", "load_connected_pipeline") if k in kwargs}
    for k in list(kwargs):
        if k in _IGNORED_LOAD_KWARGS:
            kwargs.pop(k)
        elif k == "device_map" and kwargs[k] is not None:
            raise NotImplementedError(
                "device_map is not supported by kandi; use pipe.to(device) or enable_model_cpu_offload()"
            )
    return hub, opts, kwargs


def load_pipeline(cls: type, name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> Any:
    hub, opts, passed = _split_kwargs(cls, dict(kwargs))
    dtype: torch.dtype | None = opts.get("torch_dtype")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    variant = opts.get("variant")
    root = resolve_repo_dir(
        name_or_path, variant=variant, role=getattr(cls, "_repo_role", "decoder_repo"), **hub
    )
    index = read_model_index(root)
    target = _choose_class(cls, index["_class_name"], bool(opts.get("load_connected_pipeline")))
    unknown = sorted(k for k in passed if k not in target._components and not k.startswith("prior_"))
    if unknown:
        log.warning("%s.from_pretrained ignores unexpected arguments %s", target.__name__, unknown)
    comps = _gather(target, root, index, passed, dtype, variant, hub)
    pipe = target(**comps)
    pipe._name_or_path = str(name_or_path)
    return pipe


def _choose_class(cls: type, index_class: str, connected: bool) -> type:
    if not cls.__dict__.get("_picks_class_from_index"):
        return cls
    name = CONNECTED.get(index_class, index_class) if connected else index_class
    return pipeline_class(name)


def _gather(target: type, root: Path, index: dict, passed: dict, dtype, variant, hub: dict) -> dict[str, Any]:
    names = list(target._components)
    local = [n for n in names if n in index or n in passed or not n.startswith("prior_")]
    comps = load_components(root, index, local, passed, torch_dtype=dtype, variant=variant)
    rest = [n for n in names if n not in comps]
    if rest:
        comps.update(_load_connected_prior(target, root, rest, passed, dtype, variant, hub))
    return comps


def _load_connected_prior(
    target: type, root: Path, names: list[str], passed: dict, dtype, variant, hub: dict
) -> dict:
    repo = connected_repos(root).get("prior")
    if repo is None:
        raise CheckpointError(
            f"{target.__name__} needs a prior ({', '.join(names)}), but {root} lists none in model_index.json and its "
            "README.md model card names no `prior:` repo; pass the prior components, or load the prior separately"
        )
    prior_root = resolve_repo_dir(repo, variant=variant, **hub)
    index = read_model_index(prior_root)
    inner = [n[len("prior_") :] for n in names]
    inner_passed = {k[len("prior_") :]: v for k, v in passed.items() if k.startswith("prior_")}
    loaded = load_components(prior_root, index, inner, inner_passed, torch_dtype=dtype, variant=variant)
    return {"prior_" + k: v for k, v in loaded.items()}
