"""Sigma-space samplers against diffusers 0.42.1: tables and step outputs under the same generator draws."""

import json
from pathlib import Path

import diffusers
import pytest
import torch

from kandi.schedulers.dpm import DPMSolverMultistepScheduler
from kandi.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

CONFIGS = Path(__file__).parent / "data" / "configs"  # the official configs, copied from shared/
NAMES = ["k21.scheduler.json", "k21.ddpm_scheduler.json", "k22-decoder.scheduler.json", "k3.scheduler.json"]


def config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25, 50])
@pytest.mark.parametrize("spacing", [None, "leading", "trailing", "linspace"])
def test_euler_ancestral_matches_diffusers(name: str, steps: int, spacing: str | None):
    cfg = config(name) | ({"timestep_spacing": spacing} if spacing else {})
    ours = EulerAncestralDiscreteScheduler.from_config(cfg)
    ref = diffusers.EulerAncestralDiscreteScheduler.from_config(cfg)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    torch.testing.assert_close(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(ref.init_noise_sigma))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
    xa, xb = x.clone(), x.clone()
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        ia, ib = ours.scale_model_input(xa, t), ref.scale_model_input(xb, t)
        torch.testing.assert_close(ia, ib)
        out = torch.tanh(ib) * 0.9  # a fixed smooth "model"
        xa = ours.step(out, t, xa, generator=ga).prev_sample
        xb = ref.step(out, t, xb, generator=gb).prev_sample
        assert torch.isfinite(xa).all()
        if not torch.isfinite(xb).all():
            # diffusers' sigma_down rounds to sqrt(negative) at sigma ~ 2e4 (k3's cosine table); kandi clamps
            break
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-5)


def test_euler_ancestral_rejects_integer_index():
    s = EulerAncestralDiscreteScheduler()
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="integer index"):
        s.step(torch.zeros(1), 3, torch.zeros(1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25, 50])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"use_karras_sigmas": True},
        {"timestep_spacing": "trailing"},
        {"final_sigmas_type": "sigma_min", "timestep_spacing": "leading"},
    ],
)
def test_euler_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    ours = EulerDiscreteScheduler.from_config(cfg)
    ref = diffusers.EulerDiscreteScheduler.from_config(cfg)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
    xa, xb = x.clone(), x.clone()
    for t in ref.timesteps:
        ia, ib = ours.scale_model_input(xa, t), ref.scale_model_input(xb, t)
        torch.testing.assert_close(ia, ib)
        out = torch.tanh(ib) * 0.9
        xa = ours.step(out, t, xa).prev_sample
        xb = ref.step(out, t, xb).prev_sample
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-4)


def test_euler_img2img_begin_index_and_add_noise():
    cfg = config("k22-decoder.scheduler.json")
    ours, ref = EulerDiscreteScheduler.from_config(cfg), diffusers.EulerDiscreteScheduler.from_config(cfg)
    for s in (ours, ref):
        s.set_timesteps(10)
        s.set_begin_index(4)
    x, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = ref.timesteps[4:5]
    torch.testing.assert_close(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    torch.testing.assert_close(ours.scale_model_input(x, t), ref.scale_model_input(x, t))


DPM_OPTIONS = [
    {},
    {"use_karras_sigmas": True},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
    {"solver_type": "heun", "lower_order_final": False},
    {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"},
    {"euler_at_final": True, "timestep_spacing": "leading"},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25, 50])
@pytest.mark.parametrize("extra", DPM_OPTIONS)
def test_dpm_multistep_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    cfg.pop(
        "variance_type", None
    )  # diffusers slices 3 channels for learned variance (see the pipeline tests)
    ours = DPMSolverMultistepScheduler.from_config(cfg)
    ref = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    xa, xb = x.clone(), x.clone()
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    repeated = len(set(ref.timesteps.tolist())) < len(ref.timesteps)
    if repeated and ref.timesteps[0] == ref.timesteps[1]:
        # diffusers starts at the second copy of a repeated first timestep and runs off its table
        with pytest.raises(IndexError):
            for t in ref.timesteps:
                xb = ref.step(torch.tanh(xb), t, xb, generator=gb).prev_sample
        ref.set_timesteps(steps)
        ref.set_begin_index(0)
        xb, gb = x.clone(), torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        out = torch.tanh(xb) * 0.9
        xa = ours.step(out, t, xa, generator=ga).prev_sample
        xb = ref.step(out, t, xb, generator=gb).prev_sample
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-4)


def test_dpm_learned_variance_output_keeps_the_eps_half():
    cfg = config("k21.ddpm_scheduler.json")
    ours = DPMSolverMultistepScheduler.from_config(cfg)
    ours.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8)
    eps, var = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    a = ours.step(torch.cat([eps, var], 1), ours.timesteps[0], x).prev_sample
    ours.set_timesteps(5)
    b = ours.step(eps, ours.timesteps[0], x).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
