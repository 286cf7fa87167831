"""DPM-Solver++ singlestep (Lu et al. 2022, arXiv:2211.01095, Algorithm 1), ODE and SDE forms, orders 1-3.

A k-th order step spends k model calls: it starts at a sample x_s, takes the intermediate points the
schedule lists after it, and lands from x_s (not from the intermediate samples) using all k outputs.
`order_list` says which order each model call closes, as in diffusers' DPMSolverSinglestepScheduler.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .common import check_choice, split_variance
from .dpm import SOLVER_TYPES, _lam, dpm_first
from .noise import randn
from .schedules import check_num_steps
from .solver import VPSolverScheduler, check_vp_options, sigma_min, sigma_schedule

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")


def order_list(steps: int, order: int, lower_order_final: bool, zero_final: bool) -> list[int]:
    """The order each of `steps` model calls closes: 1, 2, (3), 1, 2, (3), ... with a lower-order tail."""
    if not lower_order_final:
        orders = list(range(1, order + 1)) * (steps // order)
    elif order == 3:
        tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[steps % 3]
        orders = [1, 2, 3] * (steps // 3 - (steps % 3 == 0)) + tail
    elif order == 2:
        orders = [1, 2] * (steps // 2 - (steps % 2 == 0)) + ([1, 1] if steps % 2 == 0 else [1])
    else:
        orders = [1] * steps
    if zero_final:  # the step to sigma = 0 must be first order (higher orders divide by lambda = inf)
        orders[-1] = 1
    return orders


def single_second(
    x: Tensor, ms: list[Tensor], sig: list[Tensor], sde: bool, solver: str, noise: Tensor | None
) -> Tensor:
    """Second-order singlestep from sig[2] (where x is) over sig[1] to sig[0]; ms[-2] at sig[2], ms[-1] at sig[1]."""
    a_t, s_t, lam_t = _lam(sig[0])
    _, _, lam_s0 = _lam(sig[1])
    _, s_s1, lam_s1 = _lam(sig[2])
    m0, m1 = ms[-1], ms[-2]
    h, h_0 = lam_t - lam_s1, lam_s0 - lam_s1
    d0, d1 = m1, 1.0 / (h_0 / h) * (m0 - m1)
    if not sde:
        base = s_t / s_s1 * x - a_t * (torch.exp(-h) - 1.0) * d0
        if solver == "midpoint":
            return base - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
        return base + a_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
    base = s_t / s_s1 * torch.exp(-h) * x + a_t * (1 - torch.exp(-2.0 * h)) * d0
    if solver == "midpoint":
        base = base + 0.5 * (a_t * (1 - torch.exp(-2.0 * h))) * d1
    else:
        base = base + a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
    return base + s_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


def single_third(
    x: Tensor, ms: list[Tensor], sig: list[Tensor], sde: bool, solver: str, noise: Tensor | None
) -> Tensor:
    """Third-order singlestep from sig[3] (where x is) over sig[2], sig[1] to sig[0]; ms[-3] at sig[3]."""
    a_t, s_t, lam_t = _lam(sig[0])
    lam_s0, lam_s1 = _lam(sig[1])[2], _lam(sig[2])[2]
    _, s_s2, lam_s2 = _lam(sig[3])
    m0, m1, m2 = ms[-1], ms[-2], ms[-3]
    h, h_0, h_1 = lam_t - lam_s2, lam_s0 - lam_s2, lam_s1 - lam_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = 1.0 / r1 * (m1 - m2), 1.0 / r0 * (m0 - m2)
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    if not sde:
        out = s_t / s_s2 * x - a_t * (torch.exp(-h) - 1.0) * m2
        if solver == "midpoint":
            return out + a_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1_1
        out = out + a_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
        return out - a_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5) * d2
    e2 = 1.0 - torch.exp(-2.0 * h)
    out = s_t / s_s2 * torch.exp(-h) * x + a_t * e2 * m2
    if solver == "midpoint":
        out = out + a_t * (e2 / (-2.0 * h) + 1.0) * d1_1
    else:
        out = out + a_t * (e2 / (-2.0 * h) + 1.0) * d1 + a_t * ((e2 + -2.0 * h) / (-2.0 * h) ** 2 - 0.5) * d2
    return out + s_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


class DPMSolverSinglestepScheduler(VPSolverScheduler):
    """diffusers' DPMSolverSinglestepScheduler (dpmsolver++ and sde-dpmsolver++), linspace timesteps."""

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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
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
        if algorithm_type == "deis":  # diffusers' alias
            algorithm_type = "dpmsolver++"
        if solver_type in ("logrho", "bh1", "bh2"):
            solver_type = "midpoint"
        check_choice("algorithm_type", algorithm_type, ALGORITHMS)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order={solver_order!r} is not supported; choose 1, 2 or 3")
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self._init_tables(dict(self.config))
        self.sample: Tensor | None = None  # where the current singlestep group started
        self.order_list = self._orders(num_train_timesteps)

    def _orders(self, steps: int) -> list[int]:
        cfg = self.config
        return order_list(steps, cfg.solver_order, cfg.lower_order_final, cfg.final_sigmas_type == "zero")

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """linspace timesteps (below lambda_min_clipped), or a custom descending `timesteps` list."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None and cfg.use_karras_sigmas:
            raise ValueError("custom timesteps cannot be combined with use_karras_sigmas=True")
        if timesteps is not None:
            ts = np.array(timesteps).astype(np.int64)
            steps = len(ts)
        else:
            steps = check_num_steps(num_inference_steps, cfg.num_train_timesteps)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            top = cfg.num_train_timesteps - 1 - clipped
            ts = np.linspace(0, top, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        ac = self.alphas_cumprod
        ts, sigmas = sigma_schedule(ac, ts, steps, cfg.use_karras_sigmas)
        self._use_sigmas(ts, sigmas, sigma_min(ac) if cfg.final_sigmas_type == "sigma_min" else 0, device)
        self.num_inference_steps = steps
        self.sample = None
        # as diffusers: an order that does not divide the steps, or a final sigma of 0, forces the
        # lower-order tail (and the config says so from now on)
        if not cfg.lower_order_final and (steps % cfg.solver_order != 0 or cfg.final_sigmas_type == "zero"):
            self._update_config(lower_order_final=True)
        self.order_list = self._orders(steps)

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The x0 prediction; a learned-variance output (variance_type learned*) keeps its eps half."""
        learned = self.config.variance_type in ("learned", "learned_range")
        # diffusers slices model_output[:, :3] here (RGB pixels), which breaks on 4-channel latents
        out, _ = split_variance(model_output, sample, learned)
        return self._x0(out, sample, self._step_index)

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Close the current singlestep group at this call's order (SDE form: draws noise every call)."""
        self._check_ready()
        cfg = self.config
        i = self._index(timestep)
        m = self.convert_model_output(model_output, sample)
        self._push(m)
        sde = cfg.algorithm_type == "sde-dpmsolver++"
        noise = randn(m.shape, generator, device=m.device, dtype=m.dtype) if sde else None
        order = self.order_list[i]
        while self.model_outputs[-order] is None:  # started mid-group (img2img): no earlier outputs
            order -= 1
        if order == 1:
            self.sample = sample.float()
        sig = [self.sigmas[i + 1 - j] for j in range(order + 1)]
        if order == 1:
            x_prev = dpm_first(self.sample, m, sig[1], sig[0], sde, noise)
        elif order == 2:
            x_prev = single_second(self.sample, self.model_outputs, sig, sde, cfg.solver_type, noise)
        else:
            x_prev = single_third(self.sample, self.model_outputs, sig, sde, cfg.solver_type, noise)
        self._step_index = i + 1
        x_prev = x_prev.to(sample.dtype)
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)
