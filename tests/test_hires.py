"""The hi-res pass on tiny 2.2 and 3 models: equal to the diffusers-compatible pipelines run one after the
other with one generator (text to image, resize, img2img), progress events, sizes, and its PNG fields."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
import torch

import kandi
from kandi import pngmeta
from kandi.configs import GenerationOptions
from kandi.pipelines import hires, k22, tasks
from kandi.pipelines.common import to_output
from kandi.pipelines.k3_tasks import K3Models
from kandi.pipelines.k22_tasks import K22Models, Progress, Result

OPTS = GenerationOptions("a red fox", width=64, height=64, steps=4, prior_steps=3, seed=11)


@pytest.fixture(scope="module")
def k22m(k22_repos) -> K22Models:
    return K22Models.load(str(k22_repos["decoder"]), str(k22_repos["prior"]))


@pytest.fixture(scope="module")
def k3m(k3_repo) -> K3Models:
    return K3Models.load(str(k3_repo))


def _images(events) -> list:
    return [e for e in events if isinstance(e, Result)][0].images


def _k22_reference(m: K22Models, opts: GenerationOptions, size: tuple[int, int], strength: float, steps: int,
                   latent: bool = False):  # fmt: skip
    """Prior, decoder at the base size, then Lanczos (or bilinear latents) and img2img, one generator."""
    prior = kandi.KandinskyV22PriorPipeline(m.prior, m.image_encoder, m.text_encoder, m.tokenizer, m.prior_scheduler,
                                            m.image_processor)  # fmt: skip
    dec = kandi.KandinskyV22Pipeline(m.unet, m.scheduler, m.movq)
    i2i = kandi.KandinskyV22Img2ImgPipeline(m.unet, m.scheduler, m.movq)
    for p in (prior, dec, i2i):
        p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(opts.seed)
    emb, neg = prior(opts.prompt, num_inference_steps=opts.prior_steps, guidance_scale=opts.prior_guidance_scale,
                     generator=g, return_dict=False)  # fmt: skip
    kw = {
        "image_embeds": emb,
        "negative_image_embeds": neg,
        "guidance_scale": opts.guidance_scale,
        "generator": g,
    }
    out = dec(height=opts.height, width=opts.width, num_inference_steps=opts.steps,
              output_type="latent" if latent else "pil", **kw).images  # fmt: skip
    if latent:
        sf = 2 ** (len(m.movq.config.block_out_channels) - 1)
        x = torch.nn.functional.interpolate(out, size=(size[1] // sf, size[0] // sf), mode="bilinear")
        with torch.no_grad():  # strength 0: no step runs
            return to_output(k22.decode(m.movq, x), "pil")[0]
    up = out[0].resize(size, resample=PIL.Image.LANCZOS)
    return i2i(
        image=up, height=size[1], width=size[0], strength=strength, num_inference_steps=steps, **kw
    ).images[0]


def test_k22_lanczos_pass_equals_the_pipelines_in_a_row(k22m):
    h = hires.HiresOptions(scale=2, strength=0.5, steps=6, upscaler="Lanczos")
    events = list(hires.hires_fix(k22m, OPTS, h))
    image = _images(events)[0]
    assert image.size == (128, 128)
    ref = _k22_reference(k22m, OPTS, (128, 128), 0.5, 6)
    assert list(image.getdata()) == list(ref.getdata())
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert stages == ["prior"] * 3 + ["decoder"] * 4 + ["hires"] * 3
    assert len(stages) == hires.hires_steps_per_image(k22m, OPTS, h)


def test_k22_latent_upscale_at_strength_zero_decodes_interpolated_latents(k22m):
    h = hires.HiresOptions(scale=1.5, strength=0.0, upscaler="Latent")
    image = _images(hires.hires_fix(k22m, OPTS, h))[0]
    assert image.size == (96, 96)  # a multiple of the tiny MoVQ's 4 px (64 px for the official ones)
    ref = _k22_reference(k22m, OPTS, (96, 96), 0.0, 4, latent=True)
    assert list(image.getdata()) == list(ref.getdata())


def test_k22_latent_pass_runs_the_hires_steps(k22m):
    h = hires.HiresOptions(scale=2, strength=0.75, steps=4, upscaler="latent-bicubic-antialiased")
    events = list(hires.hires_fix(k22m, OPTS, h))
    assert sum(isinstance(e, Progress) and e.stage == "hires" for e in events) == 3
    still = _images(hires.hires_fix(k22m, OPTS, replace(h, strength=0.0)))[0]
    assert list(_images(events)[0].getdata()) != list(still.getdata())


def test_each_image_runs_the_hires_pass_per_seed(k22m):
    h = hires.HiresOptions(scale=2, strength=0.5, steps=2, resize_x=192)
    made = [e for e in tasks.each_image(k22m, replace(OPTS, num_images=2), hires.hires_fix, hires=h)
            if isinstance(e, tasks.Made)]  # fmt: skip
    assert [m.seed for m in made] == [11, 12] and all(m.image.size == (192, 192) for m in made)
    alone = _images(hires.hires_fix(k22m, replace(OPTS, seed=12), h))[0]
    assert list(made[1].image.getdata()) == list(alone.getdata())


def test_k3_lanczos_pass_equals_the_pipelines_in_a_row(k3m):
    opts = replace(OPTS, steps=3)
    h = hires.HiresOptions(scale=2, strength=0.6, steps=5)
    events = list(hires.hires_fix(k3m, opts, h))
    image = _images(events)[0]
    t2i = kandi.Kandinsky3Pipeline(k3m.tokenizer, k3m.text_encoder, k3m.unet, k3m.scheduler, k3m.movq)
    i2i = kandi.Kandinsky3Img2ImgPipeline(k3m.tokenizer, k3m.text_encoder, k3m.unet, k3m.scheduler, k3m.movq)
    for p in (t2i, i2i):
        p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(opts.seed)
    kw = {"guidance_scale": opts.guidance_scale, "generator": g}
    base = t2i(opts.prompt, height=64, width=64, num_inference_steps=3, **kw).images[0]
    up = base.resize(image.size, resample=PIL.Image.LANCZOS)
    ref = i2i(opts.prompt, image=up, strength=0.6, num_inference_steps=5, **kw).images[0]
    assert image.size == (2 * base.width, 2 * base.height)
    assert list(image.getdata()) == list(ref.getdata())
    assert [e.stage for e in events if isinstance(e, Progress)] == ["decoder"] * 3 + ["hires"] * 3
    assert hires.hires_steps_per_image(k3m, opts, h) == 6


def test_k3_latent_pass(k3m):
    h = hires.HiresOptions(scale=2, strength=0.5, steps=2, upscaler="Latent (nearest)")
    image = _images(hires.hires_fix(k3m, replace(OPTS, steps=2), h))[0]
    base = _images(kandi.pipelines.k3_tasks.text_to_image(k3m, replace(OPTS, steps=2)))[0]
    assert image.size == (2 * base.width, 2 * base.height)


def test_target_size():
    assert hires.target_size(512, 768, hires.HiresOptions(scale=1.5)) == (768, 1152)
    assert hires.target_size(512, 768, hires.HiresOptions(resize_x=1024)) == (1024, 1536)
    assert hires.target_size(512, 768, hires.HiresOptions(resize_y=1024)) == (683, 1024)
    assert hires.target_size(512, 768, hires.HiresOptions(resize_x=900, resize_y=700)) == (900, 700)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"scale": 9}, "hires scale 9 is out of range"),
        ({"strength": 1.5}, "denoising strength 1.5"),
        ({"steps": -1}, "hires steps -1"),
        ({"resize_x": -5}, "resize_x -5"),
        ({"upscaler": "4x-UltraSharp"}, "needs its model file"),
    ],
)
def test_bad_options_fail_before_model_work(kw, match):
    with pytest.raises(ValueError, match=match):
        next(hires.hires_fix(None, OPTS, hires.HiresOptions(**kw)))


def test_upscaler_names():
    assert hires.canonical_upscaler("Latent (bicubic antialiased)") == "latent-bicubic-antialiased"
    assert hires.canonical_upscaler("None") == "lanczos"
    assert hires.upscaler_kind("R-ESRGAN 4x+") == "model"
    assert hires.upscaler_kind("Latent") == "latent" and hires.upscaler_kind("Nearest") == "pixel"


@pytest.mark.parametrize(
    "h",
    [
        hires.HiresOptions(scale=2, strength=0.5, steps=10, upscaler="lanczos"),
        hires.HiresOptions(scale=1.5, strength=0.35, upscaler="latent-nearest-exact", sampler="ddim"),
        hires.HiresOptions(
            scale=1.0,
            strength=0.7,
            steps=3,
            upscaler="4x-UltraSharp",
            model_path="/x.pth",
            resize_x=1024,
            resize_y=768,
        ),  # fmt: skip
    ],
)
def test_fields_round_trip_through_the_parameters_text(h):
    fields = hires.hires_fields(h)
    text = pngmeta.format_parameters({**OPTS.to_dict(), "seed": 11}, sampler="DDPM", size=(64, 64), version="0",
                                     extra=fields)  # fmt: skip
    parsed = pngmeta.parse_parameters(text)
    assert parsed["Size"] == "64x64"
    assert hires.parse_hires_fields(parsed, model_path=h.model_path) == h


def test_a1111_text_reads_back():
    line = "Steps: 20, Sampler: Euler a, Size: 512x512, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, "
    text = "a cat\n" + line + "Hires upscaler: Lanczos"
    h = hires.parse_hires_fields(pngmeta.parse_parameters(text))
    assert h == hires.HiresOptions(scale=2.0, strength=0.5, steps=10, upscaler="lanczos")
    assert "Hires upscale: 2, Hires steps: 10, Hires upscaler: Lanczos" in ", ".join(
        f"{k}: {v}" for k, v in hires.hires_fields(h).items()
    )
    assert hires.parse_hires_fields({"Denoising strength": 0.4}) is None  # img2img, no hi-res pass


def test_k22_pass_with_a_learned_upscaler(k22m, tmp_path):
    from kandi import upscale

    try:
        upscale.spandrel()
    except ImportError:
        pytest.skip("spandrel is not installed (pip install 'kandi[upscale]')")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    net = Compact(num_feat=8, num_conv=2, upscale=2)
    save_file(
        {k: torch.randn(v.shape) * 0.2 for k, v in net.state_dict().items()}, tmp_path / "c2.safetensors"
    )
    h = hires.HiresOptions(scale=2, strength=0.0, upscaler="c2", model_path=str(tmp_path / "c2.safetensors"))
    image = _images(hires.hires_fix(k22m, OPTS, h))[0]
    base = _images(kandi.pipelines.k22_tasks.text_to_image(k22m, OPTS))[0]
    up = upscale.upscale(base, 2, "c2", model_path=tmp_path / "c2.safetensors")
    # strength 0: the upscaled first pass, through the MoVQ once more (encode, decode)
    pixels = kandi.pipelines.images.preprocess(up, 128, 128)
    with torch.no_grad():
        ref = to_output(k22.decode(k22m.movq, k22.encode(k22m.movq, pixels)), "pil")[0]
    # (the decoder job encodes the image through its own ops: a rounding step may fall the other way)
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(ref, dtype=int))
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert hires.hires_fields(h)["Hires upscaler"] == "c2"


def test_k21_pass(k21_repos):
    m = K22Models.load(str(k21_repos["decoder"]), str(k21_repos["prior"]))
    assert m.k21
    still = hires.HiresOptions(scale=2, strength=0.0)
    image = _images(hires.hires_fix(m, OPTS, still))[0]
    base = _images(kandi.pipelines.k22_tasks.text_to_image(m, OPTS))[0]
    size = (2 * base.width, 2 * base.height)
    pixels = kandi.pipelines.images.preprocess(
        base.resize(size, resample=PIL.Image.LANCZOS), size[1], size[0]
    )
    with torch.no_grad():
        ref = to_output(k22.decode(m.movq, k22.encode(m.movq, pixels)), "pil")[0]
    assert image.size == size
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(ref, dtype=int)).max() <= 1
    for upscaler in ("lanczos", "latent"):
        h = hires.HiresOptions(scale=2, strength=0.5, steps=4, upscaler=upscaler)
        events = list(hires.hires_fix(m, OPTS, h))
        assert sum(isinstance(e, Progress) and e.stage == "hires" for e in events) == 2
        assert list(_images(events)[0].getdata()) != list(image.getdata())
