"""kandi.schedulers against diffusers 0.42.1 (the oracle): tables, timesteps, whole trajectories, configs."""

from __future__ import annotations

import copy
import json
import math
import pickle
import sys
import types
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

import kandi.schedulers as ks

CONFIG_DIR = Path(__file__).parent / "data" / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.scheduler.json")) + [CONFIG_DIR / "k21.ddpm_scheduler.json"]
STEP_COUNTS = (1, 2, 3, 25, 50, 100)
ATOL = 1e-6
LATENTS = (2, 4, 8, 8)  # (B, C, H, W) decoder latents
EMBEDS = (2, 32)  # (B, D) prior image embeddings


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def build(cfg: dict, **overrides):
    """The same config through ours and through diffusers."""
    name = cfg["_class_name"]
    return getattr(ks, name).from_config(cfg, **overrides), getattr(diffusers, name).from_config(
        cfg, **overrides
    )


def learned_variance(cfg) -> bool:
    return cfg.get("variance_type") in ("learned", "learned_range")


def fake_model(x: torch.Tensor, t: int, learned: bool) -> torch.Tensor:
    """A deterministic stand-in for the UNet/prior: depends on t, the sample and the channel."""
    phase = torch.arange(x.shape[1], dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.ndim - 2)))
    out = 1.5 * torch.tanh(x) * math.cos(t / 150) + torch.sin(phase + t / 70)
    if not learned:
        return out
    # variance half in (0.1, 0.9): valid both as a variance ("learned") and as a [-1, 1] fraction
    return torch.cat([out, 0.5 + 0.4 * torch.tanh(x - math.sin(t / 90))], dim=1)


def prior_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """x0-predicting prior stand-in; reaches past clip_sample_range=10 so clipping is exercised."""
    return 12 * torch.tanh(x + math.cos(t / 100)) + torch.linspace(-1, 1, x.shape[1], device=x.device)


def step_kwargs(kind: str, ts: list[int], i: int, extra: dict) -> dict:
    if kind == "UnCLIPScheduler":  # as the Kandinsky prior pipeline: next timestep, None on the last
        return {"prev_timestep": ts[i + 1] if i + 1 < len(ts) else None, **extra}
    return dict(extra)


def assert_trajectories_match(
    ours, ref, x: torch.Tensor, model, step_extra: dict | None = None
) -> torch.Tensor:
    """Run both loops side by side, each with its own seed-0 generator; fail at the first diverging step."""
    kind = type(ref).__name__
    ts = ref.timesteps.tolist()
    assert ours.timesteps.tolist() == ts
    assert ours.timesteps.dtype == torch.int64
    g_ours, g_ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x_ours, x_ref = x.clone(), x.clone()
    for i, t in enumerate(ts):
        kw = step_kwargs(kind, ts, i, step_extra or {})
        a = ours.step(model(x_ours, t), ours.timesteps[i], x_ours, generator=g_ours, **kw)
        b = ref.step(model(x_ref, t), ref.timesteps[i], x_ref, generator=g_ref, **kw)
        for name in ("prev_sample", "pred_original_sample"):
            got, want = getattr(a, name), getattr(b, name)
            err = (got - want).abs().max().item()
            assert err <= ATOL, f"{kind}: {name} diverges at step {i} (t={t}) of {len(ts)}: max err {err:.3g}"
        x_ours, x_ref = a.prev_sample, b.prev_sample
    assert torch.isfinite(x_ours).all()
    # the same number of draws: noise only where diffusers draws it, so later draws stay in sync
    assert torch.equal(g_ours.get_state(), g_ref.get_state())
    return x_ours


# ---------------------------------------------------------------- the official Kandinsky configs


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_official_config_trajectories(path: Path, steps: int):
    cfg = load(path)
    ours, ref = build(cfg)
    assert torch.equal(ours.betas, ref.betas) and torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    if cfg["_class_name"] == "UnCLIPScheduler":
        x = torch.randn(EMBEDS, generator=torch.Generator().manual_seed(1))
        if steps == 1:
            with pytest.raises(ZeroDivisionError):
                ref.set_timesteps(1)
            check_unclip_one_step(ours, x)
            return
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert_trajectories_match(ours, ref, x, prior_model)
    else:
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        x = torch.randn(LATENTS, generator=torch.Generator().manual_seed(1))
        learned = learned_variance(cfg)
        assert_trajectories_match(ours, ref, x, lambda x, t: fake_model(x, t, learned))


