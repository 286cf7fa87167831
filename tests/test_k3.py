"""Kandinsky 3: both pipelines and both AutoPipelines against diffusers on the same tiny repo, then the
cases where kandi differs (a negative prompt for several prompts, masks kept with their prompts, the
text encoder on its own dtype, the prompt cache, sizes) and the errors."""

from __future__ import annotations

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from compare import close, gen

import kandi

PROMPTS = ["Красивый закат над горами", "日落时的山脉", "Schöne Berge über dem Fluss"]


def picture(seed: int, w: int = 64, h: int = 64) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def lib(k3_repo):
    out = {}
    for m in (diffusers, kandi):
        t2i = m.Kandinsky3Pipeline.from_pretrained(k3_repo)
        pipes = {"t2i": t2i, "img2img": m.Kandinsky3Img2ImgPipeline(**t2i.components)}
        for p in pipes.values():
            p.set_progress_bar_config(disable=True)
        out[m.__name__] = pipes
    return out


def both(lib, name: str, *args, **kwargs):
    seed = kwargs.pop("seed", 0)
    d = lib["diffusers"][name](*args, generator=gen(seed), **kwargs)
    k = lib["kandi"][name](*args, generator=gen(seed), **kwargs)
    return d, k


SMALL = dict(height=64, width=64, num_inference_steps=3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_type": "np"},
        {"output_type": "np", "negative_prompt": "low quality"},
        {"output_type": "np", "negative_prompt": ""},
        {"output_type": "pt", "num_images_per_prompt": 2},
        {"output_type": "pil", "guidance_scale": 1.0},
        {"output_type": "latent", "height": 64, "width": 128},
    ],
)
def test_t2i_parity(lib, kwargs):
    d, k = both(lib, "t2i", PROMPTS[0], **{**SMALL, **kwargs})
    close(d.images, k.images)


def test_t2i_parity_prompt_list_and_latents(lib):
    latents = torch.randn(3, 4, 8, 8, generator=gen(4))
    d, k = both(
        lib, "t2i", PROMPTS, negative_prompt=["a", "b", "c"], latents=latents, output_type="np", **SMALL
    )
    close(d.images, k.images)


def test_t2i_parity_with_prompt_embeddings_passed_back(lib):
    pe, ne, am, nm = lib["diffusers"]["t2i"].encode_prompt(
        PROMPTS[1], True, 1, "cpu", "dark", _cut_context=True
    )
    kpe, kne, kam, knm = lib["kandi"]["t2i"].encode_prompt(
        PROMPTS[1], True, 1, "cpu", "dark", _cut_context=True
    )
    for a, b in ((pe, kpe), (ne, kne), (am, kam), (nm, knm)):
        close(a, b)
    kw = dict(prompt_embeds=pe, negative_prompt_embeds=ne, attention_mask=am, negative_attention_mask=nm)
    d, k = both(lib, "t2i", output_type="np", **kw, **SMALL)
    close(d.images, k.images)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_type": "np"},
        {"output_type": "pt", "strength": 0.75, "negative_prompt": "blurry"},
        {"output_type": "np", "num_images_per_prompt": 2, "strength": 0.5},
        {"output_type": "latent", "strength": 1.0},
    ],
)
def test_img2img_parity(lib, kwargs):
    d, k = both(lib, "img2img", PROMPTS[2], image=picture(1, 128, 64), num_inference_steps=4, **kwargs)
    close(d.images, k.images)


def test_img2img_parity_tensor_images(lib):
    image = torch.rand(2, 3, 64, 64, generator=gen(2))
    d, k = both(
        lib, "img2img", PROMPTS[:2], image=image, strength=0.6, num_inference_steps=4, output_type="np"
    )
    close(d.images, k.images)


def test_auto_pipelines_by_official_id_and_fp16_variant(lib, k3_offline_hub):
    t2i = kandi.AutoPipelineForText2Image.from_pretrained(
        "kandinsky-community/kandinsky-3", variant="fp16", torch_dtype=torch.float32
    )
    assert type(t2i).__name__ == "Kandinsky3Pipeline" and t2i.unet.dtype == torch.float32
    i2i = kandi.AutoPipelineForImage2Image.from_pipe(t2i)
    assert type(i2i).__name__ == "Kandinsky3Img2ImgPipeline"
    ref = diffusers.AutoPipelineForText2Image.from_pretrained(
        "kandinsky-community/kandinsky-3", variant="fp16", torch_dtype=torch.float32
    )
    for p in (t2i, ref):
        p.set_progress_bar_config(disable=True)
    close(
        ref("a cat", generator=gen(3), output_type="np", **SMALL).images,
        t2i("a cat", generator=gen(3), output_type="np", **SMALL).images,
    )
    i2i2 = kandi.AutoPipelineForImage2Image.from_pretrained("kandinsky-3")  # short name
    assert type(i2i2).__name__ == "Kandinsky3Img2ImgPipeline"
    with pytest.raises(ValueError, match="inpaint"):
        kandi.AutoPipelineForInpainting.from_pretrained("kandinsky-community/kandinsky-3")


