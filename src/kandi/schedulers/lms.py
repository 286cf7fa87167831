"""Linear multistep (LMS) in sigma space (k-diffusion's `sample_lms`), as diffusers' LMSDiscreteScheduler.

The step integrates the Lagrange interpolant of the last `order` derivatives over [sigma_i, sigma_{i+1}].
diffusers integrates each Lagrange basis polynomial with scipy's adaptive quadrature; the basis is a
polynomial of degree order - 1, so Gauss-Legendre quadrature with `order` nodes is exact for it (exact
up to 2 * order - 1) and needs no scipy. It evaluates the basis in product form, so it stays accurate at
Kandinsky 3's sigmas of ~2e4, where expanding into monomials would lose digits to cancellation.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .ksigmas import (
    KSigmaScheduler,
    sampler_timesteps,
    sigma_kind,
    sigma_x0,
    spaced_sigmas,
)

PREDICTIONS = ("epsilon", "v_prediction", "sample")


@lru_cache(maxsize=8)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """The weights of the derivatives at steps i, i - 1, ..., i - order + 1 for the step sigma_i -> sigma_{i+1}.

    Weight j is the integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial that is 1 at
    sigma_{i-j} and 0 at the other order - 1 nodes (float64 throughout).
    """
    if not 1 <= order <= i + 1:
        raise ValueError(f"LMS order {order} needs 1 <= order <= step index + 1 = {i + 1}")
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    nodes = [float(sigmas[i - k]) for k in range(order)]
    x, w = _gauss_legendre(order)
    tau = (hi - lo) / 2 * x + (hi + lo) / 2  # the Gauss points mapped onto [lo, hi]
    coeffs = []
    for j in range(order):
        basis = np.ones_like(tau)
        for k in range(order):
            if k != j:
                basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
        coeffs.append(float((hi - lo) / 2 * np.dot(w, basis)))
    return coeffs


class LMSDiscreteScheduler(KSigmaScheduler):
    """diffusers' LMSDiscreteScheduler: linear, Karras or exponential sigmas; step order 4 by default."""

    PREDICTIONS = PREDICTIONS

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_tables(locals())
        self.is_scale_input_called = False
        self.set_timesteps(num_train_timesteps)  # diffusers' constructor leaves the full schedule set

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        kind = sigma_kind(cfg.use_karras_sigmas, cfg.use_exponential_sigmas, cfg.use_beta_sigmas)
        sigmas, ts, _ = spaced_sigmas(self.alphas_cumprod, sampler_timesteps(cfg, num_inference_steps), kind)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self._host_sigmas = self.sigmas.numpy().astype(np.float64)  # the coefficients never read a device
        self.num_inference_steps = len(ts)
        self._set_schedule(torch.from_numpy(ts).to(device=device, dtype=torch.float32))
        self.derivatives: list[Tensor] = []

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        self.is_scale_input_called = True
        return super().scale_model_input(sample, timestep)

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """diffusers' per-weight accessor: weight `current_order` of an order-`order` step at index t."""
        return lms_coefficients(self._host_sigmas, t, order)[current_order]

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        order: int = 4,
        return_dict: bool = True,
        generator: Generator | None = None,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """x + sum_j c_j d_{i-j}: the last `order` derivatives (fewer at the start) weighted by LMS."""
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive int, got {order!r}")
        if not self.is_scale_input_called:
            warnings.warn(
                "call scale_model_input before step: LMS expects the model to see the scaled sample",
                stacklevel=2,
            )
        i = self._index(timestep)
        sigma = self.sigmas[i]
        x0 = sigma_x0(sample, model_output, sigma, self.config.prediction_type)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        coeffs = lms_coefficients(self._host_sigmas, i, min(i + 1, order))
        x_prev = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index = i + 1
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)
