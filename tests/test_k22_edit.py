"""Kandinsky 2.2 image editing: img2img, inpainting, ControlNet, emb2emb and the combined pipelines.

Parity with diffusers on the same tiny weights (fp32, same generator), then the cases where diffusers
is wrong, and kandi's additions (outpainting, paste-back, inpainting strength, hints from files, mix).
"""

from __future__ import annotations

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from compare import close, gen

import kandi


def quiet(*pipes):
    for p in pipes:
        p.set_progress_bar_config(disable=True)


def picture(seed: int, size: int = 32, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    return PIL.Image.fromarray(arr).convert(mode)


def square_mask(size: int = 32, box=(8, 8, 24, 24)) -> PIL.Image.Image:
    m = PIL.Image.new("L", (size, size), 0)
    m.paste(255, box)
    return m


@pytest.fixture(scope="module")
def lib(k22_repos, k22_edit_repos):
    """{"diffusers": {...}, "kandi": {...}}: every 2.2 editing pipeline of each library."""
    out = {}
    for m in (diffusers, kandi):
        prior = m.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
        dec = m.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
        inp = m.KandinskyV22InpaintPipeline.from_pretrained(k22_edit_repos["inpaint"])
        ctl = m.KandinskyV22ControlnetPipeline.from_pretrained(k22_edit_repos["controlnet"])
        p = {
            "prior": prior,
            "emb2emb": m.KandinskyV22PriorEmb2EmbPipeline(**prior.components),
            "img2img": m.KandinskyV22Img2ImgPipeline(**dec.components),
            "inpaint": inp,
            "controlnet": ctl,
            "controlnet_img2img": m.KandinskyV22ControlnetImg2ImgPipeline(**ctl.components),
        }
        pc = {"prior_" + k: v for k, v in prior.components.items()}
        p["img2img_combined"] = m.KandinskyV22Img2ImgCombinedPipeline(**dec.components, **pc)
        p["inpaint_combined"] = m.KandinskyV22InpaintCombinedPipeline(**inp.components, **pc)
        quiet(*p.values())
        out[m.__name__] = p
    return out


@pytest.fixture(scope="module")
def emb(lib):
    out = lib["kandi"]["prior"](["a red fox", "a blue bird"], num_inference_steps=2, generator=gen(5))
    return out.image_embeds, out.negative_image_embeds


def both(lib, name, **kw):
    return [lib[m][name](**kw, generator=gen(1)) for m in ("diffusers", "kandi")]


# -------------------------------------------------------------------------------------- img2img

IMG2IMG = {
    "pil": {"image": picture(0)},
    "strength 0.8": {"image": picture(0), "strength": 0.8},
    "strength 1": {"image": picture(0), "strength": 1.0},
    "images per prompt": {"image": picture(0), "num_images_per_prompt": 2},
    "tensor in [0,1]": {"image": torch.rand(1, 3, 32, 32, generator=gen(3))},
    "pt output": {"image": picture(0), "output_type": "pt"},
    "np output": {"image": picture(0), "output_type": "np"},
    "bigger image resized": {"image": picture(0, 48)},
}


@pytest.mark.parametrize("case", IMG2IMG)
def test_img2img_parity(lib, emb, case):
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "height": 32, "width": 32,
          "num_inference_steps": 6, **IMG2IMG[case]}  # fmt: skip
    a, b = both(lib, "img2img", **kw)
    close(a.images, b.images)


def test_img2img_batch_of_images(lib, emb):
    kw = {"image_embeds": emb[0], "negative_image_embeds": emb[1], "image": [picture(0), picture(1)],
          "height": 32, "width": 32, "num_inference_steps": 5, "output_type": "np"}  # fmt: skip
    a, b = both(lib, "img2img", **kw)
    close(a.images, b.images)


# -------------------------------------------------------------------------------------- inpaint

