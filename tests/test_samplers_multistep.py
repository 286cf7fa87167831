"""UniPC, DEIS, DPM-Solver singlestep, PNDM and LCM against diffusers 0.42.1: tables and step outputs."""

import json
from pathlib import Path

import diffusers
import pytest
import torch

import kandi
from kandi.schedulers import (
    DEISMultistepScheduler,
    DPMSolverSinglestepScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

CONFIGS = Path(__file__).parent / "data" / "configs"
NAMES = ["k21.scheduler.json", "k21.ddpm_scheduler.json", "k22-decoder.scheduler.json", "k3.scheduler.json"]
STEPS = [1, 2, 3, 10, 25, 50]
CLASSES = [
    UniPCMultistepScheduler,
    DEISMultistepScheduler,
    DPMSolverSinglestepScheduler,
    PNDMScheduler,
    LCMScheduler,
]


def config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def model(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 0.9  # a fixed smooth "model"


def assert_same_run(ours, ref, steps: int, draws: bool = False) -> None:
    """Same timesteps (and sigmas) entry for entry, then the same trajectory under the same draws."""
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    if hasattr(ref, "sigmas"):
        torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    ts = ref.timesteps
    if len(ts) > 1 and ts[0] == ts[1]:
        # diffusers starts at the second copy of a repeated first timestep (and runs off its table);
        # kandi starts at the first, which is what set_begin_index(0) asks diffusers for
        ref.set_begin_index(0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    xa, xb = x.clone(), x.clone()
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i, t in enumerate(ts):
        out = model(xb)
        xa = ours.step(out, t, xa, generator=ga).prev_sample
        xb = ref.step(out, t, xb, **({"generator": gb} if draws else {})).prev_sample
        assert torch.isfinite(xa).all()
        if not torch.isfinite(xb).all():
            # diffusers' UniPC bh1 multiplies B(h) = -inf by a zero residual on the step to sigma = 0
            assert i == len(ts) - 1 and ours.config.solver_type == "bh1"
            break
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-4)


UNIPC_OPTIONS = [
    {},
    {"solver_type": "bh1"},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"prediction_type": "v_prediction", "thresholding": True},
    {"use_karras_sigmas": True},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_type": "bh1"},
    {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"},
    {"timestep_spacing": "leading", "disable_corrector": [0, 1]},
    {"predict_x0": False, "solver_order": 3, "final_sigmas_type": "sigma_min"},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("extra", UNIPC_OPTIONS)
def test_unipc_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    ours = UniPCMultistepScheduler.from_config(cfg)
    assert_same_run(ours, diffusers.UniPCMultistepScheduler.from_config(cfg), steps)


DEIS_OPTIONS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "lower_order_final": False},
    {"use_karras_sigmas": True},
    {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"timestep_spacing": "leading"},
]


def test_unipc_final_step_to_zero_is_first_order():
    """Without lower_order_final, diffusers takes a 2nd-order step to sigma = 0 and returns inf."""
    cfg = config("k22-decoder.scheduler.json") | {"lower_order_final": False}
    ours, ref = UniPCMultistepScheduler.from_config(cfg), diffusers.UniPCMultistepScheduler.from_config(cfg)
    for s in (ours, ref):
        s.set_timesteps(4)
    xa = xb = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ref.timesteps[:-1]:
        out = model(xb)
        xa, xb = ours.step(out, t, xa).prev_sample, ref.step(out, t, xb).prev_sample
    out = model(xb)
    last = ours.step(out, ref.timesteps[-1], xa).prev_sample
    assert not torch.isfinite(ref.step(out, ref.timesteps[-1], xb).prev_sample).all()
    torch.testing.assert_close(last, ours.model_outputs[-1])  # the x0 prediction, as a first-order step gives


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("extra", DEIS_OPTIONS)
def test_deis_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    ours = DEISMultistepScheduler.from_config(cfg)
    assert_same_run(ours, diffusers.DEISMultistepScheduler.from_config(cfg), steps)


SINGLE_OPTIONS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "solver_type": "heun"},
    {"use_karras_sigmas": True},
    {"final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min", "lower_order_final": False, "prediction_type": "v_prediction"},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"},
    {"lambda_min_clipped": -5.1},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("extra", SINGLE_OPTIONS)
