"""DPM-Solver++ (2S) SDE in sigma space (k-diffusion's `sample_dpmpp_sde`), as diffusers' DPMSolverSDEScheduler.

Each sigma interval takes two model calls: an ancestral DPM-Solver step to the log-midpoint, then one over
the whole interval from the midpoint's x0. Its noise comes from one Brownian path per sample, so the
half-interval and full-interval increments are correlated as the SDE requires.

diffusers draws that path with torchsde's BrownianInterval. kandi has its own seeded Brownian path (no
torchsde at runtime): the same process, but not torchsde's random numbers, so a seed gives a different
(equally valid) image than diffusers + torchsde. Everything else (tables, step maths) matches diffusers.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Generator, Tensor

from .base import SchedulerOutput
from .euler import sigma_to_t
from .ksigmas import (
    KSigmaScheduler,
    doubled,
    sampler_timesteps,
    sigma_kind,
    sigma_x0,
    spaced_sigmas,
)


class BrownianPath:
    """One Brownian motion W on [lo, hi] per seed, sampled lazily and reproducibly.

    W(lo) = 0 and W(hi) ~ N(0, hi - lo); a new point between two known ones is drawn from the Brownian
    bridge between them (outside [lo, hi], as free Brownian motion from the nearest end). The normal draw
    for a point comes from a generator seeded by (seed, the point's float64 bits), so the same queries in
    the same order give the same path.
    """

    def __init__(self, seed: int, lo: float, hi: float, shape: Sequence[int], dtype: torch.dtype) -> None:
        self.seed, self.shape, self.dtype = int(seed), tuple(shape), dtype
        self.ts: list[float] = [lo, hi]
        self.ws: list[Tensor] = [torch.zeros(self.shape, dtype=dtype), self._z(hi) * math.sqrt(hi - lo)]

    def _z(self, t: float) -> Tensor:
        bits = int(np.float64(t).view(np.uint64))
        key = np.random.SeedSequence(entropy=self.seed, spawn_key=(bits,)).generate_state(2, np.uint64)
        gen = torch.Generator().manual_seed(int(key[0]) & (2**63 - 1))
        return torch.randn(self.shape, generator=gen, dtype=self.dtype)

    def __call__(self, t: float) -> Tensor:
        k = bisect.bisect_left(self.ts, t)
        if k < len(self.ts) and self.ts[k] == t:
            return self.ws[k]
        if k == 0 or k == len(self.ts):  # outside the known span: free Brownian motion from its end
            end = 0 if k == 0 else -1
            w = self.ws[end] + self._z(t) * math.sqrt(abs(t - self.ts[end]))
        else:
            a, b = self.ts[k - 1], self.ts[k]
            wa, wb = self.ws[k - 1], self.ws[k]
            mean = wa + (t - a) / (b - a) * (wb - wa)
            w = mean + self._z(t) * math.sqrt((t - a) * (b - t) / (b - a))
        self.ts.insert(k, t)
        self.ws.insert(k, w)
        return w


class BrownianNoise:
    """Unit-variance noise for the step sigma -> sigma_next: (W(sigma_next) - W(sigma)) / sqrt|delta|, per row."""

    def __init__(self, sample: Tensor, lo: float, hi: float, seeds: list[int], batched: bool) -> None:
        shape = sample.shape[1:] if batched else sample.shape
        self.paths = [BrownianPath(s, lo, hi, shape, sample.dtype) for s in seeds]
        self.batched, self.device = batched, sample.device

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        lo, hi = sorted((sigma, sigma_next))
        rows = [(p(hi) - p(lo)) for p in self.paths]
        w = torch.stack(rows) if self.batched else rows[0]
        return (w * (1.0 if sigma_next > sigma else -1.0) / math.sqrt(hi - lo)).to(self.device)


def noise_seeds(config_seed: int | None, generator: Generator | list[Generator] | None, batch: int) -> tuple:
    """(seeds, batched): the config's seed, else one seed drawn from each generator, else a random seed."""
    if config_seed is not None:
        return [int(config_seed)], False
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {batch}: pass one per batch row"
            )
        return [int(torch.randint(0, 2**63 - 1, (), generator=g)) for g in generator], True
    return [int(torch.randint(0, 2**63 - 1, (), generator=generator))], False