def check_unclip_one_step(ours, x: torch.Tensor) -> None:
    """One prior step: from pure noise at T-1 straight to the (clipped) x0 prediction."""
    ours.set_timesteps(1)
    assert ours.timesteps.tolist() == [ours.config.num_train_timesteps - 1]
    t = int(ours.timesteps[0])
    pred = prior_model(x, t)
    out = ours.step(pred, t, x, prev_timestep=-1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.prev_sample).all()
    limit = ours.config.clip_sample_range
    torch.testing.assert_close(out.pred_original_sample, pred.clamp(-limit, limit), rtol=0, atol=0)
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample, rtol=0, atol=ATOL)


# ---------------------------------------------------------------- every option against diffusers

DDPM_CASES = [
    *[
        {"prediction_type": p, "clip_sample": c}
        for p in ("epsilon", "sample", "v_prediction")
        for c in (False, True)
    ],
    {"clip_sample": True, "clip_sample_range": 1.7},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.6},
    {"thresholding": True, "prediction_type": "v_prediction", "sample_max_value": 3.0},
    *[
        {"variance_type": v}
        for v in ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")
    ],
    {"variance_type": "learned_range", "thresholding": True},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace", "steps_offset": 1},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "sigmoid"},
    {"beta_schedule": "laplace", "clip_sample": False},
    {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist()},
]

DDIM_CASES = [
    *[
        {"prediction_type": p, "clip_sample": c}
        for p in ("epsilon", "sample", "v_prediction")
        for c in (False, True)
    ],
    {"clip_sample": True, "clip_sample_range": 1.7},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.6},
    {"set_alpha_to_one": False, "steps_offset": 1},
    {"set_alpha_to_one": True},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False},
]
DDIM_STEP_OPTIONS = [
    {"eta": 0.0},
    {"eta": 0.5},
    {"eta": 1.0, "use_clipped_model_output": True},
]

UNCLIP_CASES = [
    {"prediction_type": "epsilon", "clip_sample": True},
    {"prediction_type": "epsilon", "clip_sample": False},
    {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 10.0},
    {"prediction_type": "sample", "clip_sample": False},
    {"variance_type": "learned_range", "prediction_type": "epsilon"},
]


@pytest.mark.parametrize("steps", (1, 7, 25))
@pytest.mark.parametrize("options", DDPM_CASES, ids=str)
def test_ddpm_options(options: dict, steps: int):
    ours, ref = ks.DDPMScheduler(**options), diffusers.DDPMScheduler(**options)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    learned = options.get("variance_type") in ("learned", "learned_range")
    x = torch.randn(LATENTS, generator=torch.Generator().manual_seed(2))
    assert_trajectories_match(ours, ref, x, lambda x, t: fake_model(x, t, learned))


@pytest.mark.parametrize("step_options", DDIM_STEP_OPTIONS, ids=str)
@pytest.mark.parametrize("options", DDIM_CASES, ids=str)
def test_ddim_options(options: dict, step_options: dict):
    if options.get("rescale_betas_zero_snr") and step_options["eta"] == 1.0:
        pytest.skip("diffusers returns NaN here: see test_ddim_zero_snr_eta_one_stays_finite")
    ours, ref = ks.DDIMScheduler(**options), diffusers.DDIMScheduler(**options)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x = torch.randn(LATENTS, generator=torch.Generator().manual_seed(3))
    assert_trajectories_match(ours, ref, x, lambda x, t: fake_model(x, t, False), step_options)


