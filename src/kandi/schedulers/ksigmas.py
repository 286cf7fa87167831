"""What the k-diffusion-style samplers (Heun, DPM2, DPM2 a, LMS, DPM++ SDE) share with Euler.

The sigma spacings (linear in t, Karras et al. 2022 Eq. 5, or exponential: evenly spaced in log sigma, as
A1111's "Exponential" schedule type), the beta tables these diffusers classes accept, and a base class
whose step index is found by timestep value (floats, ints or 0-d tensors) and whose `add_noise` looks the
timesteps up the way diffusers does when no begin index is set.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .euler import SigmaScheduler, exponential_sigmas, karras_free_timesteps, karras_sigmas, sigma_to_t
from .schedules import _betas_from_alpha_bar, check_num_steps, make_betas

SIGMA_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def sigma_kind(karras: bool | None, exponential: bool | None, beta: bool | None) -> str:
    """Which spacing the `use_*_sigmas` flags select; at most one may be on, as in diffusers."""
    if sum(bool(f) for f in (karras, exponential, beta)) > 1:
        raise ValueError(
            "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can be True"
        )
    if beta:
        raise ValueError(
            "use_beta_sigmas is not supported (it needs scipy's beta quantiles); use Karras or exponential sigmas"
        )
    return "karras" if karras else "exponential" if exponential else "linear"


def spaced_sigmas(
    ac: Tensor, ts: np.ndarray, kind: str, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigmas, timesteps, log-sigma table) for float timesteps `ts` under a spacing `kind`.

    Karras and exponential sigmas replace the interpolated ones (same count, same end points unless the
    config fixes them) and move the timesteps to the fractional t of each new sigma (float64, unrounded).
    """
    table = np.array(((1 - ac) / ac) ** 0.5)
    log_table = np.log(table)
    sigmas = np.interp(ts, np.arange(0, len(table)), table)
    if kind == "linear":
        return sigmas, ts, log_table
    spaced = karras_sigmas if kind == "karras" else exponential_sigmas
    sigmas = spaced(sigmas, len(ts), lo, hi)
    return sigmas, np.array([sigma_to_t(s, log_table) for s in sigmas]), log_table


def sampler_timesteps(cfg: dict, steps: int, dtype: type = np.float32) -> np.ndarray:
    """The spaced timesteps before any Karras / exponential remapping; DPM++ SDE spaces them in float64."""
    num_train, spacing = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if dtype is np.float64 and spacing == "linspace":  # the other spacings are whole numbers either way
        check_num_steps(steps, num_train)
        return np.linspace(0, num_train - 1, steps, dtype=np.float64)[::-1].copy()
    return karras_free_timesteps(num_train, steps, spacing, cfg["steps_offset"]).astype(dtype)


def _exp_alpha_bar(t: float) -> float:
    return math.exp(t * -12.0)


def sigma_betas(
    schedule: str, num_train: int, beta_start: float, beta_end: float, trained, allowed: tuple[str, ...]
) -> Tensor:
    """The beta table, refusing the schedules the diffusers class refuses (Heun alone adds "exp")."""
    if trained is None and schedule not in allowed:
        raise ValueError(f"beta_schedule={schedule!r} is not supported here; choose one of {allowed}")
    if trained is None and schedule == "exp":
        return _betas_from_alpha_bar(num_train, _exp_alpha_bar, 0.999)
    return make_betas(schedule, num_train, beta_start, beta_end, trained)


def sigma_x0(x: Tensor, out: Tensor, sigma: Tensor, prediction: str) -> Tensor:
    """The denoised estimate at noise level sigma, Karras et al. (2022) Table 1 (VP-trained models)."""
    if prediction == "epsilon":
        return x - sigma * out
    if prediction == "v_prediction":
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    return out  # "sample"


def check_prediction(prediction: str, allowed: tuple[str, ...]) -> None:
    if prediction not in allowed:
        raise ValueError(f"prediction_type={prediction!r} is not supported; choose one of {allowed}")


def doubled(x: Tensor) -> Tensor:
    """x[0], then every later entry twice: the order-2 samplers visit each later sigma in two calls."""
    return torch.cat([x[:1], x[1:].repeat_interleave(2)])


class KSigmaScheduler(SigmaScheduler):
    """SigmaScheduler for the k-diffusion samplers: timesteps found by value, whatever their type."""

    timesteps: Tensor
    PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction")
    BETA_SCHEDULES: tuple[str, ...] = SIGMA_BETA_SCHEDULES

    def _init_tables(self, args: dict) -> None:
        """The constructors' shared part, from their `locals()`: check the options, record the config,
        build the sigma tables."""
        cfg = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        check_prediction(cfg["prediction_type"], self.PREDICTIONS)
        sigma_kind(cfg["use_karras_sigmas"], cfg["use_exponential_sigmas"], cfg["use_beta_sigmas"])
        self._register(cfg)
        betas = sigma_betas(cfg["beta_schedule"], cfg["num_train_timesteps"], cfg["beta_start"],
                            cfg["beta_end"], cfg["trained_betas"], self.BETA_SCHEDULES)  # fmt: skip
        self._set_tables(betas)

    def _set_schedule(self, timesteps: Tensor) -> None:
        self.timesteps = timesteps
        self._host_ts = [float(t) for t in timesteps.cpu().tolist()]
        self._step_index = None
        self._begin_index = None

    def _position(self, t: float) -> int:
        """diffusers' index_for_timestep: the second of repeated timesteps, except at the very first entry."""
        hits = [i for i, s in enumerate(self._host_ts) if s == t]
        if not hits:
            raise ValueError(f"timestep {t} is not in the schedule {self._host_ts}")
        return hits[1] if len(hits) > 1 and hits[0] != 0 else hits[0]

    def _index(self, timestep: float | Tensor) -> int:
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                self._step_index = self._position(float(timestep))
        return self._step_index

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: float | Tensor) -> Tensor:
        """x + sigma * noise, one sigma per timestep (looked up) or the current / begin step's sigma."""
        ts = torch.as_tensor(timesteps).reshape(-1).tolist()
        if self._begin_index is None:
            idx = [self._position(float(t)) for t in ts]
        else:
            start = self._step_index if self._step_index is not None else self._begin_index
            idx = [start] * len(ts)
        sigma = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)[idx].flatten()
        sigma = sigma.reshape((-1,) + (1,) * (original_samples.ndim - 1))
        return original_samples + noise * sigma
