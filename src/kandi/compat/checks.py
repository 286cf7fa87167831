"""Argument checks for the pipeline `__call__`s: run before any model work, each error names the argument."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_steps(name: str, value: Any, scheduler: Any) -> int:
    train = int(getattr(scheduler.config, "num_train_timesteps", 1000))
    return check_int(name, value, 1, train)


def check_size(name: str, value: Any) -> int:
    return check_int(name, value, 1, 16384)


def check_prompts(name: str, prompt: Any) -> list[str]:
    """A prompt or list of prompts as a list of str."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list | tuple) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list | tuple) and not prompt:
        raise ValueError(f"{name} is an empty list; pass a string or a non-empty list of strings")
    raise TypeError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")


def check_negative(negative: Any, prompts: list[str], name: str = "negative_prompt") -> list[str] | None:
    """None, or one negative prompt per prompt (a single string applies to every prompt)."""
    if negative is None:
        return None
    if isinstance(negative, str):
        return [negative] * len(prompts)
    negs = check_prompts(name, negative)
    if len(negs) != len(prompts):
        raise ValueError(
            f"{name} has {len(negs)} entries but prompt has {len(prompts)}; pass one per prompt or one string"
        )
    return negs


def check_output_type(value: Any, accepted: Sequence[str]) -> str:
    if value not in accepted:
        raise ValueError(f"output_type must be one of {list(accepted)}, got {value!r}")
    return value


def check_generator(generator: Any, batch: int) -> Any:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, list | tuple) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) not in (1, batch):
            raise ValueError(
                f"generator is a list of {len(generator)} generators, but this call draws {batch} samples: "
                f"pass one torch.Generator or a list of {batch}"
            )
        return list(generator)
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_latents(latents: Any, shape: tuple[int, ...], name: str = "latents") -> torch.Tensor | None:
    if latents is None:
        return None
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {list(shape)}, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {list(latents.shape)}, expected {list(shape)}")
    return latents


def check_callback_inputs(requested: Any, allowed: Sequence[str]) -> list[str]:
    requested = list(requested or [])
    bad = [k for k in requested if k not in allowed]
    if bad:
        raise ValueError(f"callback_on_step_end_tensor_inputs may only name {list(allowed)}, got {bad}")
    return requested


def check_embeds(name: str, value: Any, dim: int | None) -> torch.Tensor:
    """Image embeddings (B, D) as a tensor; a list of tensors is concatenated as diffusers does."""
    if isinstance(value, str) or (isinstance(value, list | tuple) and value and isinstance(value[0], str)):
        raise TypeError(
            f"{name} must be image embeddings from a prior pipeline (a tensor of shape (batch, {dim or 'D'})), "
            "not a prompt: run the prior pipeline first (KandinskyPriorPipeline for 2.1, KandinskyV22PriorPipeline for "
            "2.2), or use AutoPipelineForText2Image for text input"
        )
    if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        value = torch.cat(list(value), dim=0)
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (batch, {dim or 'D'}), got {type(value).__name__}"
        )
    if value.ndim == 1:
        value = value[None]
    if value.ndim != 2 or (dim is not None and value.shape[1] != dim) or value.shape[0] == 0:
        raise ValueError(f"{name} has shape {list(value.shape)}, expected (batch, {dim or 'D'})")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {value.dtype}")
    return value
