"""Flow-matching Euler sampling (Lipman et al. 2023; Esser et al. 2024, Eq. 23 shift): pure functions and
the diffusers-shaped `FlowMatchEulerDiscreteScheduler` that Kandinsky 5 configs name.

The sample moves along x_t = (1 - sigma) x0 + sigma noise; the model predicts the velocity
v = noise - x0, and one Euler step is x_next = x + (sigma_next - sigma) v.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import SchedulerBase, SchedulerOutput

SHIFT_TYPES = ("exponential", "linear")


def shift_sigmas(sigmas: np.ndarray | Tensor, shift: float) -> np.ndarray | Tensor:
    """Resolution shift of SD3 (Esser et al. 2024, Eq. 23): sigma' = s sigma / (1 + (s - 1) sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(mu: float, sigmas: np.ndarray, kind: str = "exponential") -> np.ndarray:
    """FLUX's dynamic shift with sigma-exponent 1: exp(mu) / (exp(mu) + (1/t - 1)), or mu / (mu + 1/t - 1)."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return mu / (mu + (1 / sigmas - 1))


def train_sigmas(num_train: int, shift: float, dynamic: bool) -> Tensor:
    """The training chain's sigmas, from 1 down to 1/num_train (shifted unless the shift is dynamic)."""
    t = torch.from_numpy(np.linspace(1, num_train, num_train, dtype=np.float32)[::-1].copy())
    sigmas = t / num_train
    return sigmas if dynamic else shift_sigmas(sigmas, shift)


def flow_sigmas(
    steps: int,
    sigma_max: float,
    sigma_min: float,
    num_train: int = 1000,
    shift: float = 1.0,
    mu: float | None = None,
    shift_type: str = "exponential",
) -> Tensor:
    """`steps` float32 sigmas evenly spaced in t between the chain's ends, shifted, plus a final 0."""
    sigmas = np.linspace(sigma_max * num_train, sigma_min * num_train, steps) / num_train
    sigmas = time_shift(mu, sigmas, shift_type) if mu is not None else shift_sigmas(sigmas, shift)
    sigmas = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def euler_step(x: Tensor, v: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """One Euler step of the flow ODE dx/dsigma = v, computed in float32 and returned in v's dtype."""
    return (x.to(torch.float32) + (sigma_next - sigma) * v).to(v.dtype)


def scale_noise(x0: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """The forward process: x_sigma = sigma noise + (1 - sigma) x0."""
    return sigma * noise + (1.0 - sigma) * x0


class FlowMatchEulerDiscreteScheduler(SchedulerBase):
    """diffusers' FlowMatchEulerDiscreteScheduler (0.42.1) for deterministic Euler sampling.

    Accepts its whole config; the options that select other samplers (Karras / exponential / beta
    sigmas, stochastic sampling, inverted sigmas, a terminal shift) are refused with a ValueError.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        if time_shift_type not in SHIFT_TYPES:
            raise ValueError(f"time_shift_type={time_shift_type!r} is not one of {SHIFT_TYPES}")
        for name, value in (
            ("invert_sigmas", invert_sigmas),
            ("use_karras_sigmas", use_karras_sigmas),
            ("use_exponential_sigmas", use_exponential_sigmas),
            ("use_beta_sigmas", use_beta_sigmas),
            ("stochastic_sampling", stochastic_sampling),
            ("shift_terminal", shift_terminal),
        ):
            if value:
                raise ValueError(
                    f"{name}={value!r} is not supported by kandi's flow-match Euler; accepted: off"
                )
        if not (isinstance(num_train_timesteps, int) and num_train_timesteps >= 1):
            raise ValueError(f"num_train_timesteps={num_train_timesteps!r}: expected an int >= 1")
        if not shift > 0:
            raise ValueError(f"shift={shift!r}: expected a number > 0")
        self._register({k: v for k, v in locals().items() if k in self._init_defaults()})
        self._shift = float(shift)
        sigmas = train_sigmas(num_train_timesteps, self._shift, use_dynamic_shifting)
        self.sigmas = sigmas
        self.timesteps = sigmas * num_train_timesteps
        self.sigma_min = sigmas[-1].item()
        self.sigma_max = sigmas[0].item()
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = float(shift)

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
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        """Sigmas for `num_inference_steps` steps (or the given `sigmas`), shifted as configured."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if timesteps is not None:
            raise ValueError("custom `timesteps` are not supported: pass `sigmas`")
        n = cfg.num_train_timesteps
        if sigmas is not None:
            s = np.asarray(sigmas, dtype=np.float32)
            s = (
                time_shift(mu, s, cfg.time_shift_type)
                if cfg.use_dynamic_shifting
                else shift_sigmas(s, self._shift)
            )
            table = torch.cat([torch.from_numpy(np.asarray(s, dtype=np.float32)), torch.zeros(1)])
        else:
            if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
                raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected an int >= 1")
            table = flow_sigmas(
                num_inference_steps,
                self.sigma_max,
                self.sigma_min,
                n,
                self._shift,
                mu if cfg.use_dynamic_shifting else None,
                cfg.time_shift_type,
            )
        self.sigmas = table.to(device)
        self.timesteps = (table[:-1] * n).to(device)
        self.num_inference_steps = len(table) - 1
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(self, timestep: float | Tensor, schedule_timesteps: Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        hits = (schedule == timestep).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in this scheduler's timesteps")
        return int(hits[1 if len(hits) > 1 else 0].item())

    def scale_noise(self, sample: Tensor, timestep: float | Tensor, noise: Tensor) -> Tensor:
        """Noise clean samples to `timestep` (one per batch row): flow matching's forward process."""
        ts = torch.as_tensor(timestep).reshape(-1).to(self.timesteps.device)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in ts]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * len(ts)
        sigma = self.sigmas.to(device=sample.device, dtype=sample.dtype)[idx].flatten()
        sigma = sigma.view(-1, *([1] * (sample.ndim - 1)))
        return scale_noise(sample, noise, sigma)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **unused: float,
    ) -> SchedulerOutput | tuple[Tensor]:
        """x_next = x + (sigma_next - sigma) v; `s_churn` and friends are accepted and have no effect."""
        if isinstance(timestep, int) or (
            isinstance(timestep, Tensor) and not torch.is_floating_point(timestep)
        ):
            raise ValueError("pass one of `scheduler.timesteps` as timestep, not an integer index")
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = (
                self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            )
        i = self._step_index
        prev = euler_step(sample, model_output, self.sigmas[i], self.sigmas[i + 1])
        self._step_index += 1
        return SchedulerOutput(prev, None) if return_dict else (prev,)