def test_ddim_zero_snr_eta_one_stays_finite():
    """At eta=1 on a zero-SNR schedule 1 - a_prev - sigma^2 can round below 0 (diffusers may return NaN there,
    depending on the CPU's rounding); kandi clamps and stays finite."""
    options = {
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
    }
    ours = ks.DDIMScheduler(**options)
    ours.set_timesteps(10)
    x, out = torch.randn(LATENTS), fake_model(torch.randn(LATENTS), 999, False)
    a = ours.step(out, 999, x, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(a.prev_sample).all()
    # the direction term is exactly 0 there: x_prev = sqrt(a_prev) x0 + sigma * noise
    noise = torch.randn(LATENTS, generator=torch.Generator().manual_seed(0))
    a_prev = ours.alphas_cumprod[899]
    torch.testing.assert_close(
        a.prev_sample, a_prev.sqrt() * a.pred_original_sample + (1 - a_prev).sqrt() * noise
    )


def test_ddim_variance_noise():
    ours, ref = ks.DDIMScheduler(), diffusers.DDIMScheduler()
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    x = torch.randn(LATENTS)
    for t in ref.timesteps.tolist():
        noise, out = torch.randn(LATENTS), fake_model(x, t, False)
        a = ours.step(out, t, x, eta=0.7, variance_noise=noise).prev_sample
        b = ref.step(out, t, x, eta=0.7, variance_noise=noise).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
        x = a


@pytest.mark.parametrize("steps", (2, 5, 25))
@pytest.mark.parametrize("options", UNCLIP_CASES, ids=str)
def test_unclip_options(options: dict, steps: int):
    ours, ref = ks.UnCLIPScheduler(**options), diffusers.UnCLIPScheduler(**options)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    learned = options.get("variance_type") == "learned_range"
    x = torch.randn(LATENTS, generator=torch.Generator().manual_seed(4))
    assert_trajectories_match(ours, ref, x, lambda x, t: fake_model(x, t, learned))


def test_unclip_default_prev_timestep_is_t_minus_1():
    ours, ref = ks.UnCLIPScheduler(), diffusers.UnCLIPScheduler()
    x = torch.randn(EMBEDS)
    for t in (999, 500, 1, 0):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        a = ours.step(prior_model(x, t), t, x, generator=g1)
        b = ref.step(prior_model(x, t), t, x, generator=g2)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=ATOL)


def test_fixed_large_log_is_finite_where_diffusers_gives_nan():
    """diffusers takes sqrt(log(beta)) (NaN); kandi uses exp(0.5 * log(beta)), i.e. the fixed_large std."""
    x = torch.randn(LATENTS)
    out, t = fake_model(x, 500, False), 500
    ref = diffusers.DDPMScheduler(variance_type="fixed_large_log").step(
        out, t, x, generator=torch.Generator()
    )
    assert torch.isnan(ref.prev_sample).all()
    log = ks.DDPMScheduler(variance_type="fixed_large_log")
    large = ks.DDPMScheduler(variance_type="fixed_large")
    a = log.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = large.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


# ---------------------------------------------------------------- analytic check, no oracle


