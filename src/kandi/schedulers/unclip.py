"""The karlo / UnCLIP variant of DDPM used by the Kandinsky 2.x priors: explicit strided steps."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SchedulerBase, SchedulerOutput
from .common import X0Rule, alpha_bar, check_choice, check_timestep, clip_x0, predict_x0, split_variance
from .noise import Generator, randn
from .schedules import cosine_betas, timesteps

VARIANCE_TYPES = ("fixed_small_log", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample")
ONE = torch.tensor(1.0)  # alpha_bar past the end of the chain


def unclip_noise_scale(
    beta: Tensor, b_t: Tensor, b_prev: Tensor, variance_type: str, var_pred: Tensor | None = None
) -> Tensor:
    """Std of p(x_{t-1} | x_t), Nichol & Dhariwal (2021) Eq. 15 for learned_range."""
    # clamped before the log: it is 0 when stepping straight to the end of the chain (t_prev < 0)
    log_var = torch.log(torch.clamp(b_prev / b_t * beta, min=1e-20))
    if variance_type == "fixed_small_log":
        return torch.exp(0.5 * log_var)
    if variance_type == "learned_range":
        if var_pred is None:
            raise ValueError(
                "variance_type='learned_range' needs a model output with 2x the sample's channels"
            )
        frac = (var_pred + 1) / 2
        return (0.5 * (frac * beta.log() + (1 - frac) * log_var)).exp()
    raise ValueError(f"variance_type={variance_type!r} is not supported; choose one of {VARIANCE_TYPES}")


def unclip_step(
    x: Tensor,
    out: Tensor,
    t: int,
    t_prev: int,
    ac: Tensor,
    betas: Tensor,
    rule: X0Rule,
    variance_type: str = "fixed_small_log",
    var_pred: Tensor | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Posterior step t -> t_prev, Ho et al. (2020) Eq. 7 with the step's beta re-derived when strided.

    Unlike DDPM, a unit step uses the trained beta_t itself. Returns (x_prev, x0).
    """
    a_t, a_prev = ac[t], alpha_bar(ac, t_prev, ONE)
    b_t, b_prev = 1 - a_t, 1 - a_prev
    beta = betas[t] if t_prev == t - 1 else 1 - a_t / a_prev
    alpha = 1.0 - betas[t] if t_prev == t - 1 else 1 - beta
    x0 = clip_x0(predict_x0(x, out, a_t, rule.prediction_type), rule)
    mean = (a_prev ** (0.5) * beta) / b_t * x0 + alpha ** (0.5) * b_prev / b_t * x
    if noise is None:
        return mean, x0
    return mean + unclip_noise_scale(beta, b_t, b_prev, variance_type, var_pred) * noise, x0


class UnCLIPScheduler(SchedulerBase):
    """diffusers' UnCLIPScheduler API (0.42.1) over `unclip_step`; same arguments, defaults and seeds.

    One inference step is allowed (diffusers divides by zero): the schedule is [T - 1], and passing
    prev_timestep=-1 steps from pure noise straight to the x0 prediction.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: str = "fixed_small_log",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        beta_schedule: str = "squaredcos_cap_v2",
    ):
        check_choice("beta_schedule", beta_schedule, ("squaredcos_cap_v2",))
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self._register(
            {
                "num_train_timesteps": num_train_timesteps,
                "variance_type": variance_type,
                "clip_sample": clip_sample,
                "clip_sample_range": clip_sample_range,
                "prediction_type": prediction_type,
                "beta_schedule": beta_schedule,
            }
        )
        self._set_tables(cosine_betas(num_train_timesteps))
        self.rule = X0Rule(prediction_type, clip_sample, clip_sample_range)
        self.variance_type = variance_type
        self.num_inference_steps: int | None = None
        self._reset_timesteps()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """round(i * (T - 1) / (N - 1)) for i = N-1 .. 0, both ends included; [T - 1] for one step."""
        ts = timesteps(self.config.num_train_timesteps, num_inference_steps, "unclip")
        self.num_inference_steps = len(ts)
        self._use_schedule(ts, device)

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        prev_timestep: int | Tensor | None = None,
        generator: Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """One step from `timestep` to `prev_timestep` (default t - 1; negative = end of the chain)."""
        t = int(timestep)  # host reads of device timesteps happen here only
        t_prev = t - 1 if prev_timestep is None else int(prev_timestep)
        check_timestep(t, self.config.num_train_timesteps)
        if t_prev >= t:
            raise ValueError(f"prev_timestep={t_prev} must be smaller than timestep={t}")
        out, var_pred = split_variance(model_output, sample, self.variance_type == "learned_range")
        noise = randn(out.shape, generator, device=out.device, dtype=out.dtype) if t > 0 else None
        x_prev, x0 = unclip_step(
            sample,
            out,
            t,
            t_prev,
            self.alphas_cumprod,
            self.betas,
            self.rule,
            self.variance_type,
            var_pred,
            noise,
        )
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)
