"""Heun's method in sigma space, Karras et al. (2022) Algorithm 1 (churn-free), as diffusers' HeunDiscreteScheduler.

Each sigma interval takes two model calls: an Euler step to sigma_next, then the trapezoidal correction
with the derivative at sigma_next. The schedule lists every timestep after the first twice for that.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .ksigmas import (
    KSigmaScheduler,
    doubled,
    sampler_timesteps,
    sigma_kind,
    sigma_x0,
    spaced_sigmas,
)

PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp")


def heun_predict(x: Tensor, d: Tensor, dt: Tensor) -> Tensor:
    """The Euler half of a Heun step: x + d * dt."""
    return x + d * dt


def heun_correct(x_start: Tensor, d_start: Tensor, d_end: Tensor, dt: Tensor) -> Tensor:
    """The trapezoidal half: restart from x_start with the mean of the two derivatives."""
    return x_start + (d_start + d_end) / 2 * dt


class HeunDiscreteScheduler(KSigmaScheduler):
    """diffusers' HeunDiscreteScheduler (order 2): linear, Karras or exponential sigmas."""

    PREDICTIONS = PREDICTIONS
    BETA_SCHEDULES = BETA_SCHEDULES

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_tables(locals())
        self.set_timesteps(num_train_timesteps)  # diffusers' constructor leaves the full schedule set

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        kind = sigma_kind(cfg.use_karras_sigmas, cfg.use_exponential_sigmas, cfg.use_beta_sigmas)
        ts = sampler_timesteps(cfg, num_inference_steps)
        sigmas, ts, _ = spaced_sigmas(self.alphas_cumprod, ts, kind)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.sigmas = torch.cat([doubled(sigmas[:-1]), sigmas[-1:]])
        ts = torch.from_numpy(ts)
        self.num_inference_steps = len(ts)
        self._set_schedule(doubled(ts).to(device=device, dtype=torch.float32))
        self.prev_derivative: Tensor | None = None
        self.dt: Tensor | None = None
        self.sample: Tensor | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        return_dict: bool = True,
        generator: Generator | None = None,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """The predictor (first call of an interval) or the corrector (second call); no noise is drawn."""
        cfg = self.config
        i = self._index(timestep)
        first = self.state_in_first_order
        sigma, sigma_next = (
            (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        )
        x0 = sigma_x0(sample, model_output, sigma if first else sigma_next, cfg.prediction_type)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        if first:
            d = (sample - x0) / sigma
            self.prev_derivative, self.dt, self.sample = d, sigma_next - sigma, sample
            x_prev = heun_predict(sample, d, self.dt)
        else:
            d_end = (sample - x0) / sigma_next
            x_prev = heun_correct(self.sample, self.prev_derivative, d_end, self.dt)
            self.prev_derivative = self.dt = self.sample = None
        self._step_index = i + 1
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)
