"""Opt-in fast paths (issue 15): torch.compile of the denoiser and the image decoder, and bfloat16 on
CPUs that compute it natively.

The default fp32 path gives diffusers' bits; these trade exactness (bf16) or a long first image
(compile) for speed, so they are asked for by name: `pipe.enable_compile()` / `kandi generate
--compile`, and `torch_dtype=torch.bfloat16` / `--dtype bf16`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

# the CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AMX tiles, AVX-512 BF16 dot products, Arm BF16
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
COMPILE_NOTE = (
    "compiling the {parts} (torch.compile): the first image pays for the compile "
    "(minutes on a CPU, about a minute on a GPU); later images of the same size reuse it"
)


# glibc mallopt parameters (malloc.h) and the values BENCHMARKS.md measured: blocks under 32 MiB come
# from the heap, which keeps up to 4 GiB of freed memory instead of trimming it back to the kernel
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 4 << 30), (_M_TOP_PAD, 256 << 20))


def keep_freed_memory() -> bool:
    """Have glibc malloc keep the activation memory torch frees between steps (exact: only where the
    bytes live changes). By default it returns big blocks to the kernel and the next step page-faults
    them back in, about 1.2 million minor faults and a fifth of a 512x512 CPU UNet step. False where
    the C library is not glibc (nothing changed)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in _KEEP)


_KEEP_ENV = "KANDI_KEEP_FREED_MEMORY"
_kept: list[bool] = []  # the default's outcome, once per process


def keep_freed_memory_by_default() -> bool:
    """What loading any kandi model does: keep_freed_memory() once per process (a 512x512 UNet step
    of 2.2 goes from about 5.6 to 4.7 s here, in a fresh process), unless the environment says
    KANDI_KEEP_FREED_MEMORY=0 (glibc's defaults stay; the price of keeping is up to 4 GiB of freed
    heap held for reuse). Returns whether the settings are in force."""
    if not _kept:
        off = os.environ.get(_KEEP_ENV, "").strip().lower() in ("0", "false", "no", "off")
        _kept.append(False if off else keep_freed_memory())
    return _kept[0]


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return set(value.split())
    return set()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16 on x86, BF16 on Arm).

    Without it oneDNN emulates bf16 with conversions around fp32 maths: slower than plain fp32.
    """
    return bool(cpu_flags() & set(BF16_FLAGS))


def check_cpu_dtype(dtype: torch.dtype, how: str = "torch_dtype=torch.float32") -> None:
    """Refuse bf16 on a CPU without native bf16 (far slower than fp32); a ValueError saying what to use."""
    if dtype == torch.bfloat16 and not native_bf16():
        raise ValueError(
            "bfloat16 on this CPU would be far slower than float32: it has no native bf16 arithmetic "
            f"(CPU flags {' or '.join(BF16_FLAGS)}); use float32 ({how}), or bf16 on a GPU"
        )


def use_bf16_layout(models: Any) -> None:
    """bf16 CPU kernels (oneDNN AMX / AVX-512 BF16) are fastest on channels-last maps: hold the convs'
    weights channels-last, so every conv runs on NHWC maps from the first layer on."""
    for model in _models(models):
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.channels_last_only = True  # read by the models' layout hook (models.layers)
                # per conv, not model.to(memory_format=...): that fails on 5-D weights (Qwen-VL's Conv3d)
                m.to(memory_format=torch.channels_last)


def compile_models(models: Any, mode: str | None = None, backend: str = "inductor") -> str:
    """torch.compile the denoiser's step (`unet.denoise`) and the decoder (`movq.decode`) of `models`
    (a pipeline or a models bundle: anything with `unet` / `movq` attributes or components).

    fullgraph=True (kandi's models have no graph breaks) and dynamic=False: one graph per image size,
    reused for every step and every later image of that size (the timestep is a tensor input).
    `mode` is torch.compile's ("reduce-overhead" adds CUDA graphs on a GPU). Returns the line to show
    the user. Compiling twice is a no-op.
    """
    parts = []
    for name, method in (("unet", "denoise"), ("movq", "decode")):
        model = _component(models, name)
        if model is None:
            continue
        parts.append("UNet" if name == "unet" else "MoVQ decoder")
        if not getattr(model, "_kandi_compiled", False):
            _plain_conv_weights(model)
            fn = getattr(model, method)
            setattr(
                model, method, torch.compile(fn, fullgraph=True, dynamic=False, mode=mode, backend=backend)
            )
            model._kandi_compiled = True
    if not parts:
        raise ValueError(f"{type(models).__name__} has no UNet or MoVQ to compile (Kandinsky 2.x and 3 have)")
    return COMPILE_NOTE.format(parts=" and the ".join(parts))


@torch.no_grad()
def _plain_conv_weights(model: torch.nn.Module) -> None:
    """NCHW conv weights for a compiled graph: it skips the eager layout hook (models.layers), so
    channels-last weights that kandi's loader gave every spatial conv would also switch the convs fed
    NCHW maps to channels-last kernels (other bits than the eager model); NCHW weights give the eager
    model's bits everywhere (a channels-last map with an NCHW weight sums as with a channels-last one)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and not getattr(m, "channels_last_only", False):
            m.weight.data = m.weight.data.contiguous()


def _component(models: Any, name: str) -> torch.nn.Module | None:
    comps = getattr(models, "components", None)
    found = comps.get(name) if isinstance(comps, dict) else getattr(models, name, None)
    return found if isinstance(found, torch.nn.Module) else None


def _models(models: Any) -> list[torch.nn.Module]:
    comps = getattr(models, "components", None)
    values = comps.values() if isinstance(comps, dict) else vars(models).values()
    return [m for m in values if isinstance(m, torch.nn.Module)]