def midpoint_timesteps(sigmas: np.ndarray, log_table: np.ndarray) -> np.ndarray:
    """The fractional timestep of each interval's log-midpoint sigma (the second call's timestep)."""
    lam = -np.log(sigmas)
    mids = np.exp(-(lam[:-1] + np.diff(lam) * 0.5))
    return np.array([sigma_to_t(m, log_table) for m in mids])


class DPMSolverSDEScheduler(KSigmaScheduler):
    """diffusers' DPMSolverSDEScheduler (A1111's "DPM++ SDE"), with kandi's own seeded Brownian noise."""

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        noise_sampler_seed: int | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_tables(locals())
        self.noise_sampler_seed = noise_sampler_seed
        self.set_timesteps(num_train_timesteps)  # diffusers' constructor leaves the full schedule set

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        kind = sigma_kind(cfg.use_karras_sigmas, cfg.use_exponential_sigmas, cfg.use_beta_sigmas)
        ts = sampler_timesteps(cfg, num_inference_steps, np.float64)  # diffusers spaces these in float64
        sigmas, ts, log_table = spaced_sigmas(self.alphas_cumprod, ts, kind)
        mids = torch.from_numpy(midpoint_timesteps(sigmas, log_table))
        table = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.sigmas = torch.cat([doubled(table[:-1]), table[-1:]])
        ts = doubled(torch.from_numpy(ts))
        ts[1::2] = mids
        self.num_inference_steps = num_inference_steps
        self._set_schedule(ts.to(device=device))
        self.sample: Tensor | None = None
        self.mid_point_sigma: Tensor | None = None
        self.noise_sampler: BrownianNoise | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """Divide by sqrt(sigma^2 + 1) at the interval's start, or at its midpoint on the second call."""
        i = self._index(timestep)
        sigma = self.sigmas[i] if self.state_in_first_order else self.mid_point_sigma
        return sample / ((sigma**2 + 1) ** 0.5)

    def _noise(self, sample: Tensor, generator: Generator | list[Generator] | None) -> BrownianNoise:
        if self.noise_sampler is None:
            positive = self.sigmas[self.sigmas > 0]
            seeds, batched = noise_seeds(self.noise_sampler_seed, generator, sample.shape[0])
            self.noise_sampler = BrownianNoise(
                sample, float(positive.min()), float(self.sigmas.max()), seeds, batched
            )
        return self.noise_sampler

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        return_dict: bool = True,
        s_noise: float = 1.0,
        generator: Generator | list[Generator] | None = None,
    ) -> SchedulerOutput | tuple[Tensor, Tensor]:
        """An ancestral DPM-Solver++ step to the midpoint (first call), then over the interval (second)."""
        i = self._index(timestep)
        noise = self._noise(sample, generator)
        first = self.state_in_first_order
        sigma, sigma_next = (
            (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        )
        t, t_next = -sigma.log(), -sigma_next.log()  # t = -log sigma: the half log-SNR
        t_mid = t + (t_next - t) * 0.5
        x0 = sigma_x0(sample, model_output, sigma if first else (-t_mid).exp(), self.config.prediction_type)
        if sigma_next == 0:  # the last interval: one Euler step to sigma 0
            x_prev = sample + (sample - x0) / sigma * (sigma_next - sigma)
        else:
            x_prev = self._ancestral(sample, x0, t, t_mid if first else t_next, noise, s_noise, first)
        self._step_index = i + 1
        return SchedulerOutput(x_prev, x0) if return_dict else (x_prev, x0)

    def _ancestral(
        self,
        sample: Tensor,
        x0: Tensor,
        t: Tensor,
        t_to: Tensor,
        noise: BrownianNoise,
        s_noise: float,
        first: bool,
    ) -> Tensor:
        """DPM-Solver++(1) from e^-t to sigma_down, plus Brownian noise of std sigma_up (k-diffusion)."""
        x = sample if first else self.sample
        s_from, s_to = (-t).exp(), (-t_to).exp()
        s_up = torch.minimum(s_to, (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5)
        s_down = (s_to**2 - s_up**2) ** 0.5
        t_down = -s_down.log()
        x_prev = (-t_down).exp() / (-t).exp() * x - (t - t_down).expm1() * x0
        x_prev = x_prev + noise(float(s_from), float(s_to)).to(x_prev.dtype) * s_noise * s_up
        self.sample, self.mid_point_sigma = (sample, s_to) if first else (None, None)
        return x_prev
