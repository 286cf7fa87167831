"""Noise schedulers: pure step functions over precomputed tables, plus thin diffusers-shaped classes.

The classes take the same names, arguments and configs as diffusers' (0.42.1) and draw noise in the same
order, so a seed reproduces a diffusers trajectory (DPMSolverSDEScheduler excepted: its Brownian noise is
kandi's own, not torchsde's).
"""

from .base import FrozenConfig, SchedulerOutput
from .common import X0Rule, add_noise, clip_x0, dynamic_threshold, predict_eps, predict_x0
from .ddim import DDIMScheduler, ddim_step
from .ddpm import DDPMScheduler, ddpm_noise_scale, ddpm_step
from .deis import DEISMultistepScheduler
from .dpm import DPMSolverMultistepScheduler
from .dpm_sde import DPMSolverSDEScheduler
from .dpm_single import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from .lcm import LCMScheduler, LCMSchedulerOutput
from .lms import LMSDiscreteScheduler, lms_coefficients
from .noise import randn
from .pndm import PNDMScheduler
from .schedules import (
    alphas_cumprod,
    cosine_betas,
    laplace_betas,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    sigmoid_betas,
    timesteps,
)
from .unclip import UnCLIPScheduler, unclip_noise_scale, unclip_step
from .unipc import UniPCMultistepScheduler

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FrozenConfig",
    "LCMScheduler",
    "LCMSchedulerOutput",
    "PNDMScheduler",
    "DPMSolverSDEScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "SchedulerOutput",
    "UnCLIPScheduler",
    "UniPCMultistepScheduler",
    "X0Rule",
    "add_noise",
    "alphas_cumprod",
    "clip_x0",
    "cosine_betas",
    "ddim_step",
    "ddpm_noise_scale",
    "ddpm_step",
    "dynamic_threshold",
    "laplace_betas",
    "linear_betas",
    "lms_coefficients",
    "make_betas",
    "predict_eps",
    "predict_x0",
    "randn",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
    "sigmoid_betas",
    "timesteps",
    "unclip_noise_scale",
    "unclip_step",
]
