"""Samplers on the Kandinsky 2.2 decoder: equal to diffusers where its loop is right (DPM-Solver),
equal to a correct loop over diffusers' own UNet and scheduler where it is not (Euler, Euler a)."""

from __future__ import annotations

import diffusers
import pytest
import torch

import kandi
from kandi.schedulers.names import make_sampler

SMALL = {"height": 32, "width": 32}
DIFFUSERS_CLASS = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipes(k22_repos):
    d = diffusers.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    k = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    for p in (d, k):
        p.set_progress_bar_config(disable=True)
    emb = torch.randn(2, d.unet.config.encoder_hid_dim, generator=gen(5))
    return d, k, emb[:1], emb[1:]


def swap(d, k, name: str):
    cls, extra = DIFFUSERS_CLASS[name]
    d.scheduler = getattr(diffusers, cls).from_config(d.scheduler.config, **extra)
    k.scheduler = make_sampler(name, k.scheduler.config)


def correct_loop(
    d, emb, neg, steps: int, generator: torch.Generator, shape, guidance: float = 4.0
) -> torch.Tensor:
    """The Kandinsky 2.2 decoder loop with scale_model_input, over diffusers' UNet and scheduler."""
    s, unet = d.scheduler, d.unet
    s.set_timesteps(steps)
    c = unet.config.in_channels
    latents = torch.randn(shape, generator=generator) * s.init_noise_sigma
    cond = torch.cat([neg, emb])
    for t in s.timesteps:
        x = s.scale_model_input(torch.cat([latents] * 2), t)
        out = unet(sample=x, timestep=t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": cond})
        u, g = out.sample[:, :c].chunk(2)
        latents = s.step(u + guidance * (g - u), t, latents, generator=generator).prev_sample
    return latents


@pytest.mark.parametrize("name", ["DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_dpm_solver_equals_diffusers_pipeline(pipes, name, steps):
    d, k, emb, neg = pipes
    swap(d, k, name)
    kw = {**SMALL, "num_inference_steps": steps, "output_type": "latent"}
    a = d(image_embeds=emb, negative_image_embeds=neg, generator=gen(1), **kw).images
    b = k(image_embeds=emb, negative_image_embeds=neg, generator=gen(1), **kw).images
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["Euler", "Euler a"])
def test_euler_equals_a_correct_loop_and_diffusers_is_wrong(pipes, name):
    d, k, emb, neg = pipes
    swap(d, k, name)
    kw = {**SMALL, "num_inference_steps": 5, "output_type": "latent"}
    ours = k(image_embeds=emb, negative_image_embeds=neg, generator=gen(1), **kw).images
    ref = correct_loop(d, emb, neg, 5, gen(1), ours.shape)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    swap(d, k, name)
    broken = d(image_embeds=emb, negative_image_embeds=neg, generator=gen(1), **kw).images
    # diffusers never calls scale_model_input: the UNet sees inputs ~sigma_max times too large
    assert (broken - ref).abs().max() > 1e-2
