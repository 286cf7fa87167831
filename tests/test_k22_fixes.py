"""Where diffusers' Kandinsky 2.2 pipelines crash or mislead, kandi does the right thing (and says so)."""

from __future__ import annotations

import warnings

import diffusers
import numpy as np
import pytest
import torch

import kandi
from kandi.errors import KandiWarning

SMALL = {"height": 32, "width": 32}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipes(k22_repos):
    out = {}
    for lib in (diffusers, kandi):
        prior = lib.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
        dec = lib.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
        comb = lib.KandinskyV22CombinedPipeline(
            **dec.components, **{"prior_" + k: v for k, v in prior.components.items()}
        )
        for p in (prior, dec, comb):
            p.set_progress_bar_config(disable=True)
        out[lib.__name__] = {"prior": prior, "decoder": dec, "combined": comb}
    return out


@pytest.fixture(scope="module")
def emb(pipes):
    out = pipes["kandi"]["prior"]("a red fox", num_inference_steps=2, generator=gen())
    return out.image_embeds, out.negative_image_embeds


# ------------------------------------------------------------ guidance <= 1 with several images


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_decoder_unguided_several_images(pipes, emb, scale):
    e, n = emb
    kw = {
        **SMALL,
        "num_inference_steps": 3,
        "guidance_scale": scale,
        "num_images_per_prompt": 2,
        "output_type": "np",
    }
    with pytest.raises(RuntimeError):  # diffusers forgets to repeat the embeddings outside its CFG branch
        pipes["diffusers"]["decoder"](image_embeds=e, negative_image_embeds=n, generator=gen(), **kw)
    out = pipes["kandi"]["decoder"](
        image_embeds=e, negative_image_embeds=n, generator=[gen(1), gen(2)], **kw
    ).images
    assert out.shape == (2, 32, 32, 3)
    # each image is the one a single-image call makes with its own generator
    one = {**kw, "num_images_per_prompt": 1}
    for i, g in enumerate((gen(1), gen(2))):
        single = pipes["diffusers"]["decoder"](
            image_embeds=e, negative_image_embeds=n, generator=g, **one
        ).images
        np.testing.assert_allclose(out[i], single[0], atol=1e-4)


def test_combined_unguided_several_images(pipes):
    kw = {"prompt": "a fox", **SMALL, "num_inference_steps": 2, "prior_num_inference_steps": 2,
          "guidance_scale": 1.0, "num_images_per_prompt": 3, "output_type": "np"}  # fmt: skip
    # diffusers survives this one (its combined pipeline calls the decoder with one image per embedding)
    ref = pipes["diffusers"]["combined"](**kw, generator=gen()).images
    out = pipes["kandi"]["combined"](**kw, generator=gen()).images
    assert out.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(out, ref, atol=1e-4)


# --------------------------------------------------------------- one negative prompt for many


def test_single_negative_string_for_a_batch(pipes):
    prompts = ["a red fox", "a blue bird", "a green frog"]
    kw = {"num_inference_steps": 3, "guidance_scale": 4.0}
    with pytest.raises(ValueError):  # diffusers needs one negative per prompt
        pipes["diffusers"]["prior"](prompts, negative_prompt="blurry", generator=gen(), **kw)
    ours = pipes["kandi"]["prior"](prompts, negative_prompt="blurry", generator=gen(), **kw)
    ref = pipes["diffusers"]["prior"](prompts, negative_prompt=["blurry"] * 3, generator=gen(), **kw)
    torch.testing.assert_close(ours.image_embeds, ref.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.negative_image_embeds, ref.negative_image_embeds, atol=1e-5, rtol=0)


def test_combined_batch_with_one_negative(pipes):
    kw = {**SMALL, "num_inference_steps": 2, "prior_num_inference_steps": 2, "output_type": "np"}
    out = pipes["kandi"]["combined"](["a", "b"], negative_prompt="ugly", generator=gen(), **kw).images
    ref = pipes["diffusers"]["combined"](
        ["a", "b"], negative_prompt=["ugly", "ugly"], generator=gen(), **kw
    ).images
    np.testing.assert_allclose(out, ref, atol=1e-4)


# ------------------------------------------------------------------------ argument validation

DECODER_BAD = [
    ({"height": 0}, ValueError, "height"),
    ({"height": -64}, ValueError, "height"),
    ({"width": 64.5}, TypeError, "width"),
    ({"width": "512"}, TypeError, "width"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 5000}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 2.0}, TypeError, "num_inference_steps"),
    ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
    ({"guidance_scale": "high"}, TypeError, "guidance_scale"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"output_type": "jpeg"}, ValueError, "output_type"),
    ({"generator": [torch.Generator()] * 3}, ValueError, "generator"),
    ({"generator": 42}, TypeError, "generator"),
    ({"latents": torch.zeros(1, 4, 8, 8)}, ValueError, "latents"),
    ({"latents": np.zeros((1, 4, 16, 16))}, TypeError, "latents"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "callback_on_step_end_tensor_inputs"),
    ({"prompt": "a cat"}, TypeError, "takes no prompt"),
    ({"strength": 0.5}, TypeError, "unexpected"),
]


