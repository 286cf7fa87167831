"""PNDM (Liu et al. 2022, arXiv:2202.09778): pseudo Runge-Kutta (PRK) warm-up and linear multistep (PLMS).

Both move with the same transfer `pndm_transfer` (the paper's Eq. 11, a DDIM step with a given eps);
they differ in the eps they feed it: a Runge-Kutta average of four calls (PRK), or the Adams-Bashforth
extrapolation of the last four (PLMS). Kandinsky and SD use PLMS alone (`skip_prk_steps=True`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerBase, SchedulerOutput
from .common import check_choice
from .schedules import check_num_steps, make_betas
from .solver import VP_BETA_SCHEDULES, check_channels

PREDICTIONS = ("epsilon", "v_prediction")
SPACINGS = ("linspace", "leading", "trailing")
PNDM_ORDER = 4  # the PRK warm-up fills four eps estimates


def pndm_transfer(x: Tensor, eps: Tensor, a_t: Tensor, a_prev: Tensor, prediction_type: str) -> Tensor:
    """x_t -> x_prev for a given eps (or v), Liu et al. (2022) Eq. 11; a_* are alpha_bar values."""
    b_t, b_prev = 1 - a_t, 1 - a_prev
    if prediction_type == "v_prediction":
        eps = a_t**0.5 * eps + b_t**0.5 * x
    denom = a_t * b_prev ** (0.5) + (a_t * b_t * a_prev) ** (0.5)
    return (a_prev / a_t) ** (0.5) * x - (a_prev - a_t) * eps / denom


def plms_eps(ets: list[Tensor]) -> Tensor:
    """Adams-Bashforth extrapolation of the last 1-4 eps estimates (ets[-1] newest), Eq. 12."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


def pndm_grid(num_train: int, steps: int, spacing: str, offset: int) -> np.ndarray:
    """The ascending base grid PNDM builds its PRK and PLMS timesteps from."""
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, steps).round().astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, steps) * (num_train // steps)).round() + offset
    ratio = num_train / steps
    return np.round(np.arange(num_train, 0, -ratio))[::-1].astype(np.int64) - 1


class PNDMScheduler(SchedulerBase):
    """diffusers' PNDMScheduler: PRK then PLMS, or PLMS alone with skip_prk_steps=True."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, VP_BETA_SCHEDULES)
        check_choice("prediction_type", prediction_type, PREDICTIONS)
        check_choice("timestep_spacing", timestep_spacing, SPACINGS)
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self._set_tables(make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas))
        # the last step lands on alpha_bar = 1 or, as trained, on alpha_bar_0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = PNDM_ORDER
        self.num_inference_steps: int | None = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps: np.ndarray | None = None
        self.plms_timesteps: np.ndarray | None = None
        self.timesteps: Tensor | None = None  # diffusers has none before set_timesteps
        self._reset_state()

    def _reset_state(self) -> None:
        self.ets: list[Tensor] = []
        self.counter = 0
        self.cur_model_output: Tensor | float = 0
        self.cur_sample: Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """PLMS: the grid with its second entry repeated (a Heun-like start); PRK: 12 half steps first."""
        cfg = self.config
        n = check_num_steps(num_inference_steps, cfg.num_train_timesteps)
        if not cfg.skip_prk_steps and n < PNDM_ORDER:
            raise ValueError(
                f"PNDM's Runge-Kutta warm-up needs num_inference_steps >= {PNDM_ORDER}, got {n}; "
                "use more steps or skip_prk_steps=True (PLMS)"
            )
        self.num_inference_steps = n
        grid = pndm_grid(cfg.num_train_timesteps, n, cfg.timestep_spacing, cfg.steps_offset)
        self._timesteps = grid
        if cfg.skip_prk_steps:
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1].copy()
        else:
            half = np.tile(np.array([0, cfg.num_train_timesteps // n // 2]), PNDM_ORDER)
            prk = np.array(grid[-PNDM_ORDER:]).repeat(2) + half
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = grid[:-3][::-1].copy()
        ts = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._reset_state()

    def _alpha(self, t: int) -> Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """A PRK step while the warm-up lasts, else a PLMS step (`generator` unused: no noise)."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        check_channels(type(self).__name__, model_output, sample)
        t = int(timestep)  # the only host read of a device timestep
        if not self.config.skip_prk_steps and self.counter < len(self.prk_timesteps):
            x_prev = self._prk(model_output, t, sample)
        else:
            x_prev = self._plms(model_output, t, sample)
        self.counter += 1
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)

    def step_prk(
        self, model_output: Tensor, timestep: int | Tensor, sample: Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[Tensor]:
        """One Runge-Kutta stage (four per step, at t, t - h/2, t - h/2, t - h)."""
        x_prev = self._prk(model_output, int(timestep), sample)
        self.counter += 1
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)

    def step_plms(
        self, model_output: Tensor, timestep: int | Tensor, sample: Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[Tensor]:
        """One linear multistep step."""
        x_prev = self._plms(model_output, int(timestep), sample)
        self.counter += 1
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)

    def _prk(self, out: Tensor, t: int, x: Tensor) -> Tensor:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        stage, ratio = self.counter % 4, self.config.num_train_timesteps // self.num_inference_steps
        t_prev = t - (0 if self.counter % 2 else ratio // 2)
        t_start = int(self.prk_timesteps[self.counter // 4 * 4])
        if stage == 0:  # k1: remember where this Runge-Kutta step starts
            self.cur_model_output = 1 / 6 * out
            self.ets.append(out)
            self.cur_sample = x
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * out
        else:  # k4 closes the average (k1 + 2 k2 + 2 k3 + k4) / 6
            out = self.cur_model_output + 1 / 6 * out
            self.cur_model_output = 0
        start = self.cur_sample if self.cur_sample is not None else x
        return pndm_transfer(
            start, out, self._alpha(t_start), self._alpha(t_prev), self.config.prediction_type
        )

    def _plms(self, out: Tensor, t: int, x: Tensor) -> Tensor:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                "PLMS steps need the PRK warm-up first (12 step_prk calls) when skip_prk_steps=False"
            )
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        t_prev = t - ratio
        if self.counter != 1:
            self.ets = self.ets[-3:] + [out]
        else:  # the repeated second timestep: redo the first step with the mean of both estimates
            t, t_prev = t + ratio, t
        if len(self.ets) == 1 and self.counter == 0:
            eps = out
            self.cur_sample = x
        elif len(self.ets) == 1 and self.counter == 1:
            eps = (out + self.ets[-1]) / 2
            x, self.cur_sample = self.cur_sample, None
        else:
            eps = plms_eps(self.ets)
        return pndm_transfer(x, eps, self._alpha(t), self._alpha(t_prev), self.config.prediction_type)
