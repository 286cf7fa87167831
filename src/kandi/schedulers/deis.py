"""DEIS multistep (Zhang & Chen 2023, arXiv:2204.13902), the log-rho form, orders 1-3.

The exponential integrator over eps in rho = sigma / alpha: the past eps predictions are extrapolated by
a Lagrange polynomial in log rho and integrated in closed form (`_ind2`, `_ind3`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .common import check_choice
from .dpm import _lam, alpha_sigma, dpm_timesteps
from .solver import VPSolverScheduler, check_channels, check_vp_options, sigma_min, sigma_schedule

_ALIASES = {"dpmsolver": "deis", "dpmsolver++": "deis"}  # diffusers maps these names to deis
_SOLVER_ALIASES = {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"}


def _log(v: Tensor) -> Tensor:
    """float32 log as numpy computes it: the coefficients below cancel, so the last bit shows after 50
    steps, and diffusers takes these logs with numpy (torch's float32 log differs in ~4% of inputs)."""
    return torch.as_tensor(np.log(v.numpy()))


def _ind2(t: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Antiderivative of the Lagrange basis through log b (one at b, zero at c), times rho."""
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _ind3(t: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """The same for the quadratic basis through log b, log c, log d (one at b)."""
    lt, lc, ld, lb = _log(t), _log(c), _log(d), _log(b)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return num / ((lb - lc) * (lb - ld))


def deis_step(x: Tensor, ms: list[Tensor], sig: list[Tensor], order: int) -> Tensor:
    """One DEIS step from sig[1] to sig[0] with the last `order` eps predictions (ms[-1] at sig[1])."""
    a_t, s_t = alpha_sigma(sig[0])
    a_s0, s_s0 = alpha_sigma(sig[1])
    if order == 1:
        h = _lam(sig[0])[2] - _lam(sig[1])[2]
        return a_t / a_s0 * x - s_t * (torch.exp(h) - 1.0) * ms[-1]
    rho = [s / a for a, s in (alpha_sigma(v) for v in sig[: order + 1])]
    if order == 2:
        c1 = _ind2(rho[0], rho[1], rho[2]) - _ind2(rho[1], rho[1], rho[2])
        c2 = _ind2(rho[0], rho[2], rho[1]) - _ind2(rho[1], rho[2], rho[1])
        return a_t * (x / a_s0 + c1 * ms[-1] + c2 * ms[-2])
    r_t, r0, r1, r2 = rho
    c1 = _ind3(r_t, r0, r1, r2) - _ind3(r0, r0, r1, r2)
    c2 = _ind3(r_t, r1, r2, r0) - _ind3(r0, r1, r2, r0)
    c3 = _ind3(r_t, r2, r0, r1) - _ind3(r0, r2, r0, r1)
    return a_t * (x / a_s0 + c1 * ms[-1] + c2 * ms[-2] + c3 * ms[-3])


class DEISMultistepScheduler(VPSolverScheduler):
    """diffusers' DEISMultistepScheduler (deis / logrho), linear or Karras sigmas."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        check_vp_options(
            type(self).__name__,
            beta_schedule,
            trained_betas is not None,
            prediction_type,
            use_exponential_sigmas=use_exponential_sigmas,
            use_beta_sigmas=use_beta_sigmas,
            use_flow_sigmas=use_flow_sigmas,
            use_dynamic_shifting=use_dynamic_shifting,
        )
        algorithm_type = _ALIASES.get(algorithm_type, algorithm_type)
        solver_type = _SOLVER_ALIASES.get(solver_type, solver_type)
        check_choice("algorithm_type", algorithm_type, ("deis",))
        check_choice("solver_type", solver_type, ("logrho",))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order={solver_order!r} is not supported; choose 1, 2 or 3")
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self._init_tables(dict(self.config))

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        n = cfg.num_train_timesteps
        ts = dpm_timesteps(n, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset, n)
        ac = self.alphas_cumprod
        ts, sigmas = sigma_schedule(ac, ts, num_inference_steps, cfg.use_karras_sigmas)
        # DEIS never steps to sigma 0 (its eps form divides by sigma): it ends at the smallest sigma
        self._use_sigmas(ts, sigmas, sigmas[-1] if cfg.use_karras_sigmas else sigma_min(ac), device)

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The eps DEIS integrates, re-derived from the (thresholded) x0 prediction."""
        check_channels(type(self).__name__, model_output, sample)
        i = self._step_index
        x0 = self._x0(model_output, sample, i)
        a_t, s_t = alpha_sigma(self.sigmas[i])
        return (sample.float() - a_t * x0) / s_t

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """One multistep DEIS update from sigmas[i] to sigmas[i + 1] (`generator` unused: no noise)."""
        self._check_ready()
        cfg = self.config
        i = self._index(timestep)
        n = len(self._host_ts)
        short = cfg.lower_order_final and n < 15  # lower the order over the last steps of short runs
        m = self.convert_model_output(model_output, sample)
        self._push(m)
        order = min(cfg.solver_order, self.lower_order_nums + 1)
        if short and i == n - 1:
            order = 1
        elif short and i == n - 2:
            order = min(order, 2)
        sig = [self.sigmas[i + 1 - j] for j in range(order + 1)]
        x_prev = deis_step(sample.float(), self.model_outputs, sig, order)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index = i + 1
        x_prev = x_prev.to(sample.dtype)
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)
