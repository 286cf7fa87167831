"""FlowMatchEulerDiscreteScheduler: tables and steps against diffusers 0.42.1."""

from __future__ import annotations

import pytest
import torch

from kandi.schedulers.flow_match import FlowMatchEulerDiscreteScheduler, euler_step

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("steps", [1, 2, 5, 50])
def test_tables_match_diffusers(shift: float, steps: int) -> None:
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ours = FlowMatchEulerDiscreteScheduler(shift=shift)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)


def test_dynamic_shift_matches_diffusers() -> None:
    ref = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ours = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ref.set_timesteps(10, mu=0.8)
    ours.set_timesteps(10, mu=0.8)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="mu"):
        ours.set_timesteps(10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steps_match_diffusers(dtype: torch.dtype) -> None:
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
    ours = FlowMatchEulerDiscreteScheduler.from_config(ref.config)
    ref.set_timesteps(4)
    ours.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x_ref = x_ours = torch.randn(2, 1, 4, 4, 16, generator=g).to(dtype)
    for t in ref.timesteps:
        v = torch.randn(x_ref.shape, generator=g).to(dtype)
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        x_ours = ours.step(v, t, x_ours).prev_sample
        torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=0)
    assert x_ours.dtype == dtype


def test_euler_solves_a_straight_flow() -> None:
    # x_sigma = sigma * noise + (1 - sigma) * x0 has constant velocity noise - x0: Euler lands on x0 exactly
    x0, noise = torch.randn(3, 5), torch.randn(3, 5)
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(7)
    x = s.scale_noise(x0, s.timesteps[:1].repeat(3), noise)
    torch.testing.assert_close(x, noise, rtol=0, atol=1e-6)  # the first sigma is 1
    for t in s.timesteps:
        x = s.step(noise - x0, t, x).prev_sample
    torch.testing.assert_close(x, x0, rtol=1e-5, atol=1e-5)
    assert torch.equal(euler_step(x0, noise, 0.5, 0.5), x0)


def test_config_round_trip_and_refusals(tmp_path) -> None:
    s = FlowMatchEulerDiscreteScheduler(shift=7.0)
    s.save_pretrained(tmp_path)
    ref = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert ref.config.shift == 7.0
    again = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert again.config.shift == 7.0 and again.shift == 7.0
    for bad in (
        {"use_karras_sigmas": True},
        {"stochastic_sampling": True},
        {"time_shift_type": "x"},
        {"shift": 0},
    ):
        with pytest.raises(ValueError):
            FlowMatchEulerDiscreteScheduler(**bad)
    with pytest.raises(ValueError, match="set_timesteps"):
        FlowMatchEulerDiscreteScheduler().step(torch.zeros(1), torch.tensor(1.0), torch.zeros(1))
    s.set_timesteps(2)
    with pytest.raises(ValueError, match="integer"):
        s.step(torch.zeros(1), 3, torch.zeros(1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