# ------------------------------------------------------------------------------- beyond diffusers


def test_one_negative_prompt_for_several_prompts(lib):
    with pytest.raises(TypeError):  # diffusers: "negative_prompt should be the same type to prompt"
        lib["diffusers"]["t2i"](
            PROMPTS[:2], negative_prompt="dark", generator=gen(0), output_type="np", **SMALL
        )
    out = lib["kandi"]["t2i"](
        PROMPTS[:2], negative_prompt="dark", generator=gen(0), output_type="np", **SMALL
    )
    same = lib["kandi"]["t2i"](PROMPTS[:2], negative_prompt=["dark"] * 2, generator=gen(0), output_type="np",
                               **SMALL)  # fmt: skip
    close(out.images, same.images)


def test_each_prompt_keeps_its_mask_with_several_images(lib):
    """Two prompts of different lengths, two images each: kandi gives what diffusers gives for the four
    prompts spelled out; diffusers itself tiles the masks [m0, m1, m0, m1] against [p0, p0, p1, p1]."""
    latents = torch.randn(4, 4, 8, 8, generator=gen(7))
    common = dict(latents=latents, output_type="np", **SMALL)
    spelled = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    ref = lib["diffusers"]["t2i"](spelled, generator=gen(5), **common).images
    ours = lib["kandi"]["t2i"](PROMPTS[:2], num_images_per_prompt=2, generator=gen(5), **common).images
    close(ref, ours)
    wrong = lib["diffusers"]["t2i"](PROMPTS[:2], num_images_per_prompt=2, generator=gen(5), **common).images
    assert np.abs(wrong - ref).max() > 1e-3


def test_prompt_cache_gives_the_same_images_and_skips_the_encoder(lib, monkeypatch):
    k = lib["kandi"]["t2i"]
    k.prompt_cache.clear()
    first = k(PROMPTS[0], generator=gen(2), output_type="np", **SMALL).images
    calls = []
    enc = k.text_encoder
    monkeypatch.setattr(enc, "forward", lambda *a, **kw: calls.append(1) or type(enc).forward(enc, *a, **kw))
    again = k(PROMPTS[0], generator=gen(2), output_type="np", **SMALL).images
    assert calls == []
    np.testing.assert_array_equal(first, again)


def test_text_encoder_in_another_dtype(lib, k3_repo):
    pipe = kandi.Kandinsky3Pipeline.from_pretrained(k3_repo)
    pipe.set_progress_bar_config(disable=True)
    pipe.text_encoder.to(torch.float64)  # its own dtype; its output is cast to the UNet's
    out = pipe(PROMPTS[0], generator=gen(0), output_type="np", **SMALL).images
    ref = lib["kandi"]["t2i"](PROMPTS[0], generator=gen(0), output_type="np", **SMALL).images
    close(out, ref, 1e-4)


def test_img2img_size_the_unet_cannot_take_is_rounded(lib):
    out = lib["kandi"]["img2img"]("a", image=picture(0, 70, 50), strength=0.5, num_inference_steps=2,
                                  output_type="np").images  # fmt: skip
    # the tiny MoVQ halves once and its 2-level UNet once more: sides round down to multiples of 4
    assert out.shape[1:3] == (48, 68)


def test_errors(lib):
    k = lib["kandi"]["t2i"]
    with pytest.raises(ValueError, match="prompt or prompt_embeds"):
        k(num_inference_steps=1)
    with pytest.raises(ValueError, match="attention_mask"):
        k(prompt_embeds=torch.zeros(1, 5, 32), num_inference_steps=1)
    with pytest.raises(ValueError, match="strength"):
        lib["kandi"]["img2img"]("a", image=picture(0), strength=2.0)
    with pytest.raises(ValueError, match="image"):
        lib["kandi"]["img2img"]("a", image=None)
    with pytest.raises(ValueError, match="output_type"):
        k("a", output_type="jpeg", num_inference_steps=1)


def test_multilingual_prompts_tokenized_as_transformers_does(lib):
    tok = lib["kandi"]["t2i"].tokenizer
    ids = tok(PROMPTS).input_ids
    assert all(tok.unk_token_id not in row for row in ids)
    images = [lib["kandi"]["t2i"](p, generator=gen(0), output_type="np", **SMALL).images for p in PROMPTS]
    assert np.abs(images[0] - images[1]).max() > 1e-3 and np.abs(images[1] - images[2]).max() > 1e-3
