"""Load the components of a diffusers-layout pipeline folder (model_index.json + one folder each)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, VariantNotFoundError
from .checkpoints import load_model_from_dir, read_json
from .hub import weight_sets

DtypeSpec = torch.dtype | dict[str, torch.dtype] | None

log = logging.getLogger(__name__)

# transformers classes a model_index.json may name. An allowlist: model_index.json is data, and it must
# not be able to make kandi instantiate arbitrary classes.
_TRANSFORMERS_OK = re.compile(r"^(CLIP|XLMRoberta|T5|MT5|Qwen2_5_VL)[A-Za-z]*$")
# Qwen2-VL processors need torchvision in transformers 5 (their video processor); Kandinsky 5 needs the
# tokenizer and the image side only, so these load as kandi's PIL/numpy processor from the same folder.
_TOKENIZER_ONLY = {"Qwen2VLProcessor", "Qwen2_5_VLProcessor"}


def kandi_class(name: str) -> Any | None:
    """kandi's class for a diffusers class name found in model_index.json, or None."""
    from .. import schedulers
    from ..models.k5_dit import K5DiT
    from ..models.mclip import MCLIP
    from ..models.movq import MoVQ
    from ..models.prior import Prior
    from ..models.unet2 import UNet2
    from ..models.unet3 import UNet3
    from ..models.vae_flux import AutoencoderKL
    from ..schedulers.flow_match import FlowMatchEulerDiscreteScheduler

    table = {
        "UNet2DConditionModel": UNet2,
        "Kandinsky3UNet": UNet3,
        "VQModel": MoVQ,
        "PriorTransformer": Prior,
        "MultilingualCLIP": MCLIP,
        "Kandinsky5Transformer3DModel": K5DiT,
        "AutoencoderKL": AutoencoderKL,
        "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
    }
    # every scheduler class kandi has, under its diffusers name (a saved pipeline may hold any of them)
    table |= {n: getattr(schedulers, n) for n in schedulers.__all__ if n.endswith("Scheduler")}
    return table.get(name)


def read_model_index(root: Path) -> dict[str, Any]:
    index = read_json(root / "model_index.json", "model_index")
    if not isinstance(index.get("_class_name"), str):
        raise CheckpointError(f"{root / 'model_index.json'} has no _class_name naming the pipeline")
    return index


def _transformers_kwargs(
    torch_dtype: torch.dtype | None, variant: str | None, folder: Path
) -> dict[str, Any]:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kw: dict[str, Any] = {key: torch_dtype or torch.float32}
    if variant and any(f".{variant}." in p.name for p in folder.iterdir()):
        kw["variant"] = variant
    return kw


def load_component(
    root: Path,
    name: str,
    library: str,
    class_name: str,
    *,
    torch_dtype: torch.dtype | None,
    variant: str | None,
) -> Any:
    """One component: a kandi model or scheduler, or an allowlisted transformers model/tokenizer/processor."""
    folder = root / name
    if not folder.is_dir():
        raise CheckpointError(
            f"{root} has no {name!r} folder, which its model_index.json lists ({class_name})"
        )
    cls = kandi_class(class_name)
    if cls is not None:
        if hasattr(cls, "diffusers_name"):
            return load_model_from_dir(cls, folder, torch_dtype=torch_dtype, variant=variant)
        return cls.from_pretrained(folder)
    if library == "transformers" and class_name in _TOKENIZER_ONLY:
        from ..pipelines.k5_processor import QwenVLProcessor

        return QwenVLProcessor(_load_transformers(folder, "AutoTokenizer", torch_dtype, variant),
                               QwenVLProcessor.image_processor_of(folder))  # fmt: skip
    if library == "transformers" and _TRANSFORMERS_OK.match(class_name):
        return _load_transformers(folder, class_name, torch_dtype, variant)
    raise CheckpointError(
        f"component {name!r} of {root} is a {library}.{class_name}, which kandi does not support "
        "(kandi runs the Kandinsky UNet, MoVQ, prior, DiT, VAE, the schedulers in kandi.schedulers and "
        "CLIP/XLM-R/T5/Qwen encoders)"
    )


