"""DPM-Solver-2 in sigma space (Karras et al. 2022, Algorithm 2's midpoint variant; k-diffusion's
`sample_dpm_2` and `sample_dpm_2_ancestral`), as diffusers' KDPM2(Ancestral)DiscreteScheduler.

Each sigma interval takes two model calls: an Euler step to the geometric midpoint sigma, then a full step
with the derivative measured there. The ancestral form ends each interval at sigma_down and adds noise of
std sigma_up, drawn once per interval (on its second call), as diffusers draws it.
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
from .noise import randn


def log_midpoint(a: Tensor, b: Tensor) -> Tensor:
    """exp(lerp(log a, log b, 1/2)): the geometric mean, with torch.lerp's NaN / inf at a zero end kept."""
    return a.log().lerp(b.log(), 0.5).exp()


def kdpm2_tables(ac: Tensor, ts: np.ndarray, kind: str) -> tuple[np.ndarray, Tensor, Tensor, np.ndarray]:
    """(timesteps, sigmas with a final 0, float32 log-sigma table, kind's timesteps) before interleaving.

    Karras timesteps are rounded to integers here (diffusers does so for the KDPM2 classes only).
    """
    sigmas, ts, log_table = spaced_sigmas(ac, ts, kind)
    if kind == "karras":
        ts = ts.round()
    return (
        ts,
        torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)),
        torch.from_numpy(log_table),
    )


def interleave(ts: Tensor, mids: Tensor) -> Tensor:
    """[t_0, mid_1, t_1, mid_2, t_2, ...]: each interval's midpoint timestep before its end timestep."""
    return torch.cat([ts[:1], torch.stack((mids[:, None], ts[1:, None]), dim=-1).flatten()])


def midpoint_timesteps(mids: Tensor, log_table: Tensor, dtype: torch.dtype) -> Tensor:
    """The fractional timestep of each midpoint sigma (sigma_to_t), in float32 as diffusers computes it.

    diffusers feeds torch tensors through its numpy sigma_to_t: the log is numpy's float32 log and the
    rest runs as float32 torch ops (an int index times a float32 weight stays float32), so do the same.
    """
    log_m = torch.from_numpy(np.log(np.maximum(mids.numpy(), 1e-10)))
    low = (log_m[None, :] - log_table[:, None] >= 0).cumsum(dim=0).argmax(dim=0).clip(max=len(log_table) - 2)
    lo, hi = log_table[low], log_table[low + 1]
    w = ((lo - log_m) / (lo - hi)).clip(0, 1)
    return ((1 - w) * low + w * (low + 1)).to(dtype)


class _KDPM2Base(KSigmaScheduler):
    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_tables(locals())
        self.set_timesteps(num_train_timesteps)  # diffusers' constructor leaves the full schedule set

    def _tables(self, steps: int) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        kind = sigma_kind(cfg.use_karras_sigmas, cfg.use_exponential_sigmas, cfg.use_beta_sigmas)
        ts, sigmas, log_table = kdpm2_tables(self.alphas_cumprod, sampler_timesteps(cfg, steps), kind)
        self.log_sigmas = log_table
        self.num_inference_steps = len(ts)
        self.sample: Tensor | None = None
        return torch.from_numpy(ts), sigmas, log_table

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def _x0(self, sample: Tensor, model_output: Tensor, sigma: Tensor) -> Tensor:
        return sigma_x0(sample, model_output, sigma, self.config.prediction_type)


