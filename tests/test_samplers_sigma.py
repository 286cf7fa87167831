"""The k-diffusion samplers (Heun, DPM2, DPM2 a, LMS) and exponential sigmas against diffusers 0.42.1.

Tables entry for entry, then whole trajectories with a fixed smooth "model" and the same generator draws.
"""

import itertools
import json
import math
from fractions import Fraction
from functools import cache
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from kandi.schedulers.dpm import DPMSolverMultistepScheduler
from kandi.schedulers.dpm_sde import BrownianNoise, BrownianPath, DPMSolverSDEScheduler
from kandi.schedulers.euler import EulerDiscreteScheduler
from kandi.schedulers.heun import HeunDiscreteScheduler
from kandi.schedulers.kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from kandi.schedulers.lms import LMSDiscreteScheduler, lms_coefficients

CONFIGS = Path(__file__).parent / "data" / "configs"
NAMES = ["k21.scheduler.json", "k21.ddpm_scheduler.json", "k22-decoder.scheduler.json", "k3.scheduler.json"]
STEPS = [1, 2, 3, 10, 25, 50]
KARRAS, EXPONENTIAL = {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}
TRAILING_V = {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}
ANCESTRAL = (KDPM2AncestralDiscreteScheduler,)


def config(name: str, extra: dict) -> dict:
    cfg = json.loads((CONFIGS / name).read_text()) | extra
    cfg.pop("variance_type", None)  # a learned-variance output is split by the pipelines, not these samplers
    return cfg


@cache
def reference(cls_name: str, name: str, extra: str) -> object:
    """diffusers' scheduler, built once per config (its KDPM2 constructor alone takes seconds)."""
    return getattr(diffusers, cls_name).from_config(config(name, json.loads(extra)))


def pair(cls: type, name: str, extra: dict, steps: int) -> tuple:
    ours = cls.from_config(config(name, extra))
    ref = reference(cls.__name__, name, json.dumps(extra, sort_keys=True))
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    return ours, ref


def run(sched, x: torch.Tensor, gen: torch.Generator | None, timesteps) -> torch.Tensor:
    """The trajectory, one sample per call (the model sees the scaled input, as in a pipeline)."""
    out = []
    for t in timesteps:
        model_out = torch.tanh(sched.scale_model_input(x, t)) * 0.9
        kwargs = {"generator": gen} if gen is not None else {}
        x = sched.step(model_out, t, x, **kwargs).prev_sample
        out.append(x)
    return torch.stack(out)


def trajectories(ours, ref) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
    noisy = isinstance(ours, ANCESTRAL)
    gens = [torch.Generator().manual_seed(1) if noisy else None for _ in range(2)]
    return run(ours, x.clone(), gens[0], ref.timesteps), run(ref, x.clone(), gens[1], ref.timesteps)


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


CASES = [
    (HeunDiscreteScheduler, {}),
    (HeunDiscreteScheduler, KARRAS),
    (HeunDiscreteScheduler, EXPONENTIAL),
    (HeunDiscreteScheduler, TRAILING_V),
    (
        HeunDiscreteScheduler,
        {"timestep_spacing": "leading", "prediction_type": "sample", "clip_sample": True},
    ),
    (KDPM2DiscreteScheduler, {}),
    (KDPM2DiscreteScheduler, KARRAS),
    (KDPM2DiscreteScheduler, EXPONENTIAL),
    (KDPM2DiscreteScheduler, TRAILING_V),
    (KDPM2AncestralDiscreteScheduler, {}),
    (KDPM2AncestralDiscreteScheduler, KARRAS),
    (KDPM2AncestralDiscreteScheduler, EXPONENTIAL),
    (KDPM2AncestralDiscreteScheduler, TRAILING_V),
]