def test_dpm_singlestep_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    if cfg.get("variance_type") in ("learned", "learned_range"):
        cfg.pop("variance_type")  # diffusers keeps 3 channels of a learned-variance output (see below)
    ours = DPMSolverSinglestepScheduler.from_config(cfg)
    ref = diffusers.DPMSolverSinglestepScheduler.from_config(cfg)
    assert_same_run(ours, ref, steps, draws=cfg.get("algorithm_type") == "sde-dpmsolver++")
    assert ours.order_list == ref.order_list
    assert ours.config.lower_order_final == ref.config.lower_order_final


PLMS_OPTIONS = [
    {"skip_prk_steps": True},
    {"skip_prk_steps": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"skip_prk_steps": True, "timestep_spacing": "linspace", "set_alpha_to_one": True},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("extra", PLMS_OPTIONS)
def test_plms_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    assert_same_run(PNDMScheduler.from_config(cfg), diffusers.PNDMScheduler.from_config(cfg), steps)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", STEPS)
def test_pndm_prk_matches_diffusers(name: str, steps: int):
    cfg = config(name) | {"skip_prk_steps": False}
    ours, ref = PNDMScheduler.from_config(cfg), diffusers.PNDMScheduler.from_config(cfg)
    if steps < 4:  # diffusers fails in a numpy broadcast; kandi says what PRK needs
        with pytest.raises(ValueError):
            ref.set_timesteps(steps)
        with pytest.raises(ValueError, match="skip_prk_steps"):
            ours.set_timesteps(steps)
        return
    assert_same_run(ours, ref, steps)


LCM_OPTIONS = [
    {},
    {"timestep_scaling": 5.0, "original_inference_steps": 100, "prediction_type": "v_prediction"},
    {"set_alpha_to_one": True},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("extra", LCM_OPTIONS)
def test_lcm_matches_diffusers(name: str, steps: int, extra: dict):
    cfg = config(name) | extra
    assert_same_run(LCMScheduler.from_config(cfg), diffusers.LCMScheduler.from_config(cfg), steps, draws=True)


def test_lcm_denoised_and_schedule_arguments_match_diffusers():
    cfg = config("k22-decoder.scheduler.json")
    ours, ref = LCMScheduler.from_config(cfg), diffusers.LCMScheduler.from_config(cfg)
    for s in (ours, ref):
        s.set_timesteps(4, original_inference_steps=20, strength=0.5)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    x = torch.randn(1, 4, 8, 8)
    a = ours.step(model(x), ours.timesteps[0], x, generator=torch.Generator().manual_seed(3))
    b = ref.step(model(x), ref.timesteps[0], x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.denoised, b.denoised)
    torch.testing.assert_close(a[0], b[0])
    ours.set_timesteps(timesteps=[999, 759, 499, 259])
    ref.set_timesteps(timesteps=[999, 759, 499, 259])
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    with pytest.raises(ValueError, match="original_inference_steps"):
        ours.set_timesteps(60)
    with pytest.raises(ValueError, match="descending"):
        ours.set_timesteps(timesteps=[10, 20])


def fresh(cls, name: str = "k22-decoder.scheduler.json", **extra):
    return cls.from_config(config(name) | extra)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_timestep_as_int_or_tensor_and_generator_accepted(cls):
    """Pipelines pass host ints; diffusers-style loops pass 0-d tensors; both give the same samples."""
    runs = []
    for as_int in (True, False):
        s = fresh(cls)
        s.set_timesteps(5)
        x, g = (
            torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
            torch.Generator().manual_seed(2),
        )
        for t in s.timesteps:
            x = s.step(model(x), int(t) if as_int else t.reshape(()), x, generator=g).prev_sample
        runs.append(x)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_learned_variance_output_is_a_clear_error(cls):
    s = fresh(cls)
    s.set_timesteps(4)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.randn(1, 8, 8, 8), s.timesteps[0], x)


def test_singlestep_learned_range_keeps_the_eps_half():
    """diffusers slices [:, :3] (pixel channels) and then fails on latents; kandi keeps the eps half."""
    ours = fresh(DPMSolverSinglestepScheduler, "k21.ddpm_scheduler.json")
    ours.set_timesteps(5)
    x, eps, var = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    a = ours.step(torch.cat([eps, var], 1), ours.timesteps[0], x).prev_sample
    ours.set_timesteps(5)
    b = ours.step(eps, ours.timesteps[0], x).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_config_and_loading_match_diffusers(cls, tmp_path):
    ref_cls = getattr(diffusers, cls.__name__)
    cfg = config("k21.scheduler.json")
    ours, ref = cls.from_config(cfg), ref_cls.from_config(cfg)
    keys = [k for k in ref.config if not k.startswith("_")]
    assert sorted(k for k in ours.config if not k.startswith("_")) == sorted(keys)
    assert {k: ours.config[k] for k in keys} == {k: ref.config[k] for k in keys}
    assert sorted(ours.config["_use_default_values"]) == sorted(ref.config["_use_default_values"])
    ref.save_pretrained(tmp_path / "scheduler")
    loaded = cls.from_pretrained(tmp_path, subfolder="scheduler")
    assert {k: loaded.config[k] for k in keys} == {k: ref.config[k] for k in keys}
    assert loaded.init_noise_sigma == ref.init_noise_sigma and loaded.order == ref.order
    assert getattr(kandi, cls.__name__) is cls


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_half_precision_keeps_its_dtype_and_stays_close(cls):
    runs = []
    for dtype in (torch.float32, torch.float16):
        s = fresh(cls)
        s.set_timesteps(6)
        x, g = (
            torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
            torch.Generator().manual_seed(2),
        )
        x = x.to(dtype)
        for t in s.timesteps.tolist():
            x = s.step(model(x), t, x, generator=g).prev_sample
            assert x.dtype == dtype
        runs.append(x.float())
    # fp16 rounding of x is amplified ~1/alpha (14x at t = 999) in the first x0 prediction
    torch.testing.assert_close(runs[1], runs[0], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("begin", [3, 4])  # 3: the singlestep run starts inside a 2nd-order pair
@pytest.mark.parametrize(
    "cls", [UniPCMultistepScheduler, DEISMultistepScheduler, DPMSolverSinglestepScheduler, LCMScheduler]
)
def test_img2img_begin_index_and_add_noise_match_diffusers(cls, begin):
    cfg = config("k22-decoder.scheduler.json")
    ours, ref = cls.from_config(cfg), getattr(diffusers, cls.__name__).from_config(cfg)
    x, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for s in (ours, ref):
        s.set_timesteps(10)
    t = ref.timesteps[3:5]  # no begin index: looked up per row
    torch.testing.assert_close(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    for s in (ours, ref):
        s.set_begin_index(begin)
    t = ref.timesteps[begin : begin + 1].repeat(2)
    xa = ours.add_noise(x, noise, t)
    xb = ref.add_noise(x, noise, t)
    torch.testing.assert_close(xa, xb)
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    draws = cls is LCMScheduler
    for t in ref.timesteps[begin:]:
        out = model(xb)
        xa = ours.step(out, t, xa, generator=ga).prev_sample
        xb = ref.step(out, t, xb, **({"generator": gb} if draws else {})).prev_sample
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-4)
    assert ours.step_index == ref.step_index == 10 and ours.begin_index == begin


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (UniPCMultistepScheduler, {"use_flow_sigmas": True}, "use_flow_sigmas"),
        (UniPCMultistepScheduler, {"solver_type": "bh3"}, "bh1"),
        (UniPCMultistepScheduler, {"solver_order": 0}, "solver_order"),
        (UniPCMultistepScheduler, {"predict_x0": False}, "sigma_min"),
        (DEISMultistepScheduler, {"use_exponential_sigmas": True}, "Karras"),
        (DEISMultistepScheduler, {"solver_order": 4}, "1, 2 or 3"),
        (DPMSolverSinglestepScheduler, {"algorithm_type": "dpmsolver"}, "sde-dpmsolver"),
        (DPMSolverSinglestepScheduler, {"beta_schedule": "laplace"}, "squaredcos_cap_v2"),
        (PNDMScheduler, {"prediction_type": "sample"}, "v_prediction"),
        (LCMScheduler, {"prediction_type": "flow"}, "epsilon"),
    ],
)
def test_unsupported_options_are_value_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_step_before_set_timesteps_is_an_error(cls):
    with pytest.raises(ValueError, match="set_timesteps"):
        cls().step(torch.zeros(1, 4, 2, 2), 999, torch.zeros(1, 4, 2, 2))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_swapping_from_a_dpm_multistep_config_matches_diffusers(cls):
    """pipe.scheduler = X.from_config(dpm.config): solver/algorithm names another solver stored are
    mapped as diffusers maps them (midpoint -> bh2 / logrho, dpmsolver++ -> deis)."""
    base = config("k22-decoder.scheduler.json") | {"solver_type": "heun", "use_karras_sigmas": True}
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(base)
    ours, ref = cls.from_config(dpm.config), getattr(diffusers, cls.__name__).from_config(dpm.config)
    keys = [k for k in ref.config if not k.startswith("_")]
    assert {k: ours.config[k] for k in keys} == {k: ref.config[k] for k in keys}
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