@pytest.mark.parametrize("kind", ["DDIMScheduler", "DDPMScheduler"])
def test_exact_eps_model_recovers_point_mass(kind: str):
    """Data = one point x*: the exact eps-model is (x - sqrt(a) x*) / sqrt(1 - a); sampling must land on x*."""
    target = torch.linspace(-0.8, 0.8, 2 * 4 * 8 * 8).reshape(LATENTS)
    sched = getattr(ks, kind)(beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    sched.set_timesteps(25)
    x, gen = torch.randn(LATENTS), torch.Generator().manual_seed(0)
    for t in sched.timesteps.tolist():
        a = sched.alphas_cumprod[t]
        x = sched.step((x - a.sqrt() * target) / (1 - a).sqrt(), t, x, generator=gen).prev_sample
    torch.testing.assert_close(x, target, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- timesteps, tables, noise


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers_for_every_step_count(spacing: str, offset: int):
    ref = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    for steps in range(1, 1001):
        ref.set_timesteps(steps)
        want = ref.timesteps.tolist()
        if spacing == "leading" and want[0] >= 1000:  # diffusers builds it, then indexes past the table
            with pytest.raises(ValueError, match="steps_offset"):
                ks.schedules.timesteps(1000, steps, spacing, offset)
            continue
        got = ks.schedules.timesteps(1000, steps, spacing, offset)
        if len(want) == steps + 1:  # diffusers' float arange overshoots: one extra timestep of -1
            assert spacing == "trailing" and want[-1] == -1
            want = want[:-1]
        assert got == want, (steps, got[:5], want[:5])


def test_unclip_timesteps_match_diffusers():
    ref = diffusers.UnCLIPScheduler()
    for steps in range(2, 1001):
        ref.set_timesteps(steps)
        assert ks.schedules.timesteps(1000, steps, "unclip") == ref.timesteps.tolist()
    assert ks.schedules.timesteps(1000, 1, "unclip") == [999]


def test_trailing_overshoot_is_fixed_in_the_scheduler():
    ours, ref = (
        ks.DDPMScheduler(timestep_spacing="trailing"),
        diffusers.DDPMScheduler(timestep_spacing="trailing"),
    )
    ours.set_timesteps(61)
    ref.set_timesteps(61)
    assert len(ref.timesteps) == 62 and int(ref.timesteps[-1]) == -1
    assert ours.timesteps.tolist() == ref.timesteps.tolist()[:61]


def test_timesteps_rejects_unknown_spacing():
    with pytest.raises(ValueError, match="timestep_spacing='middle'"):
        ks.timesteps(1000, 10, "middle")


def test_leading_offset_past_the_table_raises():
    for cls in (ks.DDPMScheduler, ks.DDIMScheduler):
        with pytest.raises(ValueError, match="timestep 1000"):
            cls(steps_offset=1).set_timesteps(1000)
    ref = diffusers.DDIMScheduler(steps_offset=1)
    ref.set_timesteps(1000)
    with pytest.raises(IndexError):
        ref.step(torch.zeros(1, 1), ref.timesteps[0], torch.zeros(1, 1))


@pytest.mark.parametrize(
    "options",
    [
        {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid"},
        {"beta_schedule": "laplace"},
        {"beta_schedule": "linear", "rescale_betas_zero_snr": True},
        {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True},
    ],
    ids=str,
)
def test_tables_bit_identical(options: dict):
    ref = diffusers.DDPMScheduler(**options)
    betas = ks.make_betas(
        options["beta_schedule"],
        1000,
        options.get("beta_start", 0.0001),
        options.get("beta_end", 0.02),
        rescale_zero_snr=options.get("rescale_betas_zero_snr", False),
    )
    assert betas.dtype == torch.float32 and torch.equal(betas, ref.betas)
    assert torch.equal(ks.alphas_cumprod(betas), ref.alphas_cumprod)


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64, torch.float16])
def test_randn_matches_randn_tensor(dtype):
    shape = (3, 4, 5)
    for make in (
        lambda: torch.Generator().manual_seed(7),
        lambda: [torch.Generator().manual_seed(7)],
        lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)],
    ):
        got = ks.randn(shape, make(), device="cpu", dtype=dtype)
        want = randn_tensor(shape, generator=make(), device=torch.device("cpu"), dtype=dtype)
        assert got.dtype == want.dtype and torch.equal(got, want)
    rows = [
        torch.randn((1, 4, 5), generator=torch.Generator().manual_seed(s), dtype=dtype) for s in (7, 8, 9)
    ]
    assert torch.equal(
        ks.randn(shape, [torch.Generator().manual_seed(s) for s in (7, 8, 9)], dtype=dtype), torch.cat(rows)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_on_cuda_matches_diffusers():
    """A CPU generator draws on CPU and moves: the CUDA trajectory equals diffusers' CUDA trajectory."""
    cfg = load(CONFIG_DIR / "k21.ddpm_scheduler.json")
    ours, ref = build(cfg)
    ours.set_timesteps(10, device="cuda")
    ref.set_timesteps(10, device="cuda")
    x = torch.randn(LATENTS, generator=torch.Generator().manual_seed(1)).cuda()
    assert_trajectories_match(ours, ref, x, lambda x, t: fake_model(x, t, True))
    got = ks.randn(LATENTS, torch.Generator().manual_seed(3), device="cuda")
    want = randn_tensor(LATENTS, generator=torch.Generator().manual_seed(3), device=torch.device("cuda"))
    assert got.device.type == "cuda" and torch.equal(got, want)


def test_randn_rejects_too_few_generators():
    with pytest.raises(ValueError, match="generators"):
        ks.randn((3, 2), [torch.Generator(), torch.Generator()])


@pytest.mark.parametrize("kind", ["DDPMScheduler", "UnCLIPScheduler", "DDIMScheduler"])
def test_generator_lists_in_step(kind: str):
    ours, ref = getattr(ks, kind)(), getattr(diffusers, kind)()
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    x = torch.randn(3, 4, 8, 8)
    extra = {"eta": 1.0} if kind == "DDIMScheduler" else {}
    gens = [[torch.Generator().manual_seed(s) for s in (10, 11, 12)] for _ in range(2)]
    for i, t in enumerate(ref.timesteps.tolist()):
        kw = step_kwargs(kind, ref.timesteps.tolist(), i, extra)
        a = ours.step(fake_model(x, t, False), t, x, generator=gens[0], **kw).prev_sample
        b = ref.step(fake_model(x, t, False), t, x, generator=gens[1], **kw).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
        x = a


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler", "UnCLIPScheduler"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise(kind: str, dtype: torch.dtype):
    ours, ref = getattr(ks, kind)(), getattr(diffusers, kind)()
    x0, noise = torch.randn(LATENTS).to(dtype), torch.randn(LATENTS).to(dtype)
    for t in (torch.tensor([10, 900]), torch.tensor(500), torch.tensor([999])):
        want = ref.add_noise(x0, noise, t)
        assert torch.equal(ours.add_noise(x0, noise, t), want)
    assert torch.equal(ours.add_noise(x0, noise, 500), ref.add_noise(x0, noise, torch.tensor(500)))
    assert torch.equal(ours.add_noise(x0, noise, [3, 4]), ref.add_noise(x0, noise, torch.tensor([3, 4])))


# ---------------------------------------------------------------- API details


def test_step_outputs_and_timestep_types():
    sched = ks.DDPMScheduler()
    sched.set_timesteps(10)
    x = torch.randn(LATENTS)
    outs = []
    for t in (sched.timesteps[3], int(sched.timesteps[3]), np.int64(sched.timesteps[3])):
        out = sched.step(fake_model(x, 600, False), t, x, generator=torch.Generator().manual_seed(0))
        assert out[0] is out.prev_sample and out[1] is out.pred_original_sample
        assert out["prev_sample"] is out.prev_sample
        outs.append(out.prev_sample)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    plain = sched.step(fake_model(x, 600, False), sched.timesteps[3], x, return_dict=False)
    assert isinstance(plain, tuple) and len(plain) == 2


def test_ddpm_previous_timestep_and_custom_timesteps():
    ours, ref = ks.DDPMScheduler(steps_offset=1), diffusers.DDPMScheduler(steps_offset=1)
    assert ours.previous_timestep(500) == 499 == int(ref.previous_timestep(500))
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    for t in ref.timesteps.tolist():
        assert ours.previous_timestep(t) == int(ref.previous_timestep(t))
    assert ours.previous_timestep(ours.timesteps[-1]) == -1
    custom = [901, 700, 420, 100, 3, 1, 0]  # 1 -> 0 still draws noise, 0 does not
    ours.set_timesteps(timesteps=custom)
    ref.set_timesteps(timesteps=custom)
    assert ours.custom_timesteps and ours.timesteps.tolist() == custom
    assert_trajectories_match(ours, ref, torch.randn(LATENTS), lambda x, t: fake_model(x, t, False))


def test_scheduler_attributes():
    for kind in ("DDPMScheduler", "DDIMScheduler", "UnCLIPScheduler"):
        ours, ref = getattr(ks, kind)(), getattr(diffusers, kind)()
        # diffusers' UnCLIPScheduler lacks `order`; pipelines read it, so kandi's has it
        assert ours.order == getattr(ref, "order", 1) == 1 and ours.init_noise_sigma == ref.init_noise_sigma
        assert ours.num_inference_steps is None
        assert torch.equal(ours.timesteps, ref.timesteps) and ours.timesteps.dtype == torch.int64
        x = torch.randn(2, 3)
        assert ours.scale_model_input(x, 5) is x
    assert len(ks.DDPMScheduler(num_train_timesteps=500)) == 500
    assert torch.equal(
        ks.DDIMScheduler(set_alpha_to_one=False).final_alpha_cumprod, ks.DDIMScheduler().alphas_cumprod[0]
    )


# ---------------------------------------------------------------- configs: from_config, save, load


def comparable(config) -> dict:
    """Config values that must agree (the version stamp and the defaults list order may differ)."""
    out = {k: v for k, v in dict(config).items() if k not in ("_diffusers_version", "_use_default_values")}
    out["_use_default_values"] = sorted(config.get("_use_default_values", []))
    return out


def test_config_object_behaves_like_frozen_dict():
    sched = ks.DDPMScheduler.from_config(load(CONFIG_DIR / "k3.scheduler.json"))
    cfg = sched.config
    assert cfg.steps_offset == cfg["steps_offset"] == 1
    assert cfg["_class_name"] == "DDPMScheduler" and "_diffusers_version" in cfg
    assert isinstance(cfg, dict) and set(cfg) == set(cfg.keys()) and dict(cfg.items())["beta_schedule"]
    for mutate in (
        lambda: cfg.__setitem__("steps_offset", 0),
        lambda: setattr(cfg, "steps_offset", 0),
        lambda: cfg.update(steps_offset=0),
        lambda: cfg.pop("steps_offset"),
        lambda: cfg.__delitem__("steps_offset"),
    ):
        with pytest.raises(TypeError, match="immutable"):
            mutate()
    with pytest.raises(AttributeError):
        _ = cfg.not_a_key
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("target", ["DDPMScheduler", "DDIMScheduler", "UnCLIPScheduler"])
def test_cross_class_from_config(path: Path, target: str):
    cfg = load(path)
    ours_src, ref_src = build(cfg)
    if target == "UnCLIPScheduler" and cfg["_class_name"] != "UnCLIPScheduler":
        # decoder configs carry linear betas or a fixed_small variance; kandi refuses them up front
        # (diffusers raises for linear betas too, and for fixed_small only inside step)
        with pytest.raises(ValueError, match="beta_schedule|variance_type"):
            ks.UnCLIPScheduler.from_config(ours_src.config)
        return
    ours = getattr(ks, target).from_config(ours_src.config)
    ref = getattr(diffusers, target).from_config(ref_src.config)
    assert comparable(ours.config) == comparable(ref.config)
    # ours also accepts the diffusers FrozenDict, and diffusers ours (a dict)
    assert comparable(getattr(ks, target).from_config(ref_src.config).config) == comparable(ref.config)
    assert comparable(getattr(diffusers, target).from_config(ours_src.config).config) == comparable(
        ref.config
    )
    ours.set_timesteps(25)
    ref.set_timesteps(25)
    if target == "UnCLIPScheduler":
        assert_trajectories_match(ours, ref, torch.randn(EMBEDS), prior_model)
    else:  # DDIM keeps a DDPM variance_type in its config for round trips, but never uses it
        learned = target == "DDPMScheduler" and learned_variance(ours.config)
        assert_trajectories_match(ours, ref, torch.randn(LATENTS), lambda x, t: fake_model(x, t, learned))


def test_from_config_overrides_and_unknown_keys():
    cfg = {**load(CONFIG_DIR / "k21.scheduler.json"), "variance_type": "learned_range", "made_up": 3}
    ours = ks.DDIMScheduler.from_config(cfg, timestep_spacing="trailing")
    ref = diffusers.DDIMScheduler.from_config(cfg, timestep_spacing="trailing")
    assert ours.config.timestep_spacing == "trailing" and ours.config.variance_type == "learned_range"
    assert comparable(ours.config) == comparable(ref.config)
    with pytest.warns(UserWarning, match="not_an_option"):
        ks.DDIMScheduler.from_config(cfg, not_an_option=1)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_save_pretrained_round_trips_through_diffusers(path: Path, tmp_path: Path):
    cfg = load(path)
    ours, ref = build(cfg)
    ours.save_pretrained(tmp_path / "ours")
    saved = load(tmp_path / "ours" / "scheduler_config.json")
    assert saved["_class_name"] == cfg["_class_name"] and "_diffusers_version" in saved
    loaded = getattr(diffusers, cfg["_class_name"]).from_pretrained(tmp_path / "ours")
    names = ks_names(type(ours))
    assert {k: loaded.config[k] for k in names} == {k: ours.config[k] for k in names}

    ref.save_pretrained(tmp_path / "ref")
    back = type(ours).from_pretrained(tmp_path / "ref")
    assert {k: back.config[k] for k in names} == {k: ref.config[k] for k in names}
    back.set_timesteps(3)
    ref.set_timesteps(3)
    assert back.timesteps.tolist() == ref.timesteps.tolist()


def ks_names(cls) -> list[str]:
    return list(cls._init_defaults())


def test_from_pretrained_subfolder_and_overrides(tmp_path: Path):
    folder = tmp_path / "repo" / "ddpm_scheduler"
    folder.mkdir(parents=True)
    (folder / "scheduler_config.json").write_text((CONFIG_DIR / "k21.ddpm_scheduler.json").read_text())
    sched = ks.DDPMScheduler.from_pretrained(tmp_path / "repo", subfolder="ddpm_scheduler", steps_offset=1)
    assert sched.config.variance_type == "learned_range" and sched.config.steps_offset == 1
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        ks.DDPMScheduler.from_pretrained(tmp_path / "repo")


def test_from_pretrained_hub_goes_through_resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "scheduler_config.json").write_text((CONFIG_DIR / "k21-prior.scheduler.json").read_text())
    calls = []

    def resolve_component_dir(name, subfolder, **kwargs):
        calls.append((name, subfolder, kwargs))
        return tmp_path

    monkeypatch.setitem(
        sys.modules, "kandi.loading.hub", types.SimpleNamespace(resolve_component_dir=resolve_component_dir)
    )
    sched = ks.UnCLIPScheduler.from_pretrained(
        "kandinsky-community/kandinsky-2-2-prior",
        subfolder="scheduler",
        revision="main",
        local_files_only=True,
    )
    assert sched.config.clip_sample_range == 10.0
    assert calls == [
        (
            "kandinsky-community/kandinsky-2-2-prior",
            "scheduler",
            {"revision": "main", "cache_dir": None, "local_files_only": True, "token": None},
        )
    ]


