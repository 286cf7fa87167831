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
    assert names.a1111_name(s) == name + " Karras"
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
    assert names.schedule_type(e) == "Exponential"
    assert names.a1111_name(e) == names.a1111_name(s) + " Exponential"


def test_karras_named_k_diffusion_samplers():
    for name in ("DPM2 Karras", "DPM2 a Karras", "LMS Karras"):
        assert names.make_sampler(name, BASE).config.use_karras_sigmas
    assert names.a1111_name(names.make_sampler("DPM2", BASE, scheduler="Karras")) == "DPM2 Karras"


def test_schedule_type_exponential():
    for name in ("Euler", "DPM++ 2M", "DPM++ 2M SDE"):
        s = names.make_sampler(name, BASE, scheduler="Exponential")
        assert s.config.use_exponential_sigmas and s.config.steps_offset == 1
        assert names.a1111_name(s) == name + " Exponential"
    assert "Exponential" in names.SCHEDULE_TYPES
    with pytest.raises(ValueError, match="no Exponential schedule"):
        names.make_sampler("Euler a", BASE, scheduler="Exponential")
    with pytest.raises(ValueError, match="already uses Karras"):
        names.make_sampler("DPM++ 2M Karras", BASE, scheduler="Exponential")


def test_cli_help_lists_every_sampler_kandi_has():
    from kandi.cli.common import SAMPLER_HELP

    listed = [n.strip().strip('"') for n in SAMPLER_HELP.split(",")]
    assert listed == [s.name for s in names.SAMPLERS]


@pytest.mark.parametrize(
    ("name", "scheduler", "expected"),
    [
        ("unipc karras", None, "UniPC Karras"),
        ("UniPC", "Karras", "UniPC Karras"),
        ("Euler", "Exponential", "Euler Exponential"),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
        ("DPM++ 2M Karras", "Karras", "DPM++ 2M Karras"),
        ("k_euler_a", None, "Euler a"),
        ("Heun  Karras", "Automatic", "Heun Karras"),
    ],
)
def test_a_schedule_type_may_be_named_in_the_sampler_name(name, scheduler, expected):
    assert names.canonical(name, scheduler) == expected
    built = names.make_sampler(name, BASE, scheduler=scheduler)
    assert names.a1111_name(built) == expected
    assert names.canonical(names.a1111_name(built)) == expected  # the PNG's name reads back


@pytest.mark.parametrize(
    ("name", "scheduler", "message"),
    [
        ("PLMS Karras", None, "no Karras schedule"),
        ("UniPC Karras", "Exponential", "names a schedule type"),
        ("Euler a Exponential", None, "no Exponential schedule"),
        ("Euler Cosine", None, "unknown sampler"),
        ("Euler", "Cosine", "unknown scheduler"),
    ],
)
def test_bad_schedule_types_are_clear_errors(name, scheduler, message):
    with pytest.raises(ValueError, match=message):
        names.canonical(name, scheduler)


@pytest.mark.parametrize(
    ("name", "schedule", "expected", "noted"),
    [
        ("UniPC", "Karras", "UniPC Karras", False),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras", False),
        ("Euler", "Exponential", "Euler Exponential", False),
        ("Euler a", "Karras", "Euler a", True),  # kandi has no Karras Euler a: said, not failed
        ("Euler", "Polyexponential", "Euler", True),
        ("Restart", "Automatic", None, True),  # an extension's sampler: the model's own scheduler
        ("", None, None, False),
    ],
)
def test_a1111_names_and_schedule_types(name, schedule, expected, noted):
    got, notes = names.from_a1111(name, schedule)
    assert got == expected and bool(notes) == noted


def test_an_a1111_png_replays_its_sampler_and_schedule_type():
    from kandi.engine.replay import from_parameters

    text = "a fox\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 7, Size: 64x64"
    got = from_parameters(text)
    assert got["options"]["scheduler"] == "DPM++ 2M Karras" and not got["notes"]
    got = from_parameters(text.replace("DPM++ 2M", "Restart"))
    assert "scheduler" not in got["options"] and "'Restart' is not in kandi" in got["notes"][0]


@pytest.mark.parametrize("entry", names.SAMPLERS, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", ["Karras", "Exponential"])
def test_a_schedule_type_the_name_check_accepts_builds(entry, kind):
    """What the planner accepts (before any model loads) must build later, and vice versa."""
    try:
        name = names.canonical(entry.name, kind)
    except ValueError:
        with pytest.raises(ValueError):
            names.make_sampler(entry.name, BASE, scheduler=kind)
        return
    assert names.a1111_name(names.make_sampler(name, BASE)) == name
