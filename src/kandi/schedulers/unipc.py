"""UniPC (Zhao et al. 2023, arXiv:2302.04867): the B(h) predictor UniP and corrector UniC, any order.

`unipc_update` is the one pure update both use: the predictor extrapolates from past outputs, the
corrector adds the new output at the point just reached. The class keeps the last `solver_order`
converted outputs and the sample before the last prediction, as diffusers' UniPCMultistepScheduler does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .common import check_choice
from .dpm import _lam, alpha_sigma, dpm_timesteps
from .solver import VPSolverScheduler, check_channels, check_vp_options, sigma_min, sigma_schedule

SOLVER_TYPES = ("bh1", "bh2")
_DPM_SOLVER_TYPES = ("midpoint", "heun", "logrho")  # diffusers maps these to bh2


def _coefficients(
    h: Tensor, rks: Tensor, order: int, solver_type: str, predict_x0: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """h*phi_1(hh), B(h), and the Vandermonde system R rho = b of Zhao et al. (2023) Eq. 8 / Alg. 1."""
    hh = -h if predict_x0 else h
    h_phi_1 = torch.expm1(hh)  # e^hh - 1
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if solver_type == "bh1" else torch.expm1(hh)
    factorial, rows, b = 1, [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.stack(b)


def unipc_update(
    x: Tensor,
    ms: list[Tensor],
    sig: list[Tensor],
    order: int,
    solver_type: str,
    predict_x0: bool,
    model_t: Tensor | None = None,
) -> Tensor:
    """One UniP step (model_t None) or UniC correction (model_t = the output at sig[0]) from sig[1] to sig[0].

    `ms[-1]` is the converted output at sig[1], `ms[-1 - k]` the one at sig[1 + k] (k < order).
    """
    a_t, s_t, lam_t = _lam(sig[0])
    a_s0, s_s0, lam_s0 = _lam(sig[1])
    h = lam_t - lam_s0
    m0 = ms[-1]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_lam(sig[1 + k])[2] - lam_s0) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)
    rks.append(torch.ones(()))
    h_phi_1, b_h, r, b = _coefficients(h, torch.stack(rks), order, solver_type, predict_x0)
    if predict_x0:
        base, scale = s_t / s_s0 * x - a_t * h_phi_1 * m0, a_t * b_h
    else:
        base, scale = a_t / a_s0 * x - s_t * h_phi_1 * m0, s_t * b_h
    if model_t is None:  # predictor: rho from the first order - 1 equations (0.5 at order 2)
        if not d1s:
            return base
        rhos = [torch.tensor(0.5)] if order == 2 else list(torch.linalg.solve(r[:-1, :-1], b[:-1]))
        return base - scale * sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = [torch.tensor(0.5)] if order == 1 else list(torch.linalg.solve(r, b))
    corr = sum(rho * d for rho, d in zip(rhos[:-1], d1s))
    return base - scale * (corr + rhos[-1] * (model_t - m0))


class UniPCMultistepScheduler(VPSolverScheduler):
    """diffusers' UniPCMultistepScheduler (bh1/bh2, x0 or eps form, linear or Karras sigmas)."""

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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = (),
        solver_p: None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
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
            shift_terminal=shift_terminal,
        )
        if solver_type in _DPM_SOLVER_TYPES:
            solver_type = "bh2"
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        if isinstance(solver_order, bool) or not isinstance(solver_order, int) or solver_order < 1:
            raise ValueError(f"solver_order must be a positive int, got {solver_order!r}")
        if not predict_x0 and final_sigmas_type == "zero":  # diffusers computes 0 * inf = NaN there
            raise ValueError(
                "predict_x0=False (the noise form) cannot step to sigma 0; set final_sigmas_type='sigma_min'"
            )
        if solver_p is not None:
            raise ValueError("solver_p (another scheduler as UniPC's predictor) is not supported; pass None")
        self._register({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self._init_tables(dict(self.config), rescale_betas_zero_snr)
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = None
        self.timestep_list: list[float | None] = [None] * solver_order
        self.last_sample: Tensor | None = None
        self.this_order = 0

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        n = cfg.num_train_timesteps
        ts = dpm_timesteps(n, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset, n)
        ac = self.alphas_cumprod
        karras = cfg.use_karras_sigmas
        ts, sigmas = sigma_schedule(ac, ts, num_inference_steps, karras, cfg.sigma_min, cfg.sigma_max)
        # the Karras schedule ends at its own smallest sigma, the linear one at the table's
        low = sigmas[-1] if karras else sigma_min(ac)
        self._use_sigmas(ts, sigmas, low if cfg.final_sigmas_type == "sigma_min" else 0, device)
        self.timestep_list = [None] * cfg.solver_order
        self.last_sample = None

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """x0 (predict_x0) or eps at the current step, as UniPC integrates it."""
        check_channels(type(self).__name__, model_output, sample)
        i = self._step_index
        if self.predict_x0:
            return self._x0(model_output, sample, i)
        # the noise form: eps straight from the output (diffusers thresholds only in the x0 form)
        out, x, kind = model_output.float(), sample.float(), self.config.prediction_type
        a_t, s_t = alpha_sigma(self.sigmas[i])
        if kind == "epsilon":
            return out
        return (x - a_t * out) / s_t if kind == "sample" else a_t * out + s_t * x

    def _sig(self, top: int, order: int) -> list[Tensor]:
        """[sigmas[top], sigmas[top - 1], ...]: the target then the points the update reads."""
        return [self.sigmas[top - j] for j in range(order + 1)]

    def _correct(self, x: Tensor, m: Tensor, i: int) -> Tensor:
        """UniC: refine the sample the last prediction reached with its model output m (if enabled)."""
        if i == 0 or (i - 1) in self.disable_corrector or self.last_sample is None:
            return x
        order, cfg = self.this_order, self.config
        sig = self._sig(i, order)
        return unipc_update(
            self.last_sample, self.model_outputs, sig, order, cfg.solver_type, self.predict_x0, m
        )

    def _order(self, i: int) -> int:
        """The predictor's order at step i: lowered at the end of the run and during the warm-up."""
        cfg, n = self.config, len(self._host_ts)
        order = min(cfg.solver_order, n - i) if cfg.lower_order_final else cfg.solver_order
        if i == n - 1 and cfg.final_sigmas_type == "zero":
            # higher orders divide by h = inf on the step to sigma = 0 (diffusers returns inf there)
            order = 1
        return min(order, self.lower_order_nums + 1)  # warm-up: no history yet

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Correct the sample with the new output (UniC), then predict the next one (UniP).

        `generator` is accepted for drop-in use and unused: UniPC draws no noise.
        """
        self._check_ready()
        cfg = self.config
        i = self._index(timestep)
        m = self.convert_model_output(model_output, sample)
        x = self._correct(sample.float(), m, i)
        self._push(m)
        self.timestep_list = self.timestep_list[1:] + [float(self._host_ts[i])]
        self.this_order = self._order(i)
        self.last_sample = x
        x_prev = unipc_update(
            x,
            self.model_outputs,
            self._sig(i + 1, self.this_order),
            self.this_order,
            cfg.solver_type,
            self.predict_x0,
        )
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index = i + 1
        x_prev = x_prev.to(sample.dtype)
        return SchedulerOutput(x_prev) if return_dict else (x_prev,)
