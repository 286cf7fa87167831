"""Kandinsky 2.2 pipelines: kandi equals diffusers on the same tiny weights (fp32, same generator)."""

from __future__ import annotations

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

import kandi

TOL = 1e-4
SMALL = {"height": 32, "width": 32}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(*pipes):
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    return pipes


def assert_close(a, b, tol: float = TOL) -> None:
    if isinstance(a, list):  # PIL images
        a = np.stack([np.asarray(x, dtype=np.float64) for x in a])
        b = np.stack([np.asarray(x, dtype=np.float64) for x in b])
        tol = 1.0  # one 8-bit level
    a, b = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol, np.abs(a - b).max()


@pytest.fixture(scope="module")
def dp(k22_repos):
    prior = diffusers.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
    decoder = diffusers.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    combined = diffusers.KandinskyV22CombinedPipeline(
        **decoder.components, **{"prior_" + k: v for k, v in prior.components.items()}
    )
    quiet(prior, decoder, combined)
    return {"prior": prior, "decoder": decoder, "combined": combined}


@pytest.fixture(scope="module")
def kp(k22_repos):
    prior = kandi.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
    decoder = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    combined = kandi.KandinskyV22CombinedPipeline(
        **decoder.components, **{"prior_" + k: v for k, v in prior.components.items()}
    )
    quiet(prior, decoder, combined)
    return {"prior": prior, "decoder": decoder, "combined": combined}


PRIOR_CASES = {
    "one prompt": {"prompt": "a red fox"},
    "prompt list": {"prompt": ["a red fox", "a blue bird"]},
    "images per prompt": {"prompt": ["a red fox", "a blue bird"], "num_images_per_prompt": 2},
    "negative prompt": {"prompt": "a red fox", "negative_prompt": "blurry"},
    "negative list": {"prompt": ["a", "b"], "negative_prompt": ["c", "d"], "num_images_per_prompt": 2},
    "no guidance": {"prompt": "a red fox", "guidance_scale": 1.0},
    "guidance 7": {"prompt": "a red fox", "guidance_scale": 7.0},
    "one step": {"prompt": "a red fox", "num_inference_steps": 2},
    "long prompt": {"prompt": "a very long prompt " * 20},
    "russian": {"prompt": "Красная лиса в снежном лесу"},
    "np output": {"prompt": "a red fox", "output_type": "np"},
}


@pytest.mark.parametrize("case", PRIOR_CASES)
def test_prior_parity(dp, kp, case):
    kw = {"num_inference_steps": 5, **PRIOR_CASES[case]}
    a = dp["prior"](**kw, generator=gen(1))
    b = kp["prior"](**kw, generator=gen(1))
    assert_close(a.image_embeds, b.image_embeds)
    assert_close(a.negative_image_embeds, b.negative_image_embeds)
    assert type(b.image_embeds) is type(a.image_embeds)


def test_prior_generator_list_latents_and_tuple(dp, kp):
    lat = torch.randn(2, 32, generator=gen(3))
    kw = {"prompt": ["a", "b"], "num_inference_steps": 4, "latents": lat, "return_dict": False}
    a = dp["prior"](**kw, generator=[gen(5), gen(6)])
    b = kp["prior"](**kw, generator=[gen(5), gen(6)])
    assert isinstance(b, tuple) and len(b) == 2
    assert_close(a[0], b[0])
    assert_close(a[1], b[1])


def test_prior_output_to_tuple_and_indexing(kp):
    out = kp["prior"]("a fox", num_inference_steps=2, generator=gen())
    emb, neg = out.to_tuple()
    assert torch.equal(out[0], emb) and torch.equal(out["negative_image_embeds"], neg)
    assert torch.equal(out.image_embeds, emb)


def test_prior_callback_on_step_end(dp, kp):
    seen = {"diffusers": [], "kandi": []}

    def make(tag):
        def cb(pipe, i, t, kw):
            seen[tag].append((i, int(t), sorted(kw)))
            return {"latents": kw["latents"] * 0.9}

        return cb

    inputs = ["latents", "prompt_embeds", "text_mask"]
    kw = {"prompt": "a fox", "num_inference_steps": 4, "callback_on_step_end_tensor_inputs": inputs}
    a = dp["prior"](**kw, generator=gen(), callback_on_step_end=make("diffusers"))
    b = kp["prior"](**kw, generator=gen(), callback_on_step_end=make("kandi"))
    assert seen["kandi"] == seen["diffusers"]
    assert_close(a.image_embeds, b.image_embeds)


