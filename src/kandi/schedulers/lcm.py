"""Latent consistency model sampling (Luo et al. 2023, arXiv:2310.04378), multistep Algorithm 1.

Each step maps x_t to the consistency function's estimate of x0 (the boundary-condition blend of the
sample and the model's x0, `lcm_denoise`), then re-noises it to the next timestep with fresh noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import SchedulerBase
from .common import PREDICTION_TYPES, X0Rule, check_choice, clip_x0, predict_x0
from .noise import Generator, randn
from .schedules import make_betas
from .solver import VP_BETA_SCHEDULES, check_channels

SIGMA_DATA = 0.5  # the consistency models' data std (Song et al. 2023)


@dataclass
class LCMSchedulerOutput:
    """What LCM's `step` returns; indexes like the tuple (prev_sample, denoised)."""

    prev_sample: Tensor
    denoised: Tensor | None = None

    def to_tuple(self) -> tuple[Tensor, Tensor | None]:
        return (self.prev_sample, self.denoised)

    def __getitem__(self, key: int | slice | str) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __len__(self) -> int:
        return 2


def boundary_scalings(t: float, timestep_scaling: float) -> tuple[float, float]:
    """c_skip and c_out of the consistency parametrisation, with t scaled so c_skip ~ 0 past t ~ 1."""
    s = t * timestep_scaling
    return SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2), s / (s**2 + SIGMA_DATA**2) ** 0.5


def lcm_denoise(
    x: Tensor, out: Tensor, a_t: Tensor, t: float, rule: X0Rule, timestep_scaling: float
) -> Tensor:
    """The consistency function's x0: c_out * (clipped) x0 prediction + c_skip * x."""
    c_skip, c_out = boundary_scalings(t, timestep_scaling)
    x0 = clip_x0(predict_x0(x, out, a_t, rule.prediction_type), rule)
    return c_out * x0 + c_skip * x


def lcm_timesteps(num_train: int, steps: int, original_steps: int, strength: float = 1.0) -> list[int]:
    """`steps` of the distillation schedule's `original_steps` timesteps, evenly picked from the top."""
    if original_steps > num_train:
        raise ValueError(
            f"original_inference_steps={original_steps} cannot be larger than num_train_timesteps={num_train}"
        )
    k = num_train // original_steps
    origin = np.asarray(list(range(1, int(original_steps * strength) + 1))) * k - 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}")
    if steps > original_steps or len(origin) // steps < 1:
        raise ValueError(
            f"num_inference_steps={steps} cannot be larger than original_inference_steps x strength = "
            f"{original_steps} x {strength}: LCM picks its steps from that distillation schedule"
        )
    origin = origin[::-1].copy()
    picks = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in origin[picks]]


class LCMScheduler(SchedulerBase):
    """diffusers' LCMScheduler; `step` draws the re-noising noise from `generator` (all but the last step)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, VP_BETA_SCHEDULES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        self._set_tables(betas)
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
        self.custom_timesteps = False
        self._use_host(list(range(num_train_timesteps - 1, -1, -1)), None)

    def _use_host(self, ts: list[int], device: str | torch.device | None) -> None:
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)
        self._host_ts = ts  # step reads the next timestep here, not from the device tensor
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """`num_inference_steps` picked from the distillation schedule, or a custom descending list."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        cfg = self.config
        original = original_inference_steps or cfg.original_inference_steps
        if timesteps is None:
            ts = lcm_timesteps(cfg.num_train_timesteps, num_inference_steps, original, strength)
            self.num_inference_steps = num_inference_steps
        else:
            ts = self._custom(list(timesteps), strength)
        self._use_host(ts, device)

    def _custom(self, ts: list[int], strength: float) -> list[int]:
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError(f"custom timesteps must be strictly descending, got {ts}")
        if not ts or ts[0] >= self.config.num_train_timesteps:
            raise ValueError(
                f"custom timesteps must be non-empty and start below num_train_timesteps="
                f"{self.config.num_train_timesteps}, got {ts}"
            )
        self.num_inference_steps, self.custom_timesteps = len(ts), True
        run = min(int(len(ts) * strength), len(ts))  # img2img keeps the last `strength` part
        return [int(t) for t in ts[max(len(ts) - run, 0) :]]

    def _index(self, t: int) -> int:
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                hits = [i for i, s in enumerate(self._host_ts) if s == t]
                if not hits:
                    raise ValueError(f"timestep {t} is not in the schedule {self._host_ts}")
                self._step_index = hits[1] if len(hits) > 1 else hits[0]
        return self._step_index

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple[Tensor, Tensor]:
        """Denoise to the consistency estimate, then (before the last step) re-noise to the next timestep."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        check_channels(type(self).__name__, model_output, sample)
        t = int(timestep)  # the only host read of a device timestep
        i = self._index(t)
        t_prev = self._host_ts[i + 1] if i + 1 < len(self._host_ts) else t
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod
        denoised = lcm_denoise(
            sample, model_output, self.alphas_cumprod[t], t, self.rule, self.config.timestep_scaling
        )
        # the last entry of the schedule run (diffusers compares with num_inference_steps, which re-noises
        # the final sample of a custom schedule cut by strength < 1)
        if i != len(self._host_ts) - 1:
            noise = randn(model_output.shape, generator, device=model_output.device, dtype=denoised.dtype)
            x_prev = a_prev.sqrt() * denoised + (1 - a_prev).sqrt() * noise
        else:
            x_prev = denoised
        self._step_index = i + 1
        return LCMSchedulerOutput(x_prev, denoised) if return_dict else (x_prev, denoised)