INPAINT = {
    "pil": {"image": picture(0), "mask_image": square_mask()},
    "numpy mask": {"image": picture(0), "mask_image": (np.asarray(square_mask()) / 255.0).astype(np.float32)},
    "tensors": {
        "image": torch.rand(1, 3, 32, 32, generator=gen(4)) * 2 - 1,
        "mask_image": torch.from_numpy(np.asarray(square_mask()) / 255.0).float()[None],
    },
    "images per prompt": {"image": picture(0), "mask_image": square_mask(), "num_images_per_prompt": 2},
    "guidance 1.5": {"image": picture(0), "mask_image": square_mask(), "guidance_scale": 1.5},
    "latent output": {"image": picture(0), "mask_image": square_mask(), "output_type": "latent"},
    "pt output": {"image": picture(0), "mask_image": square_mask(), "output_type": "pt"},
}


@pytest.mark.parametrize("case", INPAINT)
def test_inpaint_parity(lib, emb, case):
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "height": 32, "width": 32,
          "num_inference_steps": 4, "output_type": "np", **INPAINT[case]}  # fmt: skip
    fresh = lambda: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}  # noqa: E731
    a = lib["diffusers"]["inpaint"](**fresh(), generator=gen(1))  # diffusers edits tensor masks in place
    b = lib["kandi"]["inpaint"](**fresh(), generator=gen(1))
    close(a.images, b.images)


def test_inpaint_callback_inputs_and_latents(lib, emb):
    seen = {}

    def cb(tag):
        def f(pipe, i, t, kw):
            seen.setdefault(tag, []).append({k: tuple(v.shape) for k, v in kw.items()})
            return {}

        return f

    lat = torch.randn(1, 4, 16, 16, generator=gen(7))
    inputs = ["latents", "masked_image", "mask_image"]
    for m in ("diffusers", "kandi"):
        out = lib[m]["inpaint"](image_embeds=emb[0][:1], negative_image_embeds=emb[1][:1], image=picture(0),
                                mask_image=square_mask(), height=32, width=32, num_inference_steps=3, latents=lat,
                                output_type="np", callback_on_step_end=cb(m),
                                callback_on_step_end_tensor_inputs=inputs, generator=gen())  # fmt: skip
        seen[m + "_img"] = out.images
    assert seen["kandi"] == seen["diffusers"]
    close(seen["diffusers_img"], seen["kandi_img"])


def test_inpaint_mask_is_not_modified_in_place(lib, emb):
    mask = torch.full((1, 1, 32, 32), 0.7)
    lib["kandi"]["inpaint"](image_embeds=emb[0][:1], negative_image_embeds=emb[1][:1],
                            image=torch.zeros(1, 3, 32, 32), mask_image=mask, height=32, width=32,
                            num_inference_steps=2)  # fmt: skip
    assert torch.all(mask == 0.7)  # diffusers binarises the caller's tensor in place


# ------------------------------------------------------------------------------------ controlnet


# The controlnet models' tiny 4-level MoVQ amplifies fp32 rounding: kandi's decode (folded upsampling
# convs) is as close to diffusers' float64 decode as diffusers' fp32 one (test_models_movq_prior), yet
# the two fp32 images differ by up to ~1.1e-4, a thirtieth of a uint8 level.
MOVQ4_TOL = 3e-4


def test_controlnet_parity(lib, emb):
    hint = torch.rand(2, 3, 64, 64, generator=gen(2))
    for kw in ({}, {"num_images_per_prompt": 2}, {"output_type": "pt"}):
        a, b = both(lib, "controlnet", image_embeds=emb[0], negative_image_embeds=emb[1], hint=hint, height=64,
                    width=64, num_inference_steps=4, **{"output_type": "np", **kw})  # fmt: skip
        close(a.images, b.images, MOVQ4_TOL)