def test_zero_embed_is_cached(kp):
    prior = kp["prior"]
    calls = []
    handle = prior.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = prior.get_zero_embed(2)
        second = prior.get_zero_embed(3)
    finally:
        handle.remove()
    assert len(calls) <= 1  # computed at most once (possibly earlier, by another test)
    assert torch.equal(first[0], second[0]) and second.shape[0] == 3


def test_prior_interpolate_parity(dp, kp):
    img = PIL.Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype("uint8"))
    pixels = torch.randn(1, 3, 224, 224, generator=gen(4))
    items, weights = ["a cat", img, pixels], [0.3, 0.3, 0.4]
    for kw in ({}, {"num_images_per_prompt": 2}, {"negative_prompt": "low quality"}):
        a = dp["prior"].interpolate(items, weights, num_inference_steps=3, generator=gen(2), **kw)
        b = kp["prior"].interpolate(items, weights, num_inference_steps=3, generator=gen(2), **kw)
        assert_close(a.image_embeds, b.image_embeds)
        assert_close(a.negative_image_embeds, b.negative_image_embeds)


@pytest.fixture(scope="module")
def embeds(kp):
    out = kp["prior"](["a red fox", "a blue bird"], num_inference_steps=3, generator=gen(9))
    return out.image_embeds, out.negative_image_embeds


DECODER_CASES = {
    "default": {},
    "images per prompt": {"num_images_per_prompt": 2},
    "rounded size": {"height": 40, "width": 20},
    "wide": {"height": 32, "width": 64},
    "guidance 1.5": {"guidance_scale": 1.5},
    "np": {"output_type": "np"},
    "pt": {"output_type": "pt"},
    "latent": {"output_type": "latent"},
}


@pytest.mark.parametrize("case", DECODER_CASES)
def test_decoder_parity(dp, kp, embeds, case):
    kw = {**SMALL, "num_inference_steps": 4, "output_type": "np", **DECODER_CASES[case]}
    emb, neg = embeds
    a = dp["decoder"](image_embeds=emb, negative_image_embeds=neg, generator=gen(1), **kw).images
    b = kp["decoder"](image_embeds=emb, negative_image_embeds=neg, generator=gen(1), **kw).images
    assert type(b) is type(a)
    assert_close(a, b)


def test_decoder_pil_generator_list_latents(dp, kp, embeds):
    emb, neg = embeds
    lat = torch.randn(2, 4, 16, 16, generator=gen(8))
    kw = {**SMALL, "num_inference_steps": 3, "latents": lat}
    a = dp["decoder"](image_embeds=emb, negative_image_embeds=neg, generator=[gen(1), gen(2)], **kw).images
    b = kp["decoder"](image_embeds=emb, negative_image_embeds=neg, generator=[gen(1), gen(2)], **kw).images
    assert all(isinstance(x, PIL.Image.Image) for x in b) and len(b) == 2
    assert_close(a, b)


def test_decoder_embeds_as_lists_and_return_tuple(dp, kp, embeds):
    emb, neg = embeds
    kw = {**SMALL, "num_inference_steps": 2, "output_type": "np", "return_dict": False}
    a = dp["decoder"](
        image_embeds=[emb[:1], emb[1:]], negative_image_embeds=[neg[:1], neg[1:]], generator=gen(), **kw
    )
    b = kp["decoder"](
        image_embeds=[emb[:1], emb[1:]], negative_image_embeds=[neg[:1], neg[1:]], generator=gen(), **kw
    )
    assert isinstance(b, tuple)
    assert_close(a[0], b[0])


@pytest.mark.parametrize("sched", ["DDIMScheduler", "DDPMScheduler"])
def test_scheduler_swap_from_config(dp, kp, embeds, sched):
    emb, neg = embeds
    d = diffusers.KandinskyV22Pipeline(**dp["decoder"].components)
    k = kandi.KandinskyV22Pipeline(**kp["decoder"].components)
    quiet(d, k)
    d.scheduler = getattr(diffusers, sched).from_config(d.scheduler.config)
    k.scheduler = getattr(kandi, sched).from_config(k.scheduler.config)
    kw = {**SMALL, "num_inference_steps": 5, "output_type": "np"}
    assert_close(
        d(image_embeds=emb, negative_image_embeds=neg, generator=gen(), **kw).images,
        k(image_embeds=emb, negative_image_embeds=neg, generator=gen(), **kw).images,
    )