class KDPM2DiscreteScheduler(_KDPM2Base):
    """diffusers' KDPM2DiscreteScheduler: DPM-Solver-2 through the log-midpoint of each interval."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        ts, sigmas, log_table = self._tables(num_inference_steps)
        mids = log_midpoint(sigmas, sigmas.roll(1))  # mids[k] sits between sigmas[k - 1] and sigmas[k]
        self.sigmas = torch.cat([doubled(sigmas), sigmas[-1:]])
        self.sigmas_interpol = torch.cat([doubled(mids), mids[-1:]])
        mid_ts = midpoint_timesteps(mids, log_table, ts.dtype)
        self._set_schedule(interleave(ts, mid_ts[1:-1]).to(device))

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """Divide by sqrt(sigma^2 + 1) at the interval's start, or at its midpoint on the second call."""
        i = self._index(timestep)
        sigma = self.sigmas[i] if self.state_in_first_order else self.sigmas_interpol[i]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        return_dict: bool = True,
        generator: Generator | None = None,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """Euler to the midpoint (first call), then the full interval with the midpoint's derivative."""
        i = self._index(timestep)
        if self.state_in_first_order:
            sigma, mid = self.sigmas[i], self.sigmas_interpol[i + 1]
            x0 = self._x0(sample, model_output, sigma)
            self.sample = sample
            x_prev = sample + (sample - x0) / sigma * (mid - sigma)
        else:
            sigma, mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
            x0 = self._x0(sample, model_output, mid)
            x_prev = self.sample + (sample - x0) / mid * (sigma_next - sigma)
            self.sample = None
        self._step_index = i + 1
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)


def ancestral_split(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(sigma_up, sigma_down) for each step sigmas[k] -> sigmas[k + 1], the last step to 0 noiseless."""
    nxt = sigmas.roll(-1)
    nxt[-1] = 0.0
    up = (nxt**2 * (sigmas**2 - nxt**2) / sigmas**2) ** 0.5
    down = (nxt**2 - up**2) ** 0.5
    # at a huge first sigma, up^2 rounds to nxt^2 or above (diffusers then has NaN midpoints and
    # timesteps); there use the exact nxt^2 / sigma, elsewhere keep diffusers' rounding
    down = torch.where((nxt > 0) & ~(down > 0), nxt**2 / sigmas, down)
    down[-1] = 0.0
    return up, down


class KDPM2AncestralDiscreteScheduler(_KDPM2Base):
    """diffusers' KDPM2AncestralDiscreteScheduler: DPM-Solver-2 to sigma_down, then noise of std sigma_up."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        ts, sigmas, log_table = self._tables(num_inference_steps)
        up, down = ancestral_split(sigmas)
        mids = log_midpoint(sigmas, down)  # mids[k] sits between sigmas[k] and its sigma_down
        mids[-2:] = 0.0
        self.sigmas = torch.cat([doubled(sigmas), sigmas[-1:]])
        self.sigmas_interpol = torch.cat([doubled(mids), mids[-1:]])
        self.sigmas_up = torch.cat([doubled(up), up[-1:]])
        self.sigmas_down = torch.cat([doubled(down), down[-1:]])
        mid_ts = midpoint_timesteps(mids, log_table, ts.dtype)
        self._set_schedule(interleave(ts, mid_ts[:-2]).to(device))

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """Divide by sqrt(sigma^2 + 1) at the interval's start, or at its midpoint on the second call."""
        i = self._index(timestep)
        sigma = self.sigmas[i] if self.state_in_first_order else self.sigmas_interpol[i - 1]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """Euler to the midpoint (first call); then to sigma_down with the midpoint's derivative, plus noise."""
        i = self._index(timestep)
        if self.state_in_first_order:
            sigma, mid = self.sigmas[i], self.sigmas_interpol[i]
            x0 = self._x0(sample, model_output, sigma)
            self.sample = sample
            x_prev = sample + (sample - x0) / sigma * (mid - sigma)
        else:
            sigma, mid = self.sigmas[i - 1], self.sigmas_interpol[i - 1]
            x0 = self._x0(sample, model_output, mid)
            x_prev = self.sample + (sample - x0) / mid * (self.sigmas_down[i - 1] - sigma)
            self.sample = None
            noise = randn(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            x_prev = x_prev + noise * self.sigmas_up[i - 1]
        self._step_index = i + 1
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)