def test_controlnet_img2img_parity(lib, emb):
    hint = torch.rand(1, 3, 64, 64, generator=gen(2))
    for kw in ({}, {"strength": 0.7, "num_images_per_prompt": 2}, {"output_type": "pt"}):
        a, b = both(lib, "controlnet_img2img", image_embeds=emb[0][:1], negative_image_embeds=emb[1][:1],
                    image=picture(3, 64), hint=hint, height=64, width=64, num_inference_steps=5,
                    **{"output_type": "np", **kw})  # fmt: skip
        close(a.images, b.images, MOVQ4_TOL)


# --------------------------------------------------------------------------------------- emb2emb

EMB2EMB = {
    "pil": {"prompt": "a red fox", "image": picture(0, 224)},
    "strength 0.8 n2": {
        "prompt": "a red fox",
        "image": picture(0, 224),
        "strength": 0.8,
        "num_images_per_prompt": 2,
    },
    "negative": {"prompt": "a red fox", "image": picture(0, 224), "negative_prompt": "blurry"},
    "embeds": {"prompt": ["a", "b"], "image": torch.randn(2, 32, generator=gen(6))},
    "pixels": {"prompt": "a", "image": torch.randn(1, 3, 224, 224, generator=gen(6))},
}


@pytest.mark.parametrize("case", EMB2EMB)
def test_emb2emb_parity(lib, case):
    a, b = both(lib, "emb2emb", num_inference_steps=6, **EMB2EMB[case])
    close(a.image_embeds, b.image_embeds)
    close(a.negative_image_embeds, b.negative_image_embeds)


# -------------------------------------------------------------------------------------- combined


def test_combined_img2img_and_inpaint_parity(lib):
    common = {"prompt": "a red fox", "height": 32, "width": 32, "num_inference_steps": 4,
              "prior_num_inference_steps": 3, "output_type": "np"}  # fmt: skip
    a, b = both(lib, "img2img_combined", image=picture(0), strength=0.6, **common)
    close(a.images, b.images)
    a, b = both(lib, "inpaint_combined", image=picture(0), mask_image=square_mask(), **common)
    close(a.images, b.images)
    a, b = both(
        lib, "inpaint_combined", image=picture(0), mask_image=square_mask(), negative_prompt="ugly", **common
    )
    close(a.images, b.images)


def test_auto_pipelines_by_official_id(offline_hub, lib):
    i2i = kandi.AutoPipelineForImage2Image.from_pretrained("kandinsky-community/kandinsky-2-2-decoder")
    inp = kandi.AutoPipelineForInpainting.from_pretrained("kandinsky-community/kandinsky-2-2-decoder-inpaint")
    assert isinstance(i2i, kandi.KandinskyV22Img2ImgCombinedPipeline)
    assert isinstance(inp, kandi.KandinskyV22InpaintCombinedPipeline)
    quiet(i2i, inp)
    common = {"prompt": "a fox", "height": 32, "width": 32, "num_inference_steps": 3, "prior_num_inference_steps": 2,
              "output_type": "np"}  # fmt: skip
    close(lib["diffusers"]["img2img_combined"](image=picture(0), strength=0.7, **common, generator=gen()).images,
          i2i(image=picture(0), strength=0.7, **common, generator=gen()).images)  # fmt: skip
    close(lib["diffusers"]["inpaint_combined"](image=picture(0), mask_image=square_mask(), **common, generator=gen()).images,
          inp(image=picture(0), mask_image=square_mask(), **common, generator=gen()).images)  # fmt: skip
    t2i = kandi.AutoPipelineForText2Image.from_pipe(i2i)
    assert isinstance(t2i, kandi.KandinskyV22CombinedPipeline) and t2i.unet is i2i.unet
    back = kandi.AutoPipelineForImage2Image.from_pipe(t2i)
    assert isinstance(back, kandi.KandinskyV22Img2ImgCombinedPipeline)
    dec = kandi.DiffusionPipeline.from_pretrained("kandinsky-community/kandinsky-2-2-decoder-inpaint")
    assert type(dec) is kandi.KandinskyV22InpaintPipeline
    cn = kandi.DiffusionPipeline.from_pretrained("kandinsky-community/kandinsky-2-2-controlnet-depth")
    assert type(cn) is kandi.KandinskyV22ControlnetPipeline


