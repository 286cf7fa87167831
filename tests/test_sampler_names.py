"""The sampler vocabulary: A1111 names, class names, schedule types, errors, round trip to the PNG name."""

import json
from pathlib import Path

import pytest

from kandi.schedulers import names
from kandi.schedulers.dpm import DPMSolverMultistepScheduler
from kandi.schedulers.euler import EulerAncestralDiscreteScheduler

BASE = json.loads((Path(__file__).parent / "data" / "configs" / "k22-decoder.scheduler.json").read_text())


@pytest.mark.parametrize("entry", names.sampler_names(), ids=lambda e: e["name"])
def test_every_name_round_trips(entry):
    for key in [entry["name"], entry["name"].upper(), *entry["aliases"]]:
        s = names.make_sampler(key, BASE)
        assert s.config.beta_start == BASE["beta_start"] and s.config.steps_offset == 1
        assert names.a1111_name(s) == entry["name"]


def test_schedule_type_karras():
    s = names.make_sampler("DPM++ 2M", BASE, scheduler="Karras")
    assert isinstance(s, DPMSolverMultistepScheduler) and s.config.use_karras_sigmas
    assert names.a1111_name(s) == "DPM++ 2M Karras"
    assert not names.make_sampler("DPM++ 2M", BASE, scheduler="Automatic").config.use_karras_sigmas


def test_class_name_case_insensitive():
    assert isinstance(
        names.make_sampler("eulerancestraldiscretescheduler", BASE), EulerAncestralDiscreteScheduler
    )


def test_unknown_names_are_value_errors_listing_the_known():
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M Karras"):
        names.make_sampler("Restart", BASE)
    with pytest.raises(ValueError, match="Karras"):
        names.make_sampler("Euler a", BASE, scheduler="Karras")
    with pytest.raises(ValueError, match="schedule types"):
        names.make_sampler("Euler", BASE, scheduler="Polyexponential")


@pytest.mark.parametrize(
    ("name", "cls_name", "overrides"),
    [
        ("UniPC", "UniPCMultistepScheduler", {}),
        ("deis", "DEISMultistepScheduler", {}),
        ("dpmpp_2s", "DPMSolverSinglestepScheduler", {}),
        ("DPMSolverSinglestepScheduler", "DPMSolverSinglestepScheduler", {}),
        ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
        ("pndm", "PNDMScheduler", {"skip_prk_steps": True}),
        ("PNDMScheduler", "PNDMScheduler", {"skip_prk_steps": True}),
        ("LCM", "LCMScheduler", {}),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", {}),
    ],
)
def test_multistep_names_build_their_classes_over_the_base_config(name, cls_name, overrides):
    s = names.make_sampler(name, BASE)
    assert type(s).__name__ == cls_name
    assert s.config.beta_start == BASE["beta_start"] and s.config.beta_end == BASE["beta_end"]
    assert all(s.config[k] == v for k, v in overrides.items())


@pytest.mark.parametrize("name", ["UniPC", "DEIS", "DPM++ 2S"])
def test_multistep_solvers_take_the_karras_schedule(name):
    s = names.make_sampler(name, BASE, scheduler="Karras")
    assert s.config.use_karras_sigmas
    assert names.a1111_name(s) == name
    s.set_timesteps(10)
    assert s.sigmas[0] > s.sigmas[1] > s.sigmas[-2]


@pytest.mark.parametrize("name", ["PLMS", "LCM"])
def test_plms_and_lcm_have_no_karras_schedule(name):
    with pytest.raises(ValueError, match="no Karras schedule"):
        names.make_sampler(name, BASE, scheduler="Karras")


def test_prk_pndm_has_no_a1111_name():
    s = names.make_sampler("PNDM", BASE)
    assert names.a1111_name(s) == "PLMS"
    prk = type(s).from_config(s.config, skip_prk_steps=False)
    with pytest.raises(ValueError, match="no A1111 name"):
        names.a1111_name(prk)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Heun", "HeunDiscreteScheduler"),
        ("k_dpm_2", "KDPM2DiscreteScheduler"),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        ("k_lms", "LMSDiscreteScheduler"),
    ],
)
def test_k_diffusion_names_and_their_schedule_types(name: str, cls: str):
    s = names.make_sampler(name, BASE)
    assert type(s).__name__ == cls and names.schedule_type(s) == "Automatic"
    k = names.make_sampler(name, BASE, scheduler="Karras")
    assert k.config.use_karras_sigmas and names.schedule_type(k) == "Karras"
    e = names.make_sampler(name, BASE, scheduler="exponential")
    assert e.config.use_exponential_sigmas and not e.config.use_karras_sigmas
    assert names.schedule_type(e) == "Exponential" and names.a1111_name(e) == names.a1111_name(s)


def test_karras_named_k_diffusion_samplers():
    for name in ("DPM2 Karras", "DPM2 a Karras", "LMS Karras"):
        assert names.make_sampler(name, BASE).config.use_karras_sigmas
    assert names.a1111_name(names.make_sampler("DPM2", BASE, scheduler="Karras")) == "DPM2 Karras"


def test_schedule_type_exponential():
    for name in ("Euler", "DPM++ 2M", "DPM++ 2M SDE"):
        s = names.make_sampler(name, BASE, scheduler="Exponential")
        assert s.config.use_exponential_sigmas and s.config.steps_offset == 1
        assert names.a1111_name(s) == name
    assert "Exponential" in names.SCHEDULE_TYPES
    with pytest.raises(ValueError, match="no Exponential schedule"):
        names.make_sampler("Euler a", BASE, scheduler="Exponential")
    with pytest.raises(ValueError, match="already uses Karras"):
        names.make_sampler("DPM++ 2M Karras", BASE, scheduler="Exponential")
