"""`DiffusionPipeline`: what every diffusers-compatible kandi pipeline shares.

Loading (`from_pretrained`, `from_pipe`, `components`), saving, device and dtype moves, memory options
and progress bars, with diffusers' names and behaviour. Each pipeline class only lists its components
and implements `__call__` over the generation core in `kandi.pipelines`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import fast
from ..errors import CheckpointError, warn_once
from ..pipelines.common import Placement, accelerator_device, numpy_to_pil, offload_unavailable
from .lora import LoraLoaderMixin

log = logging.getLogger(__name__)


class DiffusionPipeline(LoraLoaderMixin):
    """Base class of kandi's diffusers-compatible pipelines (and the entry point `DiffusionPipeline.from_pretrained`)."""

    _components: ClassVar[tuple[str, ...]] = ()
    # only this class (not a subclass: the flag is read from the class's own __dict__) picks the
    # pipeline class from model_index.json in from_pretrained
    _picks_class_from_index: ClassVar[bool] = True
    _optional_components: ClassVar[tuple[str, ...]] = ()
    model_cpu_offload_seq: ClassVar[str] = ""
    _exclude_from_cpu_offload: ClassVar[tuple[str, ...]] = ()
    _load_connected_pipes: ClassVar[bool] = False
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **components: Any) -> None:
        missing = [n for n in self._components if n not in components and n not in self._optional_components]
        if missing:
            raise TypeError(f"{type(self).__name__} needs the components {missing}")
        unknown = sorted(set(components) - set(self._components))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected components {unknown}; it takes {list(self._components)}"
            )
        for name in self._components:
            object.__setattr__(self, name, components.get(name))
        self._placement = Placement()
        self._progress_config: dict[str, Any] = {}
        self._name_or_path: str | None = None

    # ------------------------------------------------------------------ components, config, saving

    @property
    def components(self) -> dict[str, Any]:
        """The pipeline's components by name, e.g. to build another pipeline: `Other(**pipe.components)`."""
        return {name: getattr(self, name) for name in self._components}

    def register_modules(self, **modules: Any) -> None:
        for name, module in modules.items():
            setattr(self, name, module)

    @property
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"_class_name": type(self).__name__, "_name_or_path": self._name_or_path}
        for name, comp in self.components.items():
            cfg[name] = list(_library_and_class(comp))
        return cfg

    @property
    def name_or_path(self) -> str | None:
        return self._name_or_path

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        variant: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        """Write model_index.json and one folder per component, a layout diffusers and kandi both load."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {"_class_name": type(self).__name__, "_diffusers_version": "0.42.1"}
        for name, comp in self.components.items():
            index[name] = list(_library_and_class(comp))
            if comp is None:
                continue
            if isinstance(comp, nn.Module) and hasattr(comp, "diffusers_name"):
                comp.save_pretrained(out / name, safe_serialization=safe_serialization, variant=variant)
            elif isinstance(comp, nn.Module):
                comp.save_pretrained(out / name, variant=variant)
            else:
                comp.save_pretrained(out / name)
        tmp = out / ".model_index.json.tmp"
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, out / "model_index.json")

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> DiffusionPipeline:
        """Load a pipeline from a diffusers-layout folder or a Hugging Face Hub id, as diffusers does."""
        from .loader import load_pipeline

        return load_pipeline(cls, pretrained_model_name_or_path, kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        """A new pipeline of this class sharing `pipeline`'s components (kwargs replace components)."""
        comps = dict(pipeline.components)
        for name, comp in list(comps.items()):  # a combined pipeline's prior parts under both naming styles
            if name.startswith("prior_"):
                comps.setdefault(name[len("prior_") :], comp)
            elif "prior_" + name in cls._components:
                comps.setdefault("prior_" + name, comp)
        comps.update({k: v for k, v in kwargs.items() if k in cls._components})
        extra = sorted(k for k in kwargs if k not in cls._components)
        if extra:
            raise TypeError(f"{cls.__name__}.from_pipe got unexpected arguments {extra}")
        missing = [n for n in cls._components if n not in comps and n not in cls._optional_components]
        if missing:
            raise ValueError(
                f"cannot build {cls.__name__} from a {type(pipeline).__name__}: it lacks {missing}; pass them as arguments"
            )
        new = cls(**{n: comps.get(n) for n in cls._components})
        new._name_or_path = pipeline._name_or_path
        new._progress_config = dict(pipeline._progress_config)
        return new

    # ------------------------------------------------------------------------- devices and dtypes

    def _modules(self) -> list[tuple[str, nn.Module]]:
        return [(n, c) for n, c in self.components.items() if isinstance(c, nn.Module)]

    @property
    def device(self) -> torch.device:
        for _, m in self._modules():
            p = next(m.parameters(), None)
            if p is not None:
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for _, m in self._modules():
            p = next(m.parameters(), None)
            if p is not None:
                return p.dtype
        return torch.float32

    @property
    def _execution_device(self) -> torch.device:
        return self._placement.execution_device(m for _, m in self._modules())

    def to(self, *args: Any, **kwargs: Any) -> DiffusionPipeline:
        """`pipe.to("cuda")`, `pipe.to(torch.float16)`, `pipe.to("cuda", torch.float16)`, as diffusers.

        Asking for an accelerator that this machine lacks warns once and keeps the pipeline where it is.
        """
        device = kwargs.pop("device", kwargs.pop("torch_device", None))
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif a is not None:
                device = a
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and not torch.cuda.is_available():
                warn_once(
                    f"{type(self).__name__}.to({str(device)!r}): CUDA is not available here; running on the CPU"
                )
                device = None
        for _, m in self._modules():
            m.to(device=device, dtype=dtype)
        return self

    def _prepare_run(self) -> torch.device:
        """Execution device for a call; warns once when half precision would run on the CPU."""
        device = self._execution_device
        dtypes = {p.dtype for _, m in self._modules() for p in [next(m.parameters(), None)] if p is not None}
        if device.type == "cpu" and torch.bfloat16 in dtypes:
            fast.check_cpu_dtype(torch.bfloat16)  # refused where the CPU has no native bf16
            if not getattr(self, "_bf16_layout", False):
                fast.use_bf16_layout(self)
                self._bf16_layout = True
        if device.type == "cpu" and torch.float16 in dtypes:
            warn_once(
                "running float16 weights on the CPU: this works but is about 100x slower than float32 "
                "(load with torch_dtype=torch.float32, or bfloat16 on a CPU with native bf16)"
            )
        return device

    def enable_compile(self, mode: str | None = None, backend: str = "inductor") -> None:
        """torch.compile the UNet's denoising step and the MoVQ decoder (fullgraph, static shapes).

        The first image pays for the compile (minutes on a CPU); every later step and image of the same
        size reuses it. `mode` is torch.compile's: "reduce-overhead" adds CUDA graphs on a GPU.
        """
        warn_once(fast.compile_models(self, mode=mode, backend=backend))

    # ------------------------------------------------------------------------------ memory options

    def _offload_order(self) -> list[nn.Module]:
        names = [n for n in self.model_cpu_offload_seq.split("->") if n]
        names += [n for n, _ in self._modules() if n not in names]
        comps = self.components
        return [comps[n] for n in names if isinstance(comps.get(n), nn.Module)]

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """Keep every model on the CPU and move each to the accelerator only while it runs."""
        target = torch.device(device) if device is not None else accelerator_device(gpu_id)
        if target is None:
            offload_unavailable("enable_model_cpu_offload()")
            return
        keep = [
            getattr(self, n)
            for n in self._exclude_from_cpu_offload
            if isinstance(getattr(self, n, None), nn.Module)
        ]
        self._placement.model_offload(self._offload_order(), target, keep)

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """Stream each layer's weights to the accelerator for its forward only (least memory, slowest)."""
        target = torch.device(device) if device is not None else accelerator_device(gpu_id)
        if target is None:
            offload_unavailable("enable_sequential_cpu_offload()")
            return
        self._placement.sequential_offload(self._offload_order(), target)

    def maybe_free_model_hooks(self) -> None:
        self._placement.release()

    def remove_all_hooks(self) -> None:
        self._placement.reset()

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Compute attention in slices of batch*heads to cap its peak memory (same results)."""
        for _, m in self._modules():
            if hasattr(m, "set_attention_slice"):
                m.set_attention_slice(_slice_for(slice_size, m))

    def disable_attention_slicing(self) -> None:
        self.enable_attention_slicing(None)

    def _autoencoders(self) -> list[nn.Module]:
        found = [m for _, m in self._modules() if hasattr(m, "enable_tiling")]
        if not found:
            raise ValueError(
                f"{type(self).__name__} has no MoVQ or VAE to tile (tiling applies to the pipelines that "
                "decode images: the decoder, combined, Kandinsky 3 and 5 pipelines)"
            )
        return found

    def enable_vae_tiling(self) -> None:
        """Decode (and encode) images in overlapping blended tiles: memory bounded at any size, a little
        slower, and slightly different from one whole pass (tiles normalise with their own statistics).
        Without a call, the MoVQ tiles on its own above 1280x1280 images; see `kandi.models.tiling`."""
        for m in self._autoencoders():
            m.enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Always decode and encode in one pass, at any size (also turns off the automatic tiling)."""
        for m in self._autoencoders():
            m.disable_tiling()

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        warn_once("kandi always uses PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels); "
                  "enable_xformers_memory_efficient_attention() changes nothing")  # fmt: skip

    def disable_xformers_memory_efficient_attention(self) -> None:
        return None

    # --------------------------------------------------------------------------------- progress

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_config = kwargs

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        from tqdm.auto import tqdm

        if iterable is not None:
            return tqdm(iterable, **self._progress_config)
        if total is not None:
            return tqdm(total=total, **self._progress_config)
        raise ValueError("progress_bar needs either an iterable or a total")

    @staticmethod
    def numpy_to_pil(images: Any) -> list:
        return numpy_to_pil(images)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={type(c).__name__}" for n, c in self.components.items())
        return f"{type(self).__name__}({parts})"


def _slice_for(slice_size: str | int | None, model: nn.Module) -> int | None:
    if slice_size is None or isinstance(slice_size, int):
        return slice_size
    if slice_size == "max":
        return 1
    if slice_size == "auto":
        heads = [m.heads for m in model.modules() if hasattr(m, "slice_size") and hasattr(m, "heads")]
        return max(1, (min(heads) if heads else 2) // 2)
    raise ValueError(f"slice_size must be 'auto', 'max', an int or None, got {slice_size!r}")


def _library_and_class(comp: Any) -> tuple[str | None, str | None]:
    if comp is None:
        return (None, None)
    if getattr(type(comp), "saved_as", None) is not None:  # kandi's stand-in for a transformers class
        return type(comp).saved_as
    name = getattr(type(comp), "diffusers_name", None)
    if name is not None:
        return ("diffusers", name)
    mod = type(comp).__module__
    if mod.startswith("kandi.schedulers"):
        return ("diffusers", type(comp).__name__)
    if mod.startswith("transformers"):
        return ("transformers", type(comp).__name__)
    raise CheckpointError(f"cannot save a component of type {type(comp).__name__}")