def _transformers_class(transformers: Any, class_name: str) -> Any:
    # Without torchvision, transformers 5 swaps an image processor for its PIL backend and logs a warning
    # saying so on every load: ask for that backend by name, which is what it would load anyway.
    if class_name.endswith("ImageProcessor") and importlib.util.find_spec("torchvision") is None:
        pil = getattr(transformers, class_name + "Pil", None)
        if pil is not None:
            return pil
    return getattr(transformers, class_name, None)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off for one load (a few ms per component; noise on a terminal)."""
    from transformers.utils import logging as tlog

    was = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlog.enable_progress_bar()


def _load_transformers(
    folder: Path, class_name: str, torch_dtype: torch.dtype | None, variant: str | None
) -> Any:
    import transformers

    cls = _transformers_class(transformers, class_name)
    if cls is None:
        raise CheckpointError(f"{folder}: transformers has no class {class_name}")
    is_model = issubclass(cls, transformers.PreTrainedModel)
    kw = _transformers_kwargs(torch_dtype, variant, folder) if is_model else {}
    try:
        with _no_progress_bar():
            obj = cls.from_pretrained(str(folder), **kw)
    except Exception as e:
        raise CheckpointError(f"could not load {class_name} from {folder}: {type(e).__name__}: {e}") from None
    return obj.eval() if is_model else obj


def variant_components(root: Path, index: dict[str, Any], variant: str) -> list[str]:
    """The components of the pipeline folder `root` that hold `variant` weights (e.g. `*.fp16.safetensors`)."""
    found = []
    for name in index:
        folder = root / name
        if name.startswith("_") or not folder.is_dir():
            continue
        if any(s.variant == variant for s in weight_sets([p.name for p in folder.iterdir()])):
            found.append(name)
    return found


def check_variant(root: Path, index: dict, variant: str | None, fallback: bool = False) -> str | None:
    """The variant to load from `root`: `variant` when a component has it (diffusers' rule: the others then
    load their plain weights), else a VariantNotFoundError, or None with one warning when `fallback`."""
    if variant is None or variant_components(root, index, variant):
        return variant
    checked = [n for n in index if not n.startswith("_") and (root / n).is_dir()]
    err = VariantNotFoundError(variant, root, checked)
    if not fallback:
        raise err
    log.warning("%s has no %s weights; loading its plain weights", root, variant)
    return None


def check_dtypes(dtype: Any) -> None:
    """`torch_dtype`/`dtype` is a torch.dtype, or a dict of them by component name (with an optional "default")."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return
    if isinstance(dtype, dict):
        bad = {k: v for k, v in dtype.items() if not (isinstance(k, str) and isinstance(v, torch.dtype))}
        if not bad:
            return
        raise TypeError(
            f"a torch_dtype dict maps component names to torch dtypes, e.g. {{'unet': torch.bfloat16, "
            f"'default': torch.float16}}; these entries are not: {bad!r}"
        )
    raise TypeError(
        f"torch_dtype must be a torch.dtype such as torch.float16, or a dict of them by component name, got {dtype!r}"
    )


def component_dtype(dtype: DtypeSpec, name: str) -> torch.dtype | None:
    """The dtype for component `name` (as the pipeline names it): its entry of a dict, else "default", else float32."""
    if not isinstance(dtype, dict):
        return dtype
    return dtype.get(name, dtype.get("default", torch.float32))


def _is_name(x: Any) -> bool:
    return x is None or isinstance(x, str)


def load_components(
    root: Path,
    index: dict[str, Any],
    names: list[str],
    passed: dict[str, Any],
    *,
    torch_dtype: DtypeSpec,
    variant: str | None,
    prefix: str = "",
) -> dict[str, Any]:
    """Components `names` of the pipeline folder `root`; objects in `passed` are used instead of loading."""
    out: dict[str, Any] = {}
    for name in names:
        if name in passed:
            out[name] = passed[name]
            continue
        spec = index.get(name)
        if spec is None:
            raise CheckpointError(
                f"{root / 'model_index.json'} does not list the component {name!r} this pipeline needs"
            )
        # both names must be strings (or null for an absent component): they are looked up, never trusted
        if not (isinstance(spec, list | tuple) and len(spec) == 2 and all(_is_name(x) for x in spec)):
            raise CheckpointError(
                f"{root / 'model_index.json'}: entry {name!r} should be [library, class], got {spec!r}"
            )
        library, class_name = spec
        if class_name is None:
            out[name] = None
            continue
        dtype = component_dtype(torch_dtype, prefix + name)
        out[name] = load_component(root, name, library, class_name, torch_dtype=dtype, variant=variant)
        log.info("loaded %s%s (%s.%s) from %s", prefix, name, library, class_name, root / name)
    return out
