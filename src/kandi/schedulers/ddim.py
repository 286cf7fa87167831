"""DDIM sampling (Song et al., 2021): a pure step function and the diffusers-shaped scheduler."""

from __future__ import annotations

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
    predict_eps,
    predict_x0,
    split_variance,
)
from .noise import Generator, randn
from .schedules import make_betas, timesteps

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "linspace", "trailing")


def ddim_step(
    x: Tensor,
    out: Tensor,
    t: int,
    t_prev: int,
    ac: Tensor,
    rule: X0Rule,
    final: Tensor,
    eta: float = 0.0,
    noise: Tensor | None = None,
    use_clipped_model_output: bool = False,
) -> tuple[Tensor, Tensor]:
    """DDIM update, Song et al. (2021) Eq. 12 with sigma_t = eta * Eq. 16; returns (x_prev, x0).

    `final` is alpha_bar past the end of the chain (t_prev < 0). With eta > 0, `noise` must be given.
    """
    a_t, a_prev = ac[t], alpha_bar(ac, t_prev, final)
    b_t, b_prev = 1 - a_t, 1 - a_prev
    x0 = predict_x0(x, out, a_t, rule.prediction_type)
    eps = predict_eps(x, out, a_t, rule.prediction_type)
    x0 = clip_x0(x0, rule)
    std = eta * ((b_prev / b_t) * (1 - a_t / a_prev)) ** (0.5)
    if use_clipped_model_output:  # re-derive eps from the clipped x0 so both stay consistent
        eps = (x - a_t ** (0.5) * x0) / b_t ** (0.5)
    # 1 - a_prev - std^2 >= 0 for eta <= 1, but at eta = 1 it can round to -1e-8 (zero-SNR schedules):
    # clamp, where diffusers takes the square root of a negative number and returns NaN
    x_prev = a_prev ** (0.5) * x0 + torch.clamp(1 - a_prev - std**2, min=0) ** (0.5) * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs a noise tensor")
        x_prev = x_prev + std * noise
    return x_prev, x0


class DDIMScheduler(SchedulerBase):
    """diffusers' DDIMScheduler API (0.42.1) over `ddim_step`; same arguments, defaults and seeds."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
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
                "clip_sample": clip_sample,
                "set_alpha_to_one": set_alpha_to_one,
                "steps_offset": steps_offset,
                "prediction_type": prediction_type,
                "thresholding": thresholding,
                "dynamic_thresholding_ratio": dynamic_thresholding_ratio,
                "clip_sample_range": clip_sample_range,
                "sample_max_value": sample_max_value,
                "timestep_spacing": timestep_spacing,
                "rescale_betas_zero_snr": rescale_betas_zero_snr,
            }
        )
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        self._set_tables(betas)
        # the last step lands on alpha_bar = 1 (a clean image) or, as trained, on alpha_bar_0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.rule = X0Rule(
            prediction_type,
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        )
        self.num_inference_steps: int | None = None
        self._reset_timesteps()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Pick `num_inference_steps` timesteps spaced as the config says."""
        cfg = self.config
        ts = timesteps(cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset)
        self.num_inference_steps = len(ts)
        self._use_schedule(ts, device)

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """One DDIM step of stride T // N (as diffusers, whatever the spacing); noise only when eta > 0."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        num_train = self.config.num_train_timesteps
        t = int(timestep)  # the only host read of a device timestep; everything below is host-side
        check_timestep(t, num_train)
        out, _ = split_variance(model_output, sample, learned=False)
        noise = self._noise(out, eta, generator, variance_noise)
        t_prev = t - num_train // self.num_inference_steps
        ac, final = self.alphas_cumprod, self.final_alpha_cumprod
        x_prev, x0 = ddim_step(
            sample, out, t, t_prev, ac, self.rule, final, eta, noise, use_clipped_model_output
        )
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)

    @staticmethod
    def _noise(
        out: Tensor, eta: float, generator: Generator | None, variance_noise: Tensor | None
    ) -> Tensor | None:
        if eta <= 0:
            return None
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step, not both")
        if variance_noise is not None:
            return variance_noise
        return randn(out.shape, generator, device=out.device, dtype=out.dtype)