# ================================================================= where diffusers is wrong


def test_batched_inpaint_keeps_each_images_known_region(lib, emb):
    imgs, masks = [picture(10), picture(11)], [square_mask(), square_mask(box=(0, 0, 12, 32))]
    kw = {"height": 32, "width": 32, "num_inference_steps": 3, "output_type": "latent"}
    for m in ("diffusers", "kandi"):
        batch = lib[m]["inpaint"](image_embeds=emb[0], negative_image_embeds=emb[1], image=imgs, mask_image=masks,
                                  generator=[gen(1), gen(2)], **kw).images  # fmt: skip
        single = lib[m]["inpaint"](image_embeds=emb[0][1:], negative_image_embeds=emb[1][1:], image=imgs[1],
                                   mask_image=masks[1], generator=gen(2), **kw).images  # fmt: skip
        err = (batch[1] - single[0]).abs().max().item()
        if m == "diffusers":
            assert err > 1e-2  # the second sample got the first image's kept region
        else:
            assert err < 1e-4


@pytest.mark.parametrize("name", ["img2img", "inpaint", "controlnet", "controlnet_img2img"])
def test_unguided_several_images_in_every_decoder(lib, emb, name):
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "guidance_scale": 1.0,
          "num_images_per_prompt": 2, "num_inference_steps": 4, "output_type": "np"}  # fmt: skip
    if name in ("img2img", "controlnet_img2img"):
        kw["strength"] = 0.5  # two steps
    size = 64 if "controlnet" in name else 32
    kw.update(height=size, width=size)
    if name != "controlnet":
        kw["image"] = picture(0, size)
    if name == "inpaint":
        kw["mask_image"] = square_mask()
    if "controlnet" in name:
        kw["hint"] = torch.rand(1, 3, 64, 64, generator=gen())
    with pytest.raises(RuntimeError):
        lib["diffusers"][name](**kw, generator=gen())
    assert lib["kandi"][name](**kw, generator=gen()).images.shape == (2, size, size, 3)


def test_emb2emb_interpolate_with_text_and_real_negative(lib):
    items, weights = ["a cat", picture(0, 224)], [0.6, 0.4]
    with pytest.raises(TypeError):
        lib["diffusers"]["emb2emb"].interpolate(items, weights, num_inference_steps=3, generator=gen())
    ours = lib["kandi"]["emb2emb"].interpolate(items, weights, num_inference_steps=3, generator=gen())
    ref = lib["diffusers"]["prior"].interpolate(items, weights, num_inference_steps=3, generator=gen())
    close(ref.image_embeds, ours.image_embeds)
    close(ref.negative_image_embeds, ours.negative_image_embeds)  # the zero-image embedding, not noise


def test_image_modes_are_converted(lib, emb):
    pipe = lib["kandi"]["img2img"]
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "height": 32, "width": 32,
          "num_inference_steps": 2, "output_type": "np"}  # fmt: skip
    rgb = picture(0)
    ref = pipe(image=rgb, generator=gen(), **kw).images
    rgba = rgb.convert("RGBA")
    close(ref, pipe(image=rgba, generator=gen(), **kw).images)  # opaque alpha changes nothing
    grey16 = PIL.Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    for odd in (rgb.convert("L"), grey16, np.asarray(rgb), np.asarray(rgb.convert("L")), rgb.convert("P")):
        assert pipe(image=odd, generator=gen(), **kw).images.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="latents"):  # a 4-channel tensor is not silently sent to the MoVQ
        pipe(image=torch.zeros(1, 4, 32, 32), **kw)


