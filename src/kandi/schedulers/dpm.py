"""DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095), ODE and SDE forms, orders 1-3.

Pure updates over a float32 sigma table; the class keeps the last `solver_order` x0 predictions and a
host step counter, so `step` never reads a device tensor back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .common import check_choice, dynamic_threshold
from .euler import SigmaScheduler, exponential_sigmas, karras_sigmas, sigma_to_t
from .noise import randn
from .schedules import check_num_steps, make_betas

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def alpha_sigma(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """VP coefficients for a VE sigma: alpha = 1 / sqrt(1 + sigma^2), sigma_t = sigma * alpha."""
    alpha = 1 / (sigma**2 + 1) ** 0.5
    return alpha, sigma * alpha


def _lam(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a, s = alpha_sigma(sigma)
    return a, s, torch.log(a) - torch.log(s)


def dpm_first(x: Tensor, m: Tensor, s0: Tensor, t: Tensor, sde: bool, noise: Tensor | None) -> Tensor:
    """First-order update (DDIM in the x0 parametrisation), Lu et al. (2022) Eq. 8; SDE adds noise."""
    a_t, sig_t, lam_t = _lam(t)
    _, sig_s, lam_s = _lam(s0)
    h = lam_t - lam_s
    if not sde:
        return sig_t / sig_s * x - a_t * (torch.exp(-h) - 1.0) * m
    return (
        sig_t / sig_s * torch.exp(-h) * x
        + a_t * (1 - torch.exp(-2.0 * h)) * m
        + sig_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
    )


def dpm_second(
    x: Tensor, ms: list[Tensor], sig: list[Tensor], sde: bool, solver: str, noise: Tensor | None
) -> Tensor:
    """Multistep second order, Lu et al. (2022) Algorithm 2; `sig` = [sigma_t, sigma_s0, sigma_s1]."""
    a_t, sig_t, lam_t = _lam(sig[0])
    _, sig_s0, lam_s0 = _lam(sig[1])
    _, _, lam_s1 = _lam(sig[2])
    m0, m1 = ms[-1], ms[-2]
    h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
    d0, d1 = m0, 1.0 / (h_0 / h) * (m0 - m1)
    if not sde:
        base = sig_t / sig_s0 * x - a_t * (torch.exp(-h) - 1.0) * d0
        if solver == "midpoint":
            return base - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
        return base + a_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
    base = sig_t / sig_s0 * torch.exp(-h) * x + a_t * (1 - torch.exp(-2.0 * h)) * d0
    if solver == "midpoint":
        base = base + 0.5 * (a_t * (1 - torch.exp(-2.0 * h))) * d1
    else:
        base = base + a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
    return base + sig_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


def dpm_third(x: Tensor, ms: list[Tensor], sig: list[Tensor], sde: bool, noise: Tensor | None) -> Tensor:
    """Multistep third order; `sig` = [sigma_t, sigma_s0, sigma_s1, sigma_s2]."""
    a_t, sig_t, lam_t = _lam(sig[0])
    _, sig_s0, lam_s0 = _lam(sig[1])
    _, _, lam_s1 = _lam(sig[2])
    _, _, lam_s2 = _lam(sig[3])
    m0, m1, m2 = ms[-1], ms[-2], ms[-3]
    h, h_0, h_1 = lam_t - lam_s0, lam_s0 - lam_s1, lam_s1 - lam_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = 1.0 / r0 * (m0 - m1), 1.0 / r1 * (m1 - m2)
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1)
    if not sde:
        return (
            sig_t / sig_s0 * x
            - a_t * (torch.exp(-h) - 1.0) * m0
            + a_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
            - a_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5) * d2
        )
    return (
        sig_t / sig_s0 * torch.exp(-h) * x
        + a_t * (1.0 - torch.exp(-2.0 * h)) * m0
        + a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
        + a_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5) * d2
        + sig_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
    )


def dpm_timesteps(num_train: int, steps: int, spacing: str, offset: int, last: int) -> np.ndarray:
    """DPM-Solver's integer spacings: N + 1 points with the last dropped (linspace, leading)."""
    steps = check_num_steps(steps, num_train)
    if spacing == "linspace":
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + offset
    if spacing == "trailing":
        return np.arange(last, 0, -num_train / steps).round().copy().astype(np.int64) - 1
    raise ValueError(
        f"timestep_spacing={spacing!r} is not supported; choose one of leading, linspace, trailing"
    )


