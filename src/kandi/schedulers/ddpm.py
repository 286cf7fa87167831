"""DDPM ancestral sampling (Ho et al., 2020): a pure step function and the diffusers-shaped scheduler."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import SchedulerBase, SchedulerOutput
from .common import (
    PREDICTION_TYPES,
    X0Rule,
    alpha_bar,
    check_choice,
    check_timestep,
    clip_x0,
    predict_x0,
    split_variance,
)
from .noise import Generator, randn
from .schedules import BETA_SCHEDULES, make_betas, timesteps

VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)
LEARNED = ("learned", "learned_range")
SPACINGS = ("leading", "linspace", "trailing")
ONE = torch.tensor(1.0)  # alpha_bar past the end of the chain


def ddpm_noise_scale(
    a_t: Tensor, a_prev: Tensor, variance_type: str, var_pred: Tensor | None = None
) -> Tensor:
    """Std of p(x_{t-1} | x_t): Ho et al. (2020) Eq. 7 (fixed), Nichol & Dhariwal (2021) Eq. 15 (learned_range)."""
    beta = 1 - a_t / a_prev
    # posterior variance, kept above 0 because the log variants take its log
    var = torch.clamp((1 - a_prev) / (1 - a_t) * beta, min=1e-20)
    if variance_type == "fixed_small":
        return var**0.5
    if variance_type == "fixed_small_log":
        return torch.exp(0.5 * torch.log(var))
    if variance_type == "fixed_large":
        return beta**0.5
    if variance_type == "fixed_large_log":
        # log(beta) is the log-variance (GLIDE's max_log); diffusers takes its square root and gets NaN
        return torch.exp(0.5 * torch.log(beta))
    if var_pred is None:
        raise ValueError(
            f"variance_type={variance_type!r} needs a model output with 2x the sample's channels"
        )
    if variance_type == "learned":
        return var_pred**0.5
    if variance_type == "learned_range":
        frac = (var_pred + 1) / 2  # model output in [-1, 1] interpolates the log variance
        return torch.exp(0.5 * (frac * torch.log(beta) + (1 - frac) * torch.log(var)))
    raise ValueError(f"variance_type={variance_type!r} is not supported; choose one of {VARIANCE_TYPES}")


def ddpm_step(
    x: Tensor,
    out: Tensor,
    t: int,
    t_prev: int,
    ac: Tensor,
    rule: X0Rule,
    variance_type: str = "fixed_small",
    var_pred: Tensor | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """x_{t-1} = mu(x_t, x0) + sigma * noise from the posterior q(x_{t-1} | x_t, x0), Ho et al. (2020) Eq. 6-7.

    `t_prev < 0` steps to the end of the chain; `noise=None` returns the posterior mean. Returns (x_prev, x0).
    """
    a_t, a_prev = ac[t], alpha_bar(ac, t_prev, ONE)
    b_t, b_prev = 1 - a_t, 1 - a_prev
    alpha = a_t / a_prev  # the alpha of the (possibly strided) step t -> t_prev
    x0 = clip_x0(predict_x0(x, out, a_t, rule.prediction_type), rule)
    mean = (a_prev ** (0.5) * (1 - alpha)) / b_t * x0 + alpha ** (0.5) * b_prev / b_t * x
    if noise is None:
        return mean, x0
    return mean + ddpm_noise_scale(a_t, a_prev, variance_type, var_pred) * noise, x0


class DDPMScheduler(SchedulerBase):
    """diffusers' DDPMScheduler API (0.42.1) over `ddpm_step`; same arguments, defaults and seeds."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, SPACINGS)
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._register(
            {
                "num_train_timesteps": num_train_timesteps,
                "beta_start": beta_start,
                "beta_end": beta_end,
                "beta_schedule": beta_schedule,
                "trained_betas": trained_betas,
                "variance_type": variance_type,
                "clip_sample": clip_sample,
                "prediction_type": prediction_type,
                "thresholding": thresholding,
                "dynamic_thresholding_ratio": dynamic_thresholding_ratio,
                "clip_sample_range": clip_sample_range,
                "sample_max_value": sample_max_value,
                "timestep_spacing": timestep_spacing,
                "steps_offset": steps_offset,
                "rescale_betas_zero_snr": rescale_betas_zero_snr,
            }
        )
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        self._set_tables(betas)
        self.rule = X0Rule(
            prediction_type,
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        )
        self.variance_type = variance_type
        self.custom_timesteps = False
        self.num_inference_steps: int | None = None
        self._reset_timesteps()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Pick the inference timesteps: `num_inference_steps` spaced by the config, or custom `timesteps`."""
        num_train = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            ts = _check_custom_timesteps(timesteps, num_train)
        else:
            ts = _schedule(self.config, num_inference_steps)
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(ts)
        self._use_schedule(ts, device)

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """The timestep after `timestep` in the schedule (-1 after the last); t - 1 before set_timesteps."""
        t = int(timestep)
        if self._prev is None:
            return t - 1
        if t not in self._prev:
            raise ValueError(f"timestep {t} is not in the schedule set by set_timesteps: {self._schedule}")
        return self._prev[t]

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """One ancestral step from `timestep` to the next one in the schedule; draws noise while t > 0."""
        t = int(timestep)  # the only host read of a device timestep; everything below is host-side
        check_timestep(t, self.config.num_train_timesteps)
        t_prev = self.previous_timestep(t)
        out, var_pred = split_variance(model_output, sample, self.variance_type in LEARNED)
        noise = randn(out.shape, generator, device=out.device, dtype=out.dtype) if t > 0 else None
        x_prev, x0 = ddpm_step(
            sample, out, t, t_prev, self.alphas_cumprod, self.rule, self.variance_type, var_pred, noise
        )
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)


def _schedule(config: dict, steps: int) -> list[int]:
    return timesteps(config["num_train_timesteps"], steps, config["timestep_spacing"], config["steps_offset"])


def _check_custom_timesteps(ts: Sequence[int], num_train: int) -> list[int]:
    ts = [int(t) for t in ts]
    if not ts:
        raise ValueError("custom timesteps must not be empty")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"custom timesteps must be strictly descending, got {ts}")
    if ts[0] >= num_train or ts[-1] < 0:
        raise ValueError(f"custom timesteps must lie in [0, {num_train - 1}] (num_train_timesteps), got {ts}")
    return ts