def test_wrong_sizes_are_resized(lib, emb):
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "num_inference_steps": 2,
          "output_type": "np"}  # fmt: skip
    ctl = lib["kandi"]["controlnet"]
    ref = ctl(
        hint=torch.rand(1, 3, 64, 64, generator=gen(9)), height=64, width=64, generator=gen(), **kw
    ).images
    small = ctl(
        hint=torch.rand(1, 3, 32, 32, generator=gen(9)), height=64, width=64, generator=gen(), **kw
    ).images
    assert small.shape == ref.shape
    inp = lib["kandi"]["inpaint"]
    mask = np.zeros((50, 70), dtype=np.float32)
    mask[10:30, 10:40] = 1
    out = inp(image=picture(0, 80), mask_image=mask, height=32, width=32, generator=gen(), **kw).images
    assert out.shape == (1, 32, 32, 3)
    odd = lib["kandi"]["img2img"](image=picture(0), height=40, width=50, generator=gen(), **kw).images
    # rounded up to what the UNet takes: multiples of movq_scale_factor**2 (64 px for the real MoVQ; this tiny
    # one downsamples 2x, so 4 px); diffusers floors to the scale factor and the UNet then fails on shapes
    assert odd.shape == (1, 40, 52, 3)


BAD = [
    ("img2img", {"strength": 1.5}, ValueError, "strength"),
    ("img2img", {"strength": -0.1}, ValueError, "strength"),
    ("img2img", {"image": None}, ValueError, "image"),
    ("img2img", {"image": "/no/such/file.png"}, ValueError, "not found"),
    ("img2img", {"image": 42}, TypeError, "image"),
    ("inpaint", {"mask_image": None}, ValueError, "mask_image"),
    ("inpaint", {"image": None}, ValueError, "image"),
    ("inpaint", {"strength": 2}, ValueError, "strength"),
    ("inpaint", {"mask_image": torch.zeros(1, 1, 32, 32)}, TypeError, "mask_image"),
    ("controlnet", {"hint": None}, ValueError, "hint"),
    ("controlnet", {"hint": torch.zeros(3, 2, 64, 64)}, ValueError, "hint"),
    ("controlnet_img2img", {"strength": 7}, ValueError, "strength"),
    ("controlnet_img2img", {"image": None}, ValueError, "image"),
]


@pytest.mark.parametrize("name,bad,exc,word", BAD, ids=[f"{b[0]}-{list(b[1])[0]}" for b in BAD])
def test_bad_inputs_are_named(lib, emb, name, bad, exc, word):
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "num_inference_steps": 2,
          "height": 64, "width": 64}  # fmt: skip
    if name != "controlnet":
        kw["image"] = picture(0, 64)
    if name == "inpaint":
        kw["mask_image"] = square_mask(64)
    if "controlnet" in name:
        kw["hint"] = torch.rand(1, 3, 64, 64)
    kw.update(bad)
    with pytest.raises(exc, match=word):
        lib["kandi"][name](**kw)


def test_emb2emb_bad_inputs(lib):
    with pytest.raises(ValueError, match="strength"):
        lib["kandi"]["emb2emb"]("a", image=picture(0), strength=1.2)
    with pytest.raises(ValueError, match="image"):
        lib["kandi"]["emb2emb"]("a", image=None)


# ============================================================================ beyond diffusers


def test_outpainting_keeps_the_original_pixels(lib):
    pipe = lib["kandi"]["inpaint_combined"]
    src = picture(21, 24)
    out = pipe.outpaint("a landscape", src, left=8, top=0, right=13, bottom=5, num_inference_steps=2,
                        prior_num_inference_steps=2, generator=gen()).images[0]  # fmt: skip
    assert out.size == (8 + 24 + 13, 24 + 5)
    np.testing.assert_array_equal(np.asarray(out)[0:24, 8:32], np.asarray(src))
    with pytest.raises(ValueError, match="margin"):
        pipe.outpaint("x", src, left=-1)