def test_decoder_callbacks(dp, kp, embeds):
    emb, neg = embeds
    log = {"diffusers": [], "kandi": []}

    def make(tag):
        def cb(pipe, i, t, kw):
            log[tag].append((i, int(t), tuple(kw["image_embeds"].shape)))
            return {"latents": kw["latents"] + 0.01}

        return cb

    kw = {**SMALL, "num_inference_steps": 3, "output_type": "np"}
    kw["callback_on_step_end_tensor_inputs"] = ["latents", "image_embeds"]
    a = dp["decoder"](
        image_embeds=emb,
        negative_image_embeds=neg,
        generator=gen(),
        callback_on_step_end=make("diffusers"),
        **kw,
    )
    b = kp["decoder"](
        image_embeds=emb, negative_image_embeds=neg, generator=gen(), callback_on_step_end=make("kandi"), **kw
    )
    assert log["kandi"] == log["diffusers"]
    assert_close(a.images, b.images)
    legacy = []
    kp["decoder"](
        image_embeds=emb,
        negative_image_embeds=neg,
        callback=lambda i, t, x: legacy.append(i),
        callback_steps=2,
        **kw,
    )
    assert legacy == [0, 2]


COMBINED_CASES = {
    "default": {"prompt": "a red fox"},
    "negative": {"prompt": "a red fox", "negative_prompt": "blurry"},
    "images per prompt": {"prompt": ["a red fox", "a cat"], "num_images_per_prompt": 2},
    "prior guidance 1": {"prompt": "a red fox", "prior_guidance_scale": 1.0},
    "rounded size": {"prompt": "a fox", "height": 50, "width": 32},
}


@pytest.mark.parametrize("case", COMBINED_CASES)
def test_combined_parity(dp, kp, case):
    kw = {**SMALL, "num_inference_steps": 3, "prior_num_inference_steps": 3, "output_type": "np"}
    kw.update(COMBINED_CASES[case])
    assert_close(dp["combined"](**kw, generator=gen(3)).images, kp["combined"](**kw, generator=gen(3)).images)


def test_combined_latents_go_to_prior(dp, kp):
    lat = torch.randn(1, 32, generator=gen(11))
    kw = {
        "prompt": "a fox",
        **SMALL,
        "num_inference_steps": 3,
        "prior_num_inference_steps": 3,
        "output_type": "pil",
    }
    assert_close(
        dp["combined"](**kw, latents=lat, generator=gen()).images,
        kp["combined"](**kw, latents=lat, generator=gen()).images,
    )


def test_components_from_pipe_and_rebuild(kp):
    comps = kp["combined"].components
    assert set(comps) == set(kandi.KandinskyV22CombinedPipeline._components)
    rebuilt = kandi.KandinskyV22Pipeline(**kp["decoder"].components)
    assert rebuilt.unet is kp["decoder"].unet
    dec = kandi.KandinskyV22Pipeline.from_pipe(kp["combined"])
    assert dec.unet is kp["combined"].unet and dec.movq is kp["combined"].movq
    prior = kandi.KandinskyV22PriorPipeline.from_pipe(kp["combined"])
    assert prior.prior is kp["combined"].prior_prior
    back = kandi.KandinskyV22CombinedPipeline.from_pipe(
        dec, **{"prior_" + k: v for k, v in prior.components.items()}
    )
    assert back.prior_text_encoder is kp["combined"].prior_text_encoder
    t2i = kandi.AutoPipelineForText2Image.from_pipe(
        dec, **{"prior_" + k: v for k, v in prior.components.items()}
    )
    assert isinstance(t2i, kandi.KandinskyV22CombinedPipeline)