class DPMSolverMultistepScheduler(SigmaScheduler):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++ and sde-dpmsolver++), as pure updates."""

    init_noise_sigma = 1.0  # type: ignore[assignment]

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
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        check_choice("algorithm_type", algorithm_type, ALGORITHMS)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTIONS)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order={solver_order} is not supported; choose 1, 2 or 3")
        if use_beta_sigmas or use_lu_lambdas or use_flow_sigmas or use_dynamic_shifting:
            raise ValueError(
                "DPMSolverMultistepScheduler supports linear, Karras and exponential sigmas only (not beta, "
                "Lu lambdas, flow sigmas or dynamic shifting)"
            )
        if use_karras_sigmas and use_exponential_sigmas:
            raise ValueError("only one of use_karras_sigmas and use_exponential_sigmas can be True")
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        self._set_tables(betas)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24
        ac = self.alphas_cumprod
        self.lambda_t = torch.log(torch.sqrt(ac)) - torch.log(torch.sqrt(1 - ac))
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.num_inference_steps: int | None = None
        ts = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        self.timesteps = torch.from_numpy(ts)
        self._host_ts = [float(t) for t in ts]
        self.model_outputs: list[Tensor | None] = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
        last = cfg.num_train_timesteps - clipped
        ts = dpm_timesteps(
            cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset, last
        )
        ac = self.alphas_cumprod
        table = np.array(((1 - ac) / ac) ** 0.5)
        if cfg.use_karras_sigmas:
            sigmas = karras_sigmas(np.flip(table).copy(), num_inference_steps, None, None)
            ts = np.array([sigma_to_t(s, np.log(table)) for s in sigmas])
            if cfg.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
        elif cfg.use_exponential_sigmas:  # unrounded: the int64 cast below truncates, as in diffusers
            sigmas = exponential_sigmas(np.flip(table).copy(), num_inference_steps, None, None)
            ts = np.array([sigma_to_t(s, np.log(table)) for s in sigmas])
        else:
            sigmas = np.interp(ts, np.arange(0, len(table)), table)
        last_sigma = ((1 - ac[0]) / ac[0]) ** 0.5 if cfg.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last_sigma]]).astype(np.float32))
        self.timesteps = torch.from_numpy(ts).to(device=device, dtype=torch.int64)
        self._host_ts = [float(t) for t in ts.astype(np.int64)]
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _index(self, timestep: float | Tensor) -> int:
        if self._step_index is None and self._begin_index is None:
            t = float(timestep)
            if t not in self._host_ts:  # diffusers: an unknown timestep means the last step
                self._step_index = len(self._host_ts) - 1
        return super()._index(timestep)

    def scale_model_input(self, sample: Tensor, *args: object, **kwargs: object) -> Tensor:
        """DPM-Solver feeds the model the sample unscaled."""
        return sample

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The x0 prediction DPM-Solver++ works with; a 2C-channel (learned variance) output keeps its eps half."""
        cfg = self.config
        if model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]
        if cfg.prediction_type == "sample":
            x0 = model_output
        else:
            a_t, s_t = alpha_sigma(self.sigmas[self._step_index])
            if cfg.prediction_type == "epsilon":
                x0 = (sample - s_t * model_output) / a_t
            else:
                x0 = a_t * sample - s_t * model_output
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """One multistep update from sigmas[i] to sigmas[i + 1], lowering the order at the ends."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        cfg = self.config
        i = self._index(timestep)
        n = len(self._host_ts)
        final = i == n - 1 and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
        )
        second = i == n - 2 and cfg.lower_order_final and n < 15
        m = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [m]
        x = sample.to(torch.float32)
        sde = cfg.algorithm_type == "sde-dpmsolver++"
        noise = None
        if sde and variance_noise is None:
            noise = randn(m.shape, generator, device=m.device, dtype=torch.float32)
        elif sde:
            noise = variance_noise.to(device=m.device, dtype=torch.float32)
        sig = [self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1], self.sigmas[i - 2]]
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or final:
            x_prev = dpm_first(x, m, sig[1], sig[0], sde, noise)
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second:
            x_prev = dpm_second(x, self.model_outputs, sig[:3], sde, cfg.solver_type, noise)
        else:
            x_prev = dpm_third(x, self.model_outputs, sig, sde, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index = i + 1
        x_prev = x_prev.to(m.dtype)
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: int | Tensor) -> Tensor:
        """alpha * x0 + sigma * noise at the current (or begin) step's sigma, as diffusers' img2img uses it."""
        if self._begin_index is None and self._step_index is None:
            ts = torch.as_tensor(timesteps).reshape(-1).tolist()
            idx = [
                self._host_ts.index(float(t)) if float(t) in self._host_ts else len(self._host_ts) - 1
                for t in ts
            ]
        else:
            start = self._step_index if self._step_index is not None else self._begin_index
            idx = [start] * max(1, torch.as_tensor(timesteps).reshape(-1).shape[0])
        sigma = self.sigmas[idx].flatten().to(device=original_samples.device, dtype=original_samples.dtype)
        sigma = sigma.reshape((-1,) + (1,) * (original_samples.ndim - 1))
        a_t, s_t = alpha_sigma(sigma)
        return a_t * original_samples + s_t * noise
