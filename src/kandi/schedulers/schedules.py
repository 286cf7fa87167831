"""Noise schedules: beta tables, cumulative alphas and inference timestep lists.

Every table is float32 and built with the same dtype and order of operations as diffusers 0.42.1, so the
numbers are bit-identical to its schedulers' (a seed then reproduces a diffusers trajectory exactly).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
SPACINGS = ("leading", "linspace", "trailing", "unclip")


def linear_betas(num_train: int, beta_start: float, beta_end: float) -> Tensor:
    """Linear betas, Ho et al. (2020)."""
    return torch.linspace(beta_start, beta_end, num_train, dtype=torch.float32)


def scaled_linear_betas(num_train: int, beta_start: float, beta_end: float) -> Tensor:
    """Linear in sqrt(beta), the latent-diffusion schedule."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train, dtype=torch.float32) ** 2


def sigmoid_betas(num_train: int, beta_start: float, beta_end: float) -> Tensor:
    """Sigmoid schedule (GeoDiff, Xu et al. 2022)."""
    return torch.sigmoid(torch.linspace(-6, 6, num_train)) * (beta_end - beta_start) + beta_start


def _betas_from_alpha_bar(num_train: int, alpha_bar: Callable[[float], float], max_beta: float) -> Tensor:
    # Python float64 maths, cast to float32 once at the end, as diffusers' betas_for_alpha_bar does.
    betas = [
        min(1 - alpha_bar((i + 1) / num_train) / alpha_bar(i / num_train), max_beta) for i in range(num_train)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def cosine_betas(num_train: int, max_beta: float = 0.999) -> Tensor:
    """`squaredcos_cap_v2`: the cosine schedule of Nichol & Dhariwal (2021), Eq. 17, betas capped at max_beta."""
    return _betas_from_alpha_bar(num_train, _cosine_alpha_bar, max_beta)


def laplace_betas(num_train: int, max_beta: float = 0.999) -> Tensor:
    """Laplace schedule (Hang & Gu, 2024), as diffusers' DDPMScheduler builds it."""
    return _betas_from_alpha_bar(num_train, _laplace_alpha_bar, max_beta)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR, Lin et al. (2024) Algorithm 1."""
    sqrt_ac = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac -= last
    sqrt_ac *= first / (first - last)
    ac = sqrt_ac**2
    alphas = torch.cat([ac[0:1], ac[1:] / ac[:-1]])
    return 1 - alphas


def make_betas(
    schedule: str,
    num_train: int,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | Tensor | None = None,
    rescale_zero_snr: bool = False,
) -> Tensor:
    """The float32 beta table for a diffusers `beta_schedule` name (or explicit `trained_betas`)."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif schedule == "linear":
        betas = linear_betas(num_train, beta_start, beta_end)
    elif schedule == "scaled_linear":
        betas = scaled_linear_betas(num_train, beta_start, beta_end)
    elif schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_train)
    elif schedule == "sigmoid":
        betas = sigmoid_betas(num_train, beta_start, beta_end)
    elif schedule == "laplace":
        betas = laplace_betas(num_train)
    else:
        raise ValueError(f"beta_schedule={schedule!r} is not supported; choose one of {BETA_SCHEDULES}")
    return rescale_zero_terminal_snr(betas) if rescale_zero_snr else betas


def alphas_cumprod(betas: Tensor) -> Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), cumulated in float32 like diffusers."""
    return torch.cumprod(1.0 - betas, dim=0)


def check_num_steps(steps: object, num_train: int) -> int:
    """Validate `num_inference_steps`: a positive int no larger than the training chain."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}")
    if steps > num_train:
        raise ValueError(
            f"num_inference_steps={steps} cannot be larger than num_train_timesteps={num_train}: "
            f"the model was trained on {num_train} timesteps only"
        )
    return int(steps)


def timesteps(num_train: int, steps: int, spacing: str = "leading", offset: int = 0) -> list[int]:
    """Descending inference timesteps, Lin et al. (2024) Table 2; `offset` applies to "leading" only.

    "unclip" is the karlo/UnCLIP spacing round(i * (T - 1) / (N - 1)), which includes both T - 1 and 0;
    one step gives [T - 1] (diffusers divides by zero there).
    """
    steps = check_num_steps(steps, num_train)
    if spacing == "leading":
        ts = (np.arange(0, steps) * (num_train // steps)).round()[::-1].astype(np.int64) + offset
        if ts[0] >= num_train:
            raise ValueError(
                f"timestep_spacing='leading' with steps_offset={offset} and num_inference_steps={steps} gives "
                f"timestep {ts[0]}, outside the table of num_train_timesteps={num_train}; use fewer steps or "
                "'trailing' / 'linspace' spacing"
            )
    elif spacing == "linspace":
        ts = np.linspace(0, num_train - 1, steps).round()[::-1].astype(np.int64)
    elif spacing == "trailing":
        # diffusers' float arange sometimes yields an extra (N+1)-th entry of -1 through round-off
        # (e.g. T=1000, N=61); keep its first N values, which are the intended schedule.
        ts = np.round(np.arange(num_train, 0, -num_train / steps)[:steps]).astype(np.int64) - 1
    elif spacing == "unclip":
        if steps == 1:  # diffusers divides by zero here; one step from pure noise to the x0 prediction
            return [num_train - 1]
        ts = (np.arange(0, steps) * ((num_train - 1) / (steps - 1))).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose one of {SPACINGS[:3]}")
    return [int(t) for t in ts]