def test_save_pretrained_round_trip_with_diffusers(tmp_path, kp, embeds):
    emb, neg = embeds
    kp["decoder"].save_pretrained(tmp_path / "dec")
    kp["prior"].save_pretrained(tmp_path / "prior")
    d_dec = diffusers.KandinskyV22Pipeline.from_pretrained(tmp_path / "dec")
    d_prior = diffusers.KandinskyV22PriorPipeline.from_pretrained(tmp_path / "prior")
    quiet(d_dec, d_prior)
    kw = {**SMALL, "num_inference_steps": 3, "output_type": "np"}
    assert_close(
        d_dec(image_embeds=emb, negative_image_embeds=neg, generator=gen(), **kw).images,
        kp["decoder"](image_embeds=emb, negative_image_embeds=neg, generator=gen(), **kw).images,
    )
    assert_close(d_prior("a", generator=gen()).image_embeds, kp["prior"]("a", generator=gen()).image_embeds)
    again = kandi.KandinskyV22Pipeline.from_pretrained(tmp_path / "dec")
    assert torch.equal(again.unet.conv_in.weight, kp["decoder"].unet.conv_in.weight)


# ----------------------------------------------------------------- loading by official id, offline


def test_auto_pipeline_by_official_id_offline(offline_hub, dp):
    pipe = kandi.AutoPipelineForText2Image.from_pretrained("kandinsky-community/kandinsky-2-2-decoder")
    assert isinstance(pipe, kandi.KandinskyV22CombinedPipeline)
    quiet(pipe)
    kw = {
        "prompt": "a red fox",
        **SMALL,
        "num_inference_steps": 3,
        "prior_num_inference_steps": 3,
        "output_type": "np",
    }
    assert_close(dp["combined"](**kw, generator=gen()).images, pipe(**kw, generator=gen()).images)


def test_diffusion_pipeline_resolves_class_and_connected(offline_hub):
    dec = kandi.DiffusionPipeline.from_pretrained("kandinsky-community/kandinsky-2-2-decoder")
    assert type(dec) is kandi.KandinskyV22Pipeline
    prior = kandi.DiffusionPipeline.from_pretrained("kandinsky-community/kandinsky-2-2-prior")
    assert type(prior) is kandi.KandinskyV22PriorPipeline
    both = kandi.DiffusionPipeline.from_pretrained(
        "kandinsky-community/kandinsky-2-2-decoder", load_connected_pipeline=True
    )
    assert type(both) is kandi.KandinskyV22CombinedPipeline
    comb = kandi.KandinskyV22CombinedPipeline.from_pretrained(
        "kandinsky-community/kandinsky-2-2-decoder", prior_scheduler=prior.scheduler
    )
    assert comb.prior_scheduler is prior.scheduler


def test_from_pretrained_torch_dtype_and_component_override(offline_hub):
    sched = kandi.DDIMScheduler.from_pretrained(
        "kandinsky-community/kandinsky-2-2-decoder", subfolder="scheduler"
    )
    pipe = kandi.KandinskyV22Pipeline.from_pretrained(
        "kandinsky-community/kandinsky-2-2-decoder", torch_dtype=torch.bfloat16, scheduler=sched
    )
    assert pipe.unet.dtype == torch.bfloat16 and pipe.movq.dtype == torch.bfloat16
    assert pipe.scheduler is sched
    prior = kandi.KandinskyV22PriorPipeline.from_pretrained(
        "kandinsky-community/kandinsky-2-2-prior", torch_dtype=torch.float16
    )
    assert prior.text_encoder.dtype == torch.float16 and prior.prior.dtype == torch.float16


def test_auto_pipeline_refuses_prior_repo(offline_hub):
    with pytest.raises(ValueError, match="AutoPipeline"):
        kandi.AutoPipelineForText2Image.from_pretrained("kandinsky-community/kandinsky-2-2-prior")


def test_utils_load_image_and_grid(tmp_path):
    img = PIL.Image.new("RGBA", (10, 6), (255, 0, 0, 128))
    img.save(tmp_path / "a.png")
    loaded = kandi.load_image(str(tmp_path / "a.png"))
    assert loaded.mode == "RGB" and loaded.size == (10, 6)
    from kandi.utils import load_image, make_image_grid

    assert load_image(loaded) is not None
    grid = make_image_grid([loaded] * 6, rows=2, cols=3)
    assert grid.size == (30, 12)
    with pytest.raises(ValueError, match="not found"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(str(tmp_path / "bad.png"))