# ---------------------------------------------------------------- error paths


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler", "UnCLIPScheduler"])
@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10", 1001])
def test_bad_num_inference_steps(kind: str, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        getattr(ks, kind)().set_timesteps(steps)


@pytest.mark.parametrize(
    ("kind", "options", "arg"),
    [
        ("DDPMScheduler", {"beta_schedule": "cubic"}, "beta_schedule"),
        ("DDIMScheduler", {"beta_schedule": "sigmoid"}, "beta_schedule"),
        ("DDPMScheduler", {"timestep_spacing": "middle"}, "timestep_spacing"),
        ("DDIMScheduler", {"timestep_spacing": "unclip"}, "timestep_spacing"),
        ("DDPMScheduler", {"prediction_type": "flow"}, "prediction_type"),
        ("DDIMScheduler", {"prediction_type": "x0"}, "prediction_type"),
        ("UnCLIPScheduler", {"prediction_type": "v_prediction"}, "prediction_type"),
        ("DDPMScheduler", {"variance_type": "fixed"}, "variance_type"),
        ("UnCLIPScheduler", {"variance_type": "fixed_small"}, "variance_type"),
        ("UnCLIPScheduler", {"beta_schedule": "linear"}, "beta_schedule"),
    ],
)
def test_bad_options(kind: str, options: dict, arg: str):
    with pytest.raises(ValueError, match=arg) as info:
        getattr(ks, kind)(**options)
    assert "choose one of" in str(info.value)


def test_step_errors():
    x = torch.randn(LATENTS)
    with pytest.raises(ValueError, match="set_timesteps"):
        ks.DDIMScheduler().step(x, 10, x)
    ddim = ks.DDIMScheduler()
    ddim.set_timesteps(10)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        ddim.step(x, 901, x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    with pytest.raises(ValueError, match="timestep=1000"):
        ddim.step(x, 1000, x)
    ddpm = ks.DDPMScheduler()
    with pytest.raises(ValueError, match="variance_type"):
        ddpm.step(torch.randn(2, 8, 8, 8), 10, x)
    with pytest.raises(ValueError, match="learned"):
        ks.DDPMScheduler(variance_type="learned").step(x, 10, x)
    ddpm.set_timesteps(10)
    with pytest.raises(ValueError, match="not in the schedule"):
        ddpm.step(x, 555, x)
    with pytest.raises(ValueError, match="prev_timestep"):
        ks.UnCLIPScheduler().step(x, 10, x, prev_timestep=10)


def test_set_timesteps_errors():
    sched = ks.DDPMScheduler()
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps(10, timesteps=[5, 1])
    with pytest.raises(ValueError, match="descending"):
        sched.set_timesteps(timesteps=[5, 7, 1])
    with pytest.raises(ValueError, match="num_train_timesteps"):
        sched.set_timesteps(timesteps=[1000, 5])
    with pytest.raises(ValueError, match="from_pretrained"):
        ks.DDPMScheduler.from_config("some/path")
