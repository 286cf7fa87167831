"""Euler ancestral sampling in sigma space, Karras et al. (2022) Algorithm 2 with ancestral noise (k-diffusion)."""

from __future__ import annotations

import math

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


def karras_sigmas(sigmas: np.ndarray, steps: int, lo: float | None, hi: float | None) -> np.ndarray:
    """Karras et al. (2022) Eq. 5 with rho = 7, between the table's (or the config's) sigma bounds."""
    lo = float(sigmas[-1]) if lo is None else lo
    hi = float(sigmas[0]) if hi is None else hi
    ramp = np.linspace(0, 1, steps)
    return (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7


def exponential_sigmas(sigmas: np.ndarray, steps: int, lo: float | None, hi: float | None) -> np.ndarray:
    """Evenly spaced in log sigma between the table's (or the config's) bounds: A1111's "Exponential"."""
    lo = float(sigmas[-1]) if lo is None else lo
    hi = float(sigmas[0]) if hi is None else hi
    return np.exp(np.linspace(math.log(hi), math.log(lo), steps))


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep whose log-sigma, linearly interpolated in the table, is log(sigma)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


class SigmaScheduler(SchedulerBase):
    """Shared by the sigma-space samplers: step counter, begin index, input scaling, img2img noising."""

    sigmas: Tensor
    _host_ts: list[float]
    _step_index: int | None = None
    _begin_index: int | None = None

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

    def _index(self, timestep: float | Tensor) -> int:
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:  # a host lookup; pipelines call set_begin_index (or start at 0) to avoid the read
                t = float(timestep)
                hits = [i for i, s in enumerate(self._host_ts) if s == t]
                if not hits:
                    raise ValueError(f"timestep {t} is not in the schedule {self._host_ts}")
                # diffusers takes the second of repeated timesteps (for img2img); at the very first entry
                # that skips a step and overruns the table (its DPM++ Karras on K3 raises IndexError)
                self._step_index = hits[1] if len(hits) > 1 and hits[0] != 0 else hits[0]
        return self._step_index

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """Divide by sqrt(sigma^2 + 1): the model was trained on unit-variance inputs."""
        sigma = self.sigmas[self._index(timestep)]
        return sample / ((sigma**2 + 1) ** 0.5)

    @staticmethod
    def _check_timestep(timestep: float | Tensor) -> None:
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps to step, not an integer index")

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: float | Tensor) -> Tensor:
        """x + sigma * noise at the sigma of the current (or begin) step, as diffusers does in img2img."""
        start = self._step_index if self._step_index is not None else (self._begin_index or 0)
        sigma = self.sigmas[start].to(device=original_samples.device, dtype=original_samples.dtype)
        return original_samples + noise * sigma


class EulerAncestralDiscreteScheduler(SigmaScheduler):
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
        self._check_timestep(timestep)
        i = self._index(timestep)
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        noise = randn(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
        x_prev, x0 = euler_ancestral_step(
            sample.to(torch.float32), model_output, sigma, sigma_to, self.config.prediction_type, noise
        )
        self._step_index = i + 1
        x_prev = x_prev.to(model_output.dtype)
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)


class EulerDiscreteScheduler(SigmaScheduler):
    """diffusers' EulerDiscreteScheduler (Karras et al. 2022 Algorithm 2): linear or Karras sigmas."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        if prediction_type not in PREDICTIONS:
            raise ValueError(
                f"prediction_type={prediction_type!r} is not supported; choose one of {PREDICTIONS}"
            )
        if interpolation_type != "linear" or use_beta_sigmas:
            raise ValueError(
                "EulerDiscreteScheduler supports interpolation_type='linear' with linear, Karras or exponential "
                f"sigmas only (got interpolation_type={interpolation_type!r}, use_beta_sigmas={use_beta_sigmas})"
            )
        if use_karras_sigmas and use_exponential_sigmas:
            raise ValueError("only one of use_karras_sigmas and use_exponential_sigmas can be True")
        if timestep_type != "discrete":
            raise ValueError(f"timestep_type={timestep_type!r} is not supported; only 'discrete'")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type={final_sigmas_type!r}: choose 'zero' or 'sigma_min'")
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        self._set_tables(betas)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24
        self.num_inference_steps: int | None = None
        ts = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self.timesteps = torch.from_numpy(ts).to(torch.float32)
        self.sigmas = sigma_table(self.alphas_cumprod, ts)
        if use_karras_sigmas:  # diffusers' constructor already builds the Karras table here
            self.set_timesteps(num_train_timesteps)
            self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        ts = karras_free_timesteps(
            cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset
        )
        ac = self.alphas_cumprod
        table = np.array(((1 - ac) / ac) ** 0.5)
        sigmas = np.interp(ts, np.arange(0, len(table)), table)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            spaced = karras_sigmas if cfg.use_karras_sigmas else exponential_sigmas
            sigmas = spaced(sigmas, len(ts), cfg.sigma_min, cfg.sigma_max)
            ts = np.array([sigma_to_t(s, np.log(table)) for s in sigmas])
        last = ((1 - ac[0]) / ac[0]) ** 0.5 if cfg.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(ts.astype(np.float32)).to(device=device)
        self._host_ts = [float(t) for t in ts.astype(np.float32)]
        self.num_inference_steps = len(ts)
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """One Euler step from sigmas[i] to sigmas[i + 1]; noise only with s_churn > 0 (Algorithm 2)."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        self._check_timestep(timestep)
        i = self._index(timestep)
        x = sample.to(torch.float32)
        sigma, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        s = float(sigma)  # a host table, not a device read
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            x = x + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if self.config.prediction_type == "epsilon":
            x0 = x - sigma_hat * model_output
        else:
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        x_prev = (x + (x - x0) / sigma_hat * (sigma_to - sigma_hat)).to(model_output.dtype)
        self._step_index = i + 1
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)
