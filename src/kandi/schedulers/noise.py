"""Gaussian noise drawn exactly as diffusers' `randn_tensor` draws it, so seeds reproduce its images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generator = torch.Generator | Sequence[torch.Generator]


def _draw_device(device: torch.device | None, generator: torch.Generator | None) -> torch.device | None:
    """Where torch.randn runs: a CPU generator draws on CPU even for an accelerator tensor (then moves)."""
    target = device or torch.device("cpu")
    if device is not None and device.type == "neuron":
        return torch.device("cpu")
    if generator is None or generator.device.type == target.type:
        return device
    if generator.device.type == "cpu":
        return torch.device("cpu")
    if generator.device.type == "cuda":
        raise ValueError(f"Cannot draw a {target} tensor from a generator on {generator.device}")
    return device


def randn(
    shape: Sequence[int],
    generator: Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of `shape`, drawn like diffusers' `randn_tensor`.

    Args:
        shape: output shape; with a list of generators, shape[0] is the batch they seed row by row.
        generator: one generator, or one per batch row (each draws a (1, ...) tensor in row order; a list
            of length 1 acts like a single generator).
        device: where the result lives (default CPU). A CPU generator still draws on CPU, then moves.
        dtype: passed to torch.randn, so fp16 noise is drawn in fp16 as diffusers does.
    """
    device = torch.device(device) if isinstance(device, str) else device
    shape = tuple(shape)
    gens = list(generator) if isinstance(generator, Sequence) else None
    if gens is not None and len(gens) == 1:
        generator, gens = gens[0], None
    draw_on = _draw_device(device, gens[0] if gens else generator)
    out_device = device or torch.device("cpu")
    staged = _host_buffer(shape, dtype, draw_on, out_device)
    if gens is None:
        if staged is None:
            return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(out_device)
        return torch.randn(shape, generator=generator, dtype=dtype, out=staged).to(
            out_device, non_blocking=True
        )
    if len(gens) < shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}: pass one per batch row")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=draw_on, dtype=dtype) for g in gens[: shape[0]]]
    if staged is None:
        return torch.cat(rows, dim=0).to(out_device)
    return torch.cat(rows, dim=0, out=staged).to(out_device, non_blocking=True)


def _host_buffer(
    shape: tuple[int, ...], dtype: torch.dtype | None, draw_on: torch.device | None, out: torch.device
) -> Tensor | None:
    """A pinned host tensor to draw CPU-generator noise into when it goes to a CUDA device: the copy then
    runs asynchronously (a pageable one blocks the host each step). The same draws, so the same bits;
    torch's pinned-memory cache keeps the buffer alive until its copy is done. None: no staging."""
    if out.type != "cuda" or (draw_on is not None and draw_on.type != "cpu"):
        return None
    return torch.empty(shape, dtype=dtype or torch.get_default_dtype(), pin_memory=True)
