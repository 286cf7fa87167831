"""Read and write model folders in diffusers layout (config.json + safetensors / .bin weights).

Models are built on the meta device and the checkpoint tensors are assigned into them with strict key
checking, so a 1.2B UNet loads in the time it takes to read its file, and a missing, unexpected or
mis-shaped key is one readable error naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from .. import fast
from ..errors import CheckpointError
from .hub import WeightSet, choose_weights, resolve_component_dir, weight_sets

log = logging.getLogger(__name__)

DIFFUSERS_VERSION = "0.42.1"  # written into saved configs; the format is the one diffusers 0.42 reads


def read_json(path: Path, what: str = "config") -> dict[str, Any]:
    """Parse a JSON config file, with an error that names the file and says what was wrong."""
    if not path.is_file():
        raise CheckpointError(f"missing {what} file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); expected a diffusers {what} file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, expected an object ({what})")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")  # views of the memory-mapped file, read on first use
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def _conv_weights_channels_last(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """The spatial weights of `model`'s Conv2d modules (those its layout hook manages) as channels-last
    copies in `sd`, which holds views of memory-mapped safetensors files.

    The layout the model would give them at its first call (models.layers.follow_input_layouts),
    made while loading. After each copy the mapping's pages under the view are dropped (madvise
    DONTNEED of clean file pages, read again from the file if ever touched; safetensors tensors never
    share bytes). Without that the copied-from pages would stay in the RSS beside the copy: 9.0
    instead of 5.5 GB for the 2.2 UNet after a step. Other modules (ConvTranspose2d, ...) keep the
    file's layout: no hook would put them back. Same values either way.
    """
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        t = sd.get(key)
        if not isinstance(m, torch.nn.Conv2d) or t is None:
            continue
        if t.dim() == 4 and t.shape[2] * t.shape[3] > 1 and t.is_floating_point() and t.is_contiguous():
            sd[key] = torch.empty_like(t, memory_format=torch.channels_last).copy_(t)
            _drop_mapped_pages(t)


_PAGE = 4096
_madvise: list[Any] = []  # libc's madvise, found once (None where there is none)


def _drop_mapped_pages(t: torch.Tensor) -> None:
    # only whole pages inside this tensor's own bytes: safetensors tensors never overlap
    if not _madvise:
        _madvise.append(_find_madvise())
    start = -(-t.data_ptr() // _PAGE) * _PAGE
    end = (t.data_ptr() + t.nbytes) // _PAGE * _PAGE
    if _madvise[0] is not None and end > start:
        _madvise[0](start, end - start, 4)  # MADV_DONTNEED; a failure only leaves the pages mapped


def _find_madvise() -> Any:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a .bin is a pickle, and only plain tensors are accepted from it (no code execution)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} could not be read as PyTorch weights: {_bin_reason(e)}") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, expected a state dict of tensors")
    return sd


def _bin_reason(e: Exception) -> str:
    """One line on why torch.load failed; torch's own multi-line text suggests weights_only=False."""
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return (
            f"it holds a pickled {m[1]}, and kandi refuses to unpickle anything but tensors "
            "(a pickle can run code)"
        )
    text = text.split("WeightsUnpickler error:", 1)[-1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return f"corrupt, or not a plain state dict of tensors ({type(e).__name__}: {line})"


def read_weights(folder: Path, ws: WeightSet) -> dict[str, torch.Tensor]:
    """All tensors of one weight set (single file or shards listed by its index)."""
    files = list(ws.files)
    if ws.index:
        index = read_json(folder / ws.index, "weights index")
        wmap = index.get("weight_map")
        if not isinstance(wmap, dict):
            raise CheckpointError(f"{folder / ws.index} has no weight_map; expected a sharded-weights index")
        files = sorted(set(wmap.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{folder} is missing shard(s) {missing} listed in {ws.index}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(_read_safetensors(folder / f) if ws.ext == ".safetensors" else _read_bin(folder / f))
    return sd


def _check_keys(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, config_path: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [(k, tuple(sd[k].shape), tuple(s)) for k, s in expected.items() if k in sd and sd[k].shape != s]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"weights in {source} do not fit the config in {config_path}: {len(wrong)} tensor(s) have other "
            f"shapes, e.g. {k} is {list(got)} but the config builds {list(want)}"
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"weights in {source} do not match the model described by {config_path}: " + "; ".join(parts)
        )


def load_model_from_dir(
    cls: Any, folder: Path, *, torch_dtype: torch.dtype | None = None, variant: str | None = None
) -> Any:
    """Build `cls` from `folder/config.json` on the meta device and assign the folder's weights."""
    config_path = folder / "config.json"
    raw = read_json(config_path)
    name = raw.get("_class_name")
    if name and name != cls.diffusers_name:
        raise CheckpointError(f"{config_path} describes a {name}, not a {cls.diffusers_name}")
    try:
        cfg = cls.config_class.from_diffusers(raw)
    except (ValueError, TypeError) as e:  # TypeError: a value of the wrong JSON type the config did not check
        raise CheckpointError(f"{config_path}: {e}") from None
    names = [p.name for p in folder.iterdir()]
    ws = choose_weights(names, variant)
    if ws is None:
        raise CheckpointError(_no_weights_message(folder, names, variant))
    if variant and ws.variant != variant:
        log.info("%s has no %s weights; loading %s", folder, variant, ws.files[0])
    sd = cls.convert_state_dict(read_weights(folder, ws))
    fast.keep_freed_memory_by_default()  # the steps that follow should not re-fault freed activations
    try:
        with torch.device("meta"):
            model = cls(cfg)
    except (TypeError, ValueError) as e:  # a value of the wrong type that the config class let through
        raise CheckpointError(
            f"{config_path} describes a {cls.diffusers_name} that cannot be built: {e}"
        ) from None
    source = str(folder / (ws.index or ws.files[0]))
    _check_keys(model, sd, source, config_path)
    if getattr(cls, "channels_last_convs", False) and ws.ext == ".safetensors":  # mapped views only
        _conv_weights_channels_last(model, sd)
    dtype = torch_dtype or torch.float32
    # diffusers' _keep_in_fp32_modules: a model may keep some modules (K5's timestep path) in float32
    keep = set(getattr(cls, "keep_fp32", ()))
    sd = {k: v.to(torch.float32 if keep & set(k.split(".")) else dtype) if v.is_floating_point() else v
          for k, v in sd.items()}  # fmt: skip
    model.load_state_dict(sd, strict=True, assign=True)
    _materialize_buffers(model)
    return model.eval()


def _no_weights_message(folder: Path, names: list[str], variant: str | None) -> str:
    # several variants and none asked for (or another asked for): say which exist, not "no weights"
    variants = sorted({s.variant for s in weight_sets(names) if s.variant})
    if variants:
        want = f"{variant} variant" if variant else "plain (non-variant)"
        return (
            f"{folder} has no {want} weights, only the variants {', '.join(variants)}: pass "
            f"variant={variants[0]!r} (or another of them)"
        )
    return (
        f"no weights in {folder}: expected diffusion_pytorch_model.safetensors (or .bin, a sharded index, or a "
        f"variant such as diffusion_pytorch_model.fp16.safetensors)"
    )


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Non-persistent buffers are not in checkpoints: models rebuild them after a meta-device load."""
    if any(b.is_meta for b in model.buffers()):
        init = getattr(model, "init_buffers", None)
        if init is None:
            bad = [n for n, b in model.named_buffers() if b.is_meta]
            raise CheckpointError(f"{type(model).__name__} has buffers {bad} not filled by its checkpoint")
        init(torch.device("cpu"))


def load_model(
    cls: Any,
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    *,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    **unused: Any,
) -> Any:
    """`Model.from_pretrained`: a diffusers-layout model folder, or a hub id plus `subfolder`."""
    folder = resolve_component_dir(
        name_or_path,
        subfolder,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        variant=variant,
    )
    return load_model_from_dir(cls, folder, torch_dtype=torch_dtype, variant=variant)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_model(
    model: Any,
    save_directory: str | os.PathLike,
    *,
    safe_serialization: bool = True,
    variant: str | None = None,
) -> None:
    """Write `config.json` and the weights so that kandi and diffusers both load the folder."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "saved_config"):  # a transformers-format component (M-CLIP)
        cfg = model.saved_config()
    else:
        cfg = {
            **model.config.to_diffusers(),
            "_class_name": model.diffusers_name,
            "_diffusers_version": DIFFUSERS_VERSION,
        }
    _atomic_write(
        out / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    )
    # safetensors wants contiguous CPU tensors (kandi models share no storage between parameters)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    suffix = f".{variant}" if variant else ""
    stem = getattr(model, "weights_stem", "diffusion_pytorch_model")
    if safe_serialization:
        from safetensors.torch import save_file

        name = f"{stem}{suffix}.safetensors"
        _atomic_write(out / name, lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
    else:
        name = f"{stem}{suffix}.bin"
        _atomic_write(out / name, lambda p: torch.save(sd, str(p)))