def test_paste_back_keeps_unmasked_pixels_exactly(lib, emb):
    pipe = lib["kandi"]["inpaint"]
    img, mask = picture(5), square_mask()
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "image": img, "mask_image": mask,
          "height": 32, "width": 32, "num_inference_steps": 2}  # fmt: skip
    plain = np.asarray(pipe(**kw, generator=gen()).images[0], dtype=int)
    kept = np.asarray(mask) == 0
    assert np.abs(plain[kept] - np.asarray(img, dtype=int)[kept]).max() > 0  # the MoVQ round trip drifts
    for feather in (0, 3):
        out = np.asarray(
            pipe(**kw, paste_back=True, paste_back_feather=feather, generator=gen()).images[0], dtype=int
        )
        np.testing.assert_array_equal(out[kept], np.asarray(img, dtype=int)[kept])
    inside = np.asarray(mask) == 255
    feathered = np.asarray(
        pipe(**kw, paste_back=True, paste_back_feather=3, generator=gen()).images[0], dtype=int
    )
    assert (feathered[inside] != plain[inside]).any()  # the soft edge blends inside the mask


def test_inpaint_strength_starts_from_the_noised_image(lib, emb):
    pipe = lib["kandi"]["inpaint"]
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "image": picture(5),
          "mask_image": square_mask(), "height": 32, "width": 32, "num_inference_steps": 10, "output_type": "np"}  # fmt: skip
    src = np.asarray(picture(5), dtype=np.float32)[8:24, 8:24] / 255
    full = pipe(**kw, generator=gen()).images[0][8:24, 8:24]
    light = pipe(**kw, strength=0.2, generator=gen()).images[0][8:24, 8:24]
    assert np.abs(light - src).mean() < np.abs(full - src).mean()
    assert not np.allclose(light, full)


def test_hint_from_depth_file_and_array(lib, emb, tmp_path):
    depth = (np.random.default_rng(3).random((40, 50)) * 65535).astype(np.uint16)
    PIL.Image.fromarray(depth).save(tmp_path / "depth.png")
    ctl = lib["kandi"]["controlnet"]
    kw = {"image_embeds": emb[0][:1], "negative_image_embeds": emb[1][:1], "height": 64, "width": 64,
          "num_inference_steps": 2, "output_type": "np"}  # fmt: skip
    a = ctl(hint=str(tmp_path / "depth.png"), generator=gen(), **kw).images
    b = ctl(hint=depth, generator=gen(), **kw).images
    close(a, b, 1e-5)
    from kandi.pipelines.images import prepare_hint

    h = prepare_hint(depth, 64, 64, 1)
    assert h.shape == (1, 3, 64, 64) and torch.equal(h[:, 0], h[:, 1]) and 0 <= h.min() and h.max() <= 1


def test_mix_in_one_call(lib):
    pipe = kandi.KandinskyV22CombinedPipeline(**lib["kandi"]["img2img"].components,
                                              **{"prior_" + k: v for k, v in lib["kandi"]["prior"].components.items()})  # fmt: skip
    quiet(pipe)
    items, weights = ["a cat", picture(0, 224)], [0.5, 0.5]
    out = pipe.mix(items, weights, prior_num_inference_steps=2, num_inference_steps=3, height=32, width=32,
                   output_type="np", generator=gen())  # fmt: skip
    mixed = lib["diffusers"]["prior"].interpolate(items, weights, num_inference_steps=2, generator=gen())
    dec = diffusers.KandinskyV22Pipeline(**lib["diffusers"]["img2img"].components)
    quiet(dec)
    g = gen()
    mixed = lib["diffusers"]["prior"].interpolate(items, weights, num_inference_steps=2, generator=g)
    ref = dec(image_embeds=mixed.image_embeds, negative_image_embeds=mixed.negative_image_embeds, height=32,
              width=32, num_inference_steps=3, output_type="np", generator=g).images  # fmt: skip
    close(ref, out.images)
