"""Shared by the VP-space ODE solvers (UniPC, DEIS, DPM-Solver singlestep): sigma tables over integer
timesteps, the x0 prediction from the model output, the host step counter and img2img noising.

The tables are built with the dtypes and order of operations of diffusers 0.42.1; the classes keep
their step counter and schedule on the host, so `step` reads no device tensor back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import FrozenConfig
from .common import check_choice, dynamic_threshold
from .dpm import alpha_sigma
from .euler import SigmaScheduler, karras_sigmas, sigma_to_t
from .schedules import make_betas

VP_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
VP_PREDICTIONS = ("epsilon", "sample", "v_prediction")


def check_vp_options(
    cls_name: str, beta_schedule: str, trained: bool, prediction_type: str, **flags: Any
) -> None:
    """Refuse what kandi does not implement (flow sigmas, exponential/beta sigmas) before any table is built."""
    if not trained:
        check_choice("beta_schedule", beta_schedule, VP_BETA_SCHEDULES)
    check_choice("prediction_type", prediction_type, VP_PREDICTIONS)
    on = [k for k, v in flags.items() if v]
    if on:
        raise ValueError(
            f"{cls_name} supports linear and Karras sigmas only; {', '.join(on)} is not supported"
        )


def sigma_schedule(
    ac: Tensor, ts: np.ndarray, steps: int, karras: bool, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, sigmas): the table interpolated at `ts`, or `steps` Karras sigmas with rounded timesteps."""
    table = np.array(((1 - ac) / ac) ** 0.5)
    if not karras:
        return ts, np.interp(ts, np.arange(0, len(table)), table)
    sigmas = karras_sigmas(np.flip(table).copy(), steps, lo, hi)
    log_table = np.log(table)
    return np.array([sigma_to_t(s, log_table) for s in sigmas]).round(), sigmas


def sigma_min(ac: Tensor) -> Tensor:
    """The training chain's smallest sigma, at t = 0 (the `final_sigmas_type="sigma_min"` end point)."""
    return ((1 - ac[0]) / ac[0]) ** 0.5


def vp_x0(out: Tensor, x: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """x0 from an eps, x0 or v prediction at VE sigma `sigma` (alpha = 1 / sqrt(1 + sigma^2))."""
    if prediction_type == "sample":
        return out
    a_t, s_t = alpha_sigma(sigma)
    if prediction_type == "epsilon":
        return (x - s_t * out) / a_t
    return a_t * x - s_t * out


def check_channels(cls_name: str, out: Tensor, x: Tensor) -> None:
    """A clear error for a learned-variance (2C-channel) output, where diffusers fails in a broadcast."""
    if out.shape != x.shape:
        raise ValueError(
            f"{cls_name}.step got model_output of shape {tuple(out.shape)} for a sample of shape "
            f"{tuple(x.shape)}; this sampler takes the eps half only (model_output[:, :{x.shape[1]}])"
        )


class VPSolverScheduler(SigmaScheduler):
    """Solvers over VP sigmas with integer timesteps; the sample goes to the model unscaled."""

    init_noise_sigma = 1.0  # type: ignore[assignment]
    model_outputs: list[Tensor | None]
    lower_order_nums: int

    def _init_tables(self, cfg: dict[str, Any], rescale: bool = False) -> None:
        """Training tables and the full descending chain, as diffusers' constructors leave them."""
        betas = make_betas(
            cfg["beta_schedule"],
            cfg["num_train_timesteps"],
            cfg["beta_start"],
            cfg["beta_end"],
            cfg["trained_betas"],
            rescale,
        )
        self._set_tables(betas)
        if rescale:  # diffusers keeps sigma finite at t = T - 1
            self.alphas_cumprod[-1] = 2**-24
        ac = self.alphas_cumprod
        self.lambda_t = torch.log(torch.sqrt(ac)) - torch.log(torch.sqrt(1 - ac))
        self.sigmas = ((1 - ac) / ac) ** 0.5
        n = cfg["num_train_timesteps"]
        ts = np.linspace(0, n - 1, n, dtype=np.float32)[::-1].copy()
        self.timesteps = torch.from_numpy(ts)
        self._host_ts = [float(t) for t in ts]
        self.num_inference_steps: int | None = None
        self.model_outputs = [None] * cfg["solver_order"]
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _use_sigmas(self, ts: np.ndarray, sigmas: np.ndarray, last: Any, device: Any) -> None:
        """Install a schedule: int64 timesteps on `device`, float32 sigmas (with `last` appended) on the host."""
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        ts = ts.astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device=device, dtype=torch.int64)
        self._host_ts = [float(t) for t in ts]
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _update_config(self, **changes: Any) -> None:
        """diffusers rewrites some config fields in set_timesteps (register_to_config); so does kandi."""
        self._config = FrozenConfig({**self._config, **changes})

    def _lookup(self, t: float) -> int:
        """diffusers' index_for_timestep: an unknown timestep is the last step, a repeated one its second copy."""
        hits = [i for i, s in enumerate(self._host_ts) if s == t]
        if not hits:
            return len(self._host_ts) - 1
        return hits[1] if len(hits) > 1 else hits[0]

    def _index(self, timestep: float | Tensor) -> int:
        if self._step_index is None and self._begin_index is None and float(timestep) not in self._host_ts:
            self._step_index = len(self._host_ts) - 1
        return super()._index(timestep)

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")

    def _x0(self, out: Tensor, x: Tensor, i: int) -> Tensor:
        """The (thresholded) x0 prediction at step i, in float32."""
        cfg = self.config
        x0 = vp_x0(out.float(), x.float(), self.sigmas[i], cfg.prediction_type)
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0

    def _push(self, m: Tensor) -> None:
        self.model_outputs = self.model_outputs[1:] + [m]

    def scale_model_input(self, sample: Tensor, *args: object, **kwargs: object) -> Tensor:
        """These solvers feed the model the sample unscaled."""
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: int | Tensor) -> Tensor:
        """alpha * x0 + sigma * noise at the timesteps' (or the current / begin step's) sigma, as diffusers."""
        ts = torch.as_tensor(timesteps).reshape(-1).tolist()
        if self._begin_index is None:
            idx = [self._lookup(float(t)) for t in ts]
        else:
            start = self._step_index if self._step_index is not None else self._begin_index
            idx = [start] * len(ts)
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        sigma = sigmas[idx].reshape((-1,) + (1,) * (original_samples.ndim - 1))
        a_t, s_t = alpha_sigma(sigma)
        return a_t * original_samples + s_t * noise
