"""Euler ancestral sampling in sigma space, Karras et al. (2022) Algorithm 2 with ancestral noise (k-diffusion)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerBase, SchedulerOutput
from .noise import randn
from .schedules import check_num_steps, make_betas

PREDICTIONS = ("epsilon", "v_prediction")


def karras_free_timesteps(num_train: int, steps: int, spacing: str, offset: int) -> np.ndarray:
    """Float timesteps as diffusers' sigma schedulers space them (linspace is not rounded)."""
    steps = check_num_steps(steps, num_train)
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ts = (np.arange(0, steps) * (num_train // steps)).round()[::-1].copy().astype(np.float32)
        return ts + offset
    if spacing == "trailing":
        ts = np.arange(num_train, 0, -num_train / steps).round().copy().astype(np.float32)
        return ts - 1
    raise ValueError(
        f"timestep_spacing={spacing!r} is not supported; choose one of leading, linspace, trailing"
    )


def sigma_table(ac: Tensor, ts: np.ndarray) -> Tensor:
    """sigma_t = sqrt((1 - alpha_bar) / alpha_bar), interpolated at float timesteps, with a final 0."""
    sigmas = np.array(((1 - ac) / ac) ** 0.5)
    sigmas = np.interp(ts, np.arange(0, len(sigmas)), sigmas)
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def euler_ancestral_step(
    x: Tensor, out: Tensor, sigma: Tensor, sigma_to: Tensor, prediction: str, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """x0 from the model, an Euler step to sigma_down, then noise of std sigma_up (k-diffusion)."""
    if prediction == "epsilon":
        x0 = x - sigma * out
    else:
        x0 = out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
    # at a huge first sigma, sigma_up^2 can round above sigma_to^2 in float32 (diffusers then gives NaN)
    sigma_down = (sigma_to**2 - sigma_up**2).clamp(min=0) ** 0.5
    x_prev = x + (x - x0) / sigma * (sigma_down - sigma)
    return x_prev + noise * sigma_up, x0


class EulerAncestralDiscreteScheduler(SchedulerBase):
    """diffusers' EulerAncestralDiscreteScheduler; `step` indexes sigmas by a host step counter."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if prediction_type not in PREDICTIONS:
            raise ValueError(
                f"prediction_type={prediction_type!r} is not supported; choose one of {PREDICTIONS}"
            )
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        self._set_tables(betas)
        if rescale_betas_zero_snr:  # diffusers keeps sigma finite at t = T - 1
            self.alphas_cumprod[-1] = 2**-24
        self.num_inference_steps: int | None = None
        ts = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self.timesteps = torch.from_numpy(ts).to(torch.float32)
        self.sigmas = sigma_table(self.alphas_cumprod, ts)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def init_noise_sigma(self) -> Tensor:  # type: ignore[override]
        top = self.sigmas.max()
        return top if self.config.timestep_spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        ts = karras_free_timesteps(
            cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset
        )
        self.num_inference_steps = len(ts)
        self.sigmas = sigma_table(self.alphas_cumprod, ts)
        self.timesteps = torch.from_numpy(ts).to(device=device)
        self._host_ts = [float(t) for t in ts]
        self._step_index = None
        self._begin_index = None

    def _index(self, timestep: float | Tensor) -> int:
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:  # a host lookup; pipelines call set_begin_index (or start at 0) to avoid the read
                t = float(timestep)
                hits = [i for i, s in enumerate(self._host_ts) if s == t]
                if not hits:
                    raise ValueError(f"timestep {t} is not in the schedule {self._host_ts}")
                self._step_index = hits[1] if len(hits) > 1 else hits[0]
        return self._step_index

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """Divide by sqrt(sigma^2 + 1): the model was trained on unit-variance inputs."""
        sigma = self.sigmas[self._index(timestep)]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """One ancestral Euler step from sigmas[i] to sigmas[i + 1]; draws noise every step."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps to step, not an integer index")
        i = self._index(timestep)
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        noise = randn(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
        x_prev, x0 = euler_ancestral_step(
            sample.to(torch.float32), model_output, sigma, sigma_to, self.config.prediction_type, noise
        )
        self._step_index = i + 1
        x_prev = x_prev.to(model_output.dtype)
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: float | Tensor) -> Tensor:
        """x + sigma * noise at the sigma of the current (or begin) step, as diffusers does in img2img."""
        start = self._step_index if self._step_index is not None else (self._begin_index or 0)
        sigma = self.sigmas[start].to(device=original_samples.device, dtype=original_samples.dtype)
        return original_samples + noise * sigma