@pytest.mark.parametrize("bad,exc,word", DECODER_BAD, ids=[str(b[0])[:40] for b in DECODER_BAD])
def test_decoder_validation(pipes, emb, bad, exc, word):
    e, n = emb
    pipe = pipes["kandi"]["decoder"]
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(exc, match=word):
            pipe(**{"image_embeds": e, "negative_image_embeds": n, **SMALL, "num_inference_steps": 2, **bad})
    finally:
        handle.remove()
    assert not calls  # rejected before any model work


@pytest.mark.parametrize(
    "e,n,exc,word",
    [
        ("a cat", None, TypeError, "not a prompt"),
        (torch.zeros(1, 7), None, ValueError, "image_embeds"),
        (None, torch.zeros(2, 32), ValueError, "negative_image_embeds"),
        (torch.zeros(1, 32, dtype=torch.long), None, TypeError, "floating"),
        ([1, 2], None, TypeError, "image_embeds"),
    ],
)
def test_decoder_embedding_checks(pipes, emb, e, n, exc, word):
    e = emb[0] if e is None else e
    n = emb[1] if n is None else n
    with pytest.raises(exc, match=word):
        pipes["kandi"]["decoder"](image_embeds=e, negative_image_embeds=n, **SMALL)


def test_positional_prompt_to_decoder_is_clear(pipes, emb):
    # a prompt where the decoder expects embeddings (diffusers fails deep inside the UNet)
    with pytest.raises(TypeError, match="prior"):
        pipes["kandi"]["decoder"]("a fox", negative_image_embeds=emb[1], **SMALL)


def test_single_negative_embedding_broadcasts(pipes, emb):
    e, n = emb
    e2 = torch.cat([e, e])
    out = pipes["kandi"]["decoder"](image_embeds=e2, negative_image_embeds=n, **SMALL, num_inference_steps=2,
                                     output_type="np", generator=gen())  # fmt: skip
    assert out.images.shape[0] == 2


PRIOR_BAD = [
    ({"prompt": 3}, TypeError, "prompt"),
    ({"prompt": []}, ValueError, "prompt"),
    ({"prompt": ["a", 3]}, TypeError, "prompt"),
    ({"negative_prompt": ["x", "y"]}, ValueError, "negative_prompt"),
    ({"negative_prompt": 5}, TypeError, "negative_prompt"),
    ({"num_images_per_prompt": -1}, ValueError, "num_images_per_prompt"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"output_type": "pil"}, ValueError, "output_type"),
    ({"latents": torch.zeros(2, 32)}, ValueError, "latents"),
    ({"generator": [torch.Generator()] * 2}, ValueError, "generator"),
    ({"callback_on_step_end_tensor_inputs": ["image_embeds"]}, ValueError, "callback"),
]


@pytest.mark.parametrize("bad,exc,word", PRIOR_BAD, ids=[str(b[0])[:40] for b in PRIOR_BAD])
def test_prior_validation(pipes, bad, exc, word):
    pipe = pipes["kandi"]["prior"]
    calls = []
    handle = pipe.prior.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(exc, match=word):
            pipe(**{"prompt": "a cat", "num_inference_steps": 2, **bad})
    finally:
        handle.remove()
    assert not calls


def test_combined_checks_decoder_args_before_prior(pipes):
    pipe = pipes["kandi"]["combined"]
    calls = []
    handle = pipe.prior_prior.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="height"):
            pipe("a cat", height=0, prior_num_inference_steps=2)
    finally:
        handle.remove()
    assert not calls


def test_interpolate_checks(pipes):
    prior = pipes["kandi"]["prior"]
    with pytest.raises(ValueError, match="weights"):
        prior.interpolate(["a", "b"], [1.0])
    with pytest.raises(TypeError, match="images_and_prompts"):
        prior.interpolate([3], [1.0])


def test_decoder_rejects_inpaint_unet(pipes, emb):
    import tiny

    from kandi.models.unet2 import UNet2

    dec = pipes["kandi"]["decoder"]
    unet = UNet2.from_config(tiny.tiny_kwargs("tiny-k22-inpaint", "unet"))
    pipe = kandi.KandinskyV22Pipeline(unet=unet, scheduler=dec.scheduler, movq=dec.movq)
    with pytest.raises(ValueError, match="9 channels"):
        pipe(image_embeds=emb[0], negative_image_embeds=emb[1], **SMALL)


def test_one_step_prior_schedule(pipes):
    # diffusers' UnCLIP scheduler divides by zero for one step; kandi runs a one-step prior
    with pytest.raises(ZeroDivisionError):
        pipes["diffusers"]["prior"]("a fox", num_inference_steps=1, generator=gen())
    out = pipes["kandi"]["prior"]("a fox", num_inference_steps=1, generator=gen())
    assert torch.isfinite(out.image_embeds).all()


def test_no_futurewarning_from_combined(pipes):
    # diffusers' combined pipeline warns about callback_steps on every call; kandi does not
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pipes["kandi"]["combined"]("a", **SMALL, num_inference_steps=2, prior_num_inference_steps=2)
    assert not [x for x in w if issubclass(x.category, FutureWarning | KandiWarning)]