@pytest.mark.parametrize(("cls", "extra"), CASES, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_order2_samplers_match_diffusers_exactly(cls: type, extra: dict):
    for name, steps in itertools.product(NAMES, STEPS):
        ours, ref = pair(cls, name, extra, steps)
        assert ours.order == ref.order == 2
        if not torch.isfinite(ref.timesteps).all():
            # diffusers' sigma_down rounds to 0 at k3's first sigma (~2e4) and its midpoint becomes NaN;
            # kandi uses the exact sigma_next^2 / sigma there
            assert isinstance(ours, ANCESTRAL) and torch.isfinite(ours.timesteps).all()
            assert torch.isfinite(trajectories(ours, ref)[0]).all()
            continue
        exact(ours.timesteps, ref.timesteps)
        exact(ours.sigmas, ref.sigmas)
        for table in ("sigmas_interpol", "sigmas_up", "sigmas_down"):
            if hasattr(ref, table):
                exact(getattr(ours, table), getattr(ref, table))
        exact(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(ref.init_noise_sigma))
        exact(*trajectories(ours, ref))


LMS_OPTIONS = [
    {},
    KARRAS,
    EXPONENTIAL,
    TRAILING_V,
    {"timestep_spacing": "leading", "prediction_type": "sample"},
]


@pytest.mark.parametrize("extra", LMS_OPTIONS, ids=str)
def test_lms_matches_diffusers(extra: dict):
    pytest.importorskip("scipy")  # diffusers' LMS integrates with scipy.integrate.quad
    for name, steps in itertools.product(NAMES, STEPS):
        ours, ref = pair(LMSDiscreteScheduler, name, extra, steps)
        exact(ours.timesteps, ref.timesteps)
        exact(ours.sigmas, ref.sigmas)
        for i in range(steps):
            for order in range(1, min(i + 1, 4) + 1):
                for j in range(order):
                    a, b = ours.get_lms_coefficient(order, i, j), ref.get_lms_coefficient(order, i, j)
                    assert a == pytest.approx(b, rel=1e-6, abs=1e-12)
        a, b = trajectories(ours, ref)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lms_coefficients_are_the_exact_integrals():
    """Against the basis polynomials integrated in rational arithmetic (no quadrature at all)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        sigmas = np.sort(rng.uniform(0.01, 2e4, 6).astype(np.float32))[::-1].astype(np.float64)
        for order in (1, 2, 3, 4):
            i = 4
            nodes = [Fraction(float(sigmas[i - k])) for k in range(order)]
            lo, hi = Fraction(float(sigmas[i])), Fraction(float(sigmas[i + 1]))
            got = lms_coefficients(sigmas, i, order)
            for j in range(order):
                want = exact_basis_integral(nodes, j, lo, hi)
                assert got[j] == pytest.approx(float(want), rel=1e-9, abs=1e-12)


def exact_basis_integral(nodes: list[Fraction], j: int, lo: Fraction, hi: Fraction) -> Fraction:
    coeffs = [Fraction(1)]  # polynomial coefficients, lowest power first
    for k, node in enumerate(nodes):
        if k == j:
            continue
        scale = nodes[j] - node
        shifted = [Fraction(0)] + coeffs  # times tau
        coeffs = [(s - node * c) / scale for s, c in zip(shifted, coeffs + [Fraction(0)])]
    return sum(c / (p + 1) * (hi ** (p + 1) - lo ** (p + 1)) for p, c in enumerate(coeffs))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("cls", "ref_cls", "extra"),
    [
        (EulerDiscreteScheduler, diffusers.EulerDiscreteScheduler, {}),
        (DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, {}),
        (
            DPMSolverMultistepScheduler,
            diffusers.DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++"},
        ),
    ],
    ids=["euler", "dpm++2m", "dpm++2m-sde"],
)
def test_exponential_sigmas_in_euler_and_dpm(name: str, cls: type, ref_cls: type, extra: dict):
    for steps in STEPS:
        cfg = config(name, extra | EXPONENTIAL)
        ours, ref = cls.from_config(cfg), ref_cls.from_config(cfg)
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        exact(ours.timesteps, ref.timesteps)
        exact(ours.sigmas, ref.sigmas)
        # ln sigma falls evenly: the exponential schedule's defining property
        logs = ours.sigmas[:-1].double().log()
        assert torch.allclose(logs.diff(), logs.diff()[:1].expand_as(logs.diff()), atol=1e-6)
        if len(ref.timesteps) > 1 and ref.timesteps[0] == ref.timesteps[1]:
            ref.set_begin_index(0)  # diffusers would skip to the second copy of a repeated first timestep
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
        gens = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        a, b = run(ours, x.clone(), gens[0], ref.timesteps), run(ref, x.clone(), gens[1], ref.timesteps)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


ALL = [
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    DPMSolverSDEScheduler,
]


@pytest.mark.parametrize("cls", ALL)
def test_timesteps_as_numbers_or_tensors_and_a_generator_everywhere(cls: type):
    """A 0-d tensor, its Python float and (where integral) its int give the same steps; step takes generator=."""
    results = []
    for as_type in (lambda t: t, float, lambda t: int(t) if float(t).is_integer() else float(t)):
        s = cls.from_config(config("k22-decoder.scheduler.json", {}))
        s.set_timesteps(4)
        x = torch.ones(1, 4, 4, 4) * s.init_noise_sigma
        gen = torch.Generator().manual_seed(3)
        for t in s.timesteps:
            out = torch.tanh(s.scale_model_input(x, as_type(t)))
            x = s.step(out, as_type(t), x, generator=gen).prev_sample
        results.append(x)
    exact(results[0], results[1])
    exact(results[0], results[2])


@pytest.mark.parametrize("cls", ALL)
def test_img2img_begin_index_and_add_noise(cls: type):
    ours, ref = pair(cls, "k22-decoder.scheduler.json", {}, 10)
    x, noise = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    t = ref.timesteps[5:6]
    exact(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))  # found by value
    for s in (ours, ref):
        s.set_begin_index(5)
    exact(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    exact(ours.scale_model_input(x, t), ref.scale_model_input(x, t))


@pytest.mark.parametrize("cls", ALL)
def test_config_round_trip_and_defaults(cls: type, tmp_path: Path):
    ref = getattr(diffusers, cls.__name__)()
    ours = cls()
    keys = {k for k in ref.config if not k.startswith("_")}
    assert {k: ours.config[k] for k in keys} == {k: ref.config[k] for k in keys}
    ours.save_pretrained(tmp_path)
    back = cls.from_pretrained(tmp_path, use_karras_sigmas=True)
    assert back.config.use_karras_sigmas and back.config.beta_end == ours.config.beta_end


@pytest.mark.parametrize("cls", ALL + [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_bad_sigma_options_are_value_errors(cls: type):
    with pytest.raises(ValueError, match="only one of"):
        cls(use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="beta"):
        cls(use_beta_sigmas=True)


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="prediction_type"):
        KDPM2DiscreteScheduler(prediction_type="sample")  # diffusers raises NotImplementedError in step
    with pytest.raises(ValueError, match="beta_schedule"):
        LMSDiscreteScheduler(beta_schedule="sigmoid")
    s = HeunDiscreteScheduler()
    s.set_timesteps(3)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step(torch.zeros(1), 123.25, torch.zeros(1))
    with pytest.raises(ValueError, match="order"):
        LMSDiscreteScheduler().step(torch.zeros(1), 999.0, torch.zeros(1), order=0)


def test_heun_exp_beta_schedule_matches_diffusers():
    ours, ref = (
        HeunDiscreteScheduler(beta_schedule="exp"),
        diffusers.HeunDiscreteScheduler(beta_schedule="exp"),
    )
    exact(ours.betas, ref.betas)
    assert math.isclose(float(ours.init_noise_sigma), float(ref.init_noise_sigma), rel_tol=0)


SDE_OPTIONS = [{}, KARRAS, EXPONENTIAL, TRAILING_V, {"timestep_spacing": "leading"}]


@pytest.mark.parametrize("extra", SDE_OPTIONS, ids=str)
def test_dpmpp_sde_matches_diffusers_under_the_same_noise(extra: dict):
    """Tables exactly; steps exactly once diffusers' torchsde noise is swapped for kandi's Brownian path."""
    pytest.importorskip("torchsde")  # diffusers' DPMSolverSDEScheduler imports it
    for name, steps in itertools.product(NAMES, STEPS):
        ours, ref = pair(DPMSolverSDEScheduler, name, extra | {"noise_sampler_seed": 7}, steps)
        exact(ours.timesteps, ref.timesteps)
        exact(ours.sigmas, ref.sigmas)
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
        positive = ref.sigmas[ref.sigmas > 0]
        path = BrownianNoise(x, float(positive.min()), float(ref.sigmas.max()), [7], batched=False)
        ref.noise_sampler = lambda s, s_next, path=path: path(float(s), float(s_next))
        exact(run(ours, x.clone(), None, ref.timesteps), run(ref, x.clone(), None, ref.timesteps))


def test_brownian_path_is_consistent_and_has_brownian_increments():
    path = BrownianPath(3, 0.0, 4.0, (20000,), torch.float64)
    w1, w2, w3 = path(1.0), path(2.5), path(0.5)
    exact(path(1.0), w1)  # a point, once drawn, stays
    incs = [w3 - path(0.0), w1 - w3, w2 - w1, path(4.0) - w2]
    for inc, length in zip(incs, [0.5, 0.5, 1.5, 1.5]):
        assert inc.var().item() == pytest.approx(length, rel=0.05)
    corr = torch.corrcoef(torch.stack(incs))
    assert (corr - torch.eye(4)).abs().max() < 0.05  # disjoint increments are independent
    again = BrownianPath(3, 0.0, 4.0, (20000,), torch.float64)
    exact(again(1.0), w1)
    assert not torch.equal(BrownianPath(4, 0.0, 4.0, (20000,), torch.float64)(1.0), w1)


def test_dpmpp_sde_noise_follows_the_generator():
    def sample(seed: int | list[int]) -> torch.Tensor:
        s = DPMSolverSDEScheduler.from_config(config("k22-decoder.scheduler.json", {}))
        s.set_timesteps(5)
        gen = [torch.Generator().manual_seed(k) for k in seed] if isinstance(seed, list) else None
        gen = gen or torch.Generator().manual_seed(seed)
        return run(s, torch.ones(2, 4, 4, 4) * s.init_noise_sigma, gen, s.timesteps)[-1]

    exact(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    rows = sample([5, 6])
    exact(rows[0], sample([5, 9])[0])  # each row's path comes from its own generator
    assert not torch.equal(rows[0], rows[1])
