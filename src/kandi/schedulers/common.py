"""Maths shared by the DDPM, DDIM and UnCLIP steps: the x0 estimate, its clipping, the forward process.

Scalars such as `a_t` (alpha_bar at t) are 0-d float32 tensors taken from the CPU tables, exactly the
operands diffusers uses; PyTorch reads a 0-d CPU tensor as a host scalar for accelerator tensors, so
this costs no device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class X0Rule:
    """How the model output becomes a (clipped) estimate of x0."""

    prediction_type: str = "epsilon"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0


def alpha_bar(ac: Tensor, t: int, final: Tensor) -> Tensor:
    """alpha_bar at t from the table; `final` stands in past the end of the chain (t < 0)."""
    return ac[t] if t >= 0 else final


def predict_x0(x: Tensor, out: Tensor, a_t: Tensor, prediction_type: str) -> Tensor:
    """x0 from the model output: Ho et al. (2020) Eq. 15 for eps, Salimans & Ho (2022) for v."""
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        return (x - b_t ** (0.5) * out) / a_t ** (0.5)
    if prediction_type == "sample":
        return out
    if prediction_type == "v_prediction":
        return (a_t**0.5) * x - (b_t**0.5) * out
    raise ValueError(
        f"prediction_type={prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}"
    )


def predict_eps(x: Tensor, out: Tensor, a_t: Tensor, prediction_type: str) -> Tensor:
    """The noise estimate implied by the model output (DDIM needs both x0 and eps)."""
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        return out
    if prediction_type == "sample":
        return (x - a_t ** (0.5) * out) / b_t ** (0.5)
    if prediction_type == "v_prediction":
        return (a_t**0.5) * out + (b_t**0.5) * x
    raise ValueError(
        f"prediction_type={prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}"
    )


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Dynamic thresholding, Saharia et al. (2022) Sec. 2.3: clip each sample to its `ratio` quantile of |x0|."""
    dtype, shape = x0.dtype, x0.shape
    # quantile needs float32/64, and CPU clamp has no half kernel
    flat = x0.reshape(shape[0], -1)
    flat = flat if dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


def clip_x0(x0: Tensor, rule: X0Rule) -> Tensor:
    """Thresholding wins over plain clipping when both are on, as in diffusers."""
    if rule.thresholding:
        return dynamic_threshold(x0, rule.dynamic_thresholding_ratio, rule.sample_max_value)
    if rule.clip_sample:
        return x0.clamp(-rule.clip_sample_range, rule.clip_sample_range)
    return x0


def add_noise(ac: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Forward process q(x_t | x_0), Ho et al. (2020) Eq. 4, with one t per batch row.

    `ac` must already sit on x0's device in x0's dtype (diffusers casts the table before the square
    roots, so fp16 noising matches it only if the cast comes first).
    """
    a_t = ac[t.to(ac.device)].flatten()
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (a_t**0.5).reshape(shape) * x0 + ((1 - a_t) ** 0.5).reshape(shape) * noise


def as_timestep_tensor(t: int | list[int] | Tensor | np.ndarray) -> Tensor:
    """add_noise timesteps as an int64 tensor (ints, lists, arrays and tensors all accepted)."""
    return t.long() if isinstance(t, Tensor) else torch.as_tensor(np.asarray(t), dtype=torch.long)


def split_variance(out: Tensor, x: Tensor, learned: bool) -> tuple[Tensor, Tensor | None]:
    """Split a (B, 2C, ...) output into eps and the predicted variance when the variance is learned."""
    if learned and out.shape[1] == x.shape[1] * 2:
        eps, var = torch.split(out, x.shape[1], dim=1)
        return eps, var
    if out.shape != x.shape:
        raise ValueError(
            f"model_output has shape {tuple(out.shape)} but sample has {tuple(x.shape)}; a 2x-channel output "
            "is only split with variance_type 'learned' or 'learned_range' (otherwise drop the variance half)"
        )
    return out, None


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Reject an unknown option name up front (diffusers only fails later, inside step)."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {allowed}")


def check_timestep(t: int, num_train: int) -> None:
    """Reject timesteps outside the table (diffusers raises IndexError, or wraps around for negatives)."""
    if not 0 <= t < num_train:
        raise ValueError(f"timestep={t} is outside the training chain [0, {num_train - 1}]")
