"""Kandinsky 5 T2I generation core against diffusers' Kandinsky5T2IPipeline on tiny random components."""

from __future__ import annotations

import pytest
import torch

from kandi.models.k5_dit import K5DiT
from kandi.models.vae_flux import AutoencoderKL
from kandi.pipelines import k5
from kandi.schedulers.flow_match import FlowMatchEulerDiscreteScheduler

diffusers = pytest.importorskip("diffusers")
tiny_k5 = pytest.importorskip("tiny_k5")


@pytest.fixture(scope="module")
def comps(tmp_path_factory):
    return tiny_k5.t2i_components(tmp_path_factory.mktemp("k5"))


def _reference(comps, **call):
    pipe = diffusers.Kandinsky5T2IPipeline(
        **{**comps, "tokenizer": tiny_k5.ProcessorShim(comps["tokenizer"])}
    )
    pipe.resolutions = [(64, 64)]
    pipe.set_progress_bar_config(disable=True)
    return pipe(**call).image


def _ours(comps, prompt, negative, steps, g, seed):
    dit = K5DiT.from_config(dict(comps["transformer"].config)).eval()
    dit.load_state_dict(comps["transformer"].state_dict(), strict=True)
    vae = AutoencoderKL.from_config(dict(comps["vae"].config)).eval()
    vae.load_state_dict(comps["vae"].state_dict(), strict=True)
    sched = FlowMatchEulerDiscreteScheduler.from_config(comps["scheduler"].config)
    dev = torch.device("cpu")
    enc = lambda p: k5.encode_text(  # noqa: E731
        comps["tokenizer"],
        comps["text_encoder"],
        comps["tokenizer_2"],
        comps["text_encoder_2"],
        p,
        8,
        dev,
        torch.float32,
    )
    cond, uncond = enc([prompt]), (enc([negative]) if g > 1 else None)
    latents = k5.noise(1, 64, 64, torch.Generator().manual_seed(seed), dev, torch.float32)
    for step in k5.denoise(dit, sched, latents, cond, uncond, g, steps):
        latents = step.latents
    with torch.no_grad():
        return (k5.decode(vae, latents) * 0.5 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("g", [4.0, 1.0])
def test_core_matches_diffusers(comps, g) -> None:
    want = _reference(
        comps,
        prompt="a red square",
        negative_prompt="blurry",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=g,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        max_sequence_length=8,
    )
    got = _ours(comps, "a red square", "blurry", 2, g, 0)
    assert got.shape == want.shape == (1, 3, 16, 16)  # 64 px -> 8x8 latents; the tiny VAE upsamples 2x
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_snap_size_and_clean() -> None:
    assert k5.snap_size(1024, 1024, k5.RESOLUTIONS) == (1024, 1024)
    assert k5.snap_size(1920, 1080, k5.RESOLUTIONS) == (1280, 768)  # ratio 1.78: 1.67 is nearest
    assert k5.snap_size(100, 30, [(64, 64)]) == (64, 64)
    assert k5.clean_prompt("  a &amp;amp;  b\n c ") == "a & b c"
