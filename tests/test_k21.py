"""Kandinsky 2.1: M-CLIP, every 2.1 pipeline against diffusers, the 2.1 bugs kandi fixes, loading by id.

Parity: the same tiny diffusers-saved repos loaded by both libraries, fp32, same generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from compare import close, gen

import kandi

MANIFESTS = Path(__file__).parent / "data" / "configs" / "manifests"
CONFIGS = Path(__file__).parent / "data" / "configs"
PROMPTS = ["A teddy bear на красной площади", "红色广场上的泰迪熊", "دب على الساحة الحمراء"]


def picture(seed: int, size: int = 64) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def square_mask(size: int = 64) -> PIL.Image.Image:
    m = PIL.Image.new("L", (size, size), 0)
    m.paste(255, (16, 16, 48, 48))
    return m


@pytest.fixture(scope="module")
def lib(k21_repos):
    """{"diffusers": {...}, "kandi": {...}}: every 2.1 pipeline of each library on the same weights."""
    out = {}
    for m in (diffusers, kandi):
        prior = m.KandinskyPriorPipeline.from_pretrained(k21_repos["prior"])
        dec = m.KandinskyPipeline.from_pretrained(k21_repos["decoder"])
        inp = m.KandinskyInpaintPipeline.from_pretrained(k21_repos["inpaint"])
        pc = {"prior_" + k: v for k, v in prior.components.items()}
        p = {
            "prior": prior,
            "t2i": dec,
            "img2img": m.KandinskyImg2ImgPipeline(**dec.components),
            "inpaint": inp,
            "combined": m.KandinskyCombinedPipeline(**dec.components, **pc),
            "img2img_combined": m.KandinskyImg2ImgCombinedPipeline(**dec.components, **pc),
            "inpaint_combined": m.KandinskyInpaintCombinedPipeline(**inp.components, **pc),
        }
        for pipe in p.values():
            pipe.set_progress_bar_config(disable=True)
        out[m.__name__] = p
    return out


@pytest.fixture(scope="module")
def emb(lib):
    out = lib["kandi"]["prior"](PROMPTS[:2], num_inference_steps=2, generator=gen(5))
    return out.image_embeds, out.negative_image_embeds


def both(lib, name: str, *args, **kwargs):
    """Run pipeline `name` of both libraries with the same arguments and seed."""
    seed = kwargs.pop("seed", 0)
    d = lib["diffusers"][name](*args, generator=gen(seed), **kwargs)
    k = lib["kandi"][name](*args, generator=gen(seed), **kwargs)
    return d, k


# ---------------------------------------------------------------------------------------------- M-CLIP


def test_mclip_matches_diffusers(lib):
    d, k = lib["diffusers"]["t2i"], lib["kandi"]["t2i"]
    enc = k.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        a = d.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        b = k.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    close(a[0], b[0], 1e-5)
    close(a[1], b[1], 1e-5)


def test_multilingual_prompts_reach_the_decoder(lib, emb):
    """Russian, Chinese and Arabic prompts tokenize to real tokens and change the image."""
    pipe = lib["kandi"]["t2i"]
    ids = pipe.tokenizer(PROMPTS).input_ids
    assert all(pipe.tokenizer.unk_token_id not in row for row in ids)
    assert len({tuple(r) for r in ids}) == len(PROMPTS)
    e, n = emb[0][:1], emb[1][:1]
    outs = [
        pipe(p, e, n, height=64, width=64, num_inference_steps=2, generator=gen(1), output_type="np").images
        for p in PROMPTS
    ]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert np.abs(outs[i] - outs[j]).max() > 1e-3


def _manifest(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / f"{name}.shapes.json").read_text())


def test_mclip_full_size_keys_and_shapes():
    from kandi.models.mclip import MCLIP, MCLIPConfig

    raw = json.loads((CONFIGS / "k21.text_encoder.json").read_text())
    with torch.device("meta"):
        model = MCLIP(MCLIPConfig.from_diffusers(raw))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == _manifest("k21.text_encoder")


@pytest.mark.parametrize("name", ["k21.unet", "k21-inpaint.unet", "k21.movq", "k21-prior.prior"])
def test_k21_full_size_models_match_manifests(name):
    from kandi.loading.pipeline import kandi_class

    raw = json.loads((CONFIGS / f"{name}.json").read_text())
    cls = kandi_class(raw["_class_name"])
    with torch.device("meta"):
        model = cls(cls.config_class.from_diffusers(raw))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == _manifest(name)


def test_mclip_save_reload_loads_in_diffusers(lib, tmp_path):
    enc = lib["kandi"]["t2i"].text_encoder
    enc.save_pretrained(tmp_path / "te")
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP

    ref = MultilingualCLIP.from_pretrained(tmp_path / "te").eval()
    ids = torch.tensor([[0, 10, 20, 30, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        close(ref(input_ids=ids, attention_mask=mask)[0], enc(ids, mask)[0], 1e-5)


# ------------------------------------------------------------------------------------------- priors


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_images_per_prompt": 2, "guidance_scale": 1.0},
        {"negative_prompt": ["low quality"], "output_type": "np"},
    ],
)
def test_prior_parity(lib, kwargs):
    d, k = both(lib, "prior", PROMPTS[0], num_inference_steps=3, **kwargs)
    close(d.image_embeds, k.image_embeds)
    close(d.negative_image_embeds, k.negative_image_embeds)


def test_prior_interpolate_parity_and_fix(lib):
    items, weights = ["a cat", picture(3)], [0.3, 0.7]
    d = lib["diffusers"]["prior"].interpolate(items, weights, num_inference_steps=2, generator=gen(2))
    k = lib["kandi"]["prior"].interpolate(items, weights, num_inference_steps=2, generator=gen(2))
    close(d.image_embeds, k.image_embeds)
    close(d.negative_image_embeds, k.negative_image_embeds)
    # several images per prompt: diffusers collapses the image embeddings to one row but returns 2 negatives
    d2 = lib["diffusers"]["prior"].interpolate(
        items, weights, num_images_per_prompt=2, num_inference_steps=2, generator=gen(2)
    )
    assert d2.image_embeds.shape[0] != d2.negative_image_embeds.shape[0]
    k2 = lib["kandi"]["prior"].interpolate(
        items, weights, num_images_per_prompt=2, num_inference_steps=2, generator=gen(2)
    )
    assert k2.image_embeds.shape == k2.negative_image_embeds.shape == (2, k.image_embeds.shape[1])


def test_prior_loads_the_22_prior_repo(k22_repos):
    pipe = kandi.KandinskyPriorPipeline.from_pretrained(k22_repos["prior"])
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a cat", num_inference_steps=2).image_embeds.shape[0] == 1


# ------------------------------------------------------------------------------------------ decoders


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_type": "np"},
        {"output_type": "pt", "num_images_per_prompt": 2},
        {"output_type": "pil", "negative_prompt": "blurry"},
        {"output_type": "np", "guidance_scale": 1.0},
    ],
)
def test_t2i_parity(lib, emb, kwargs):
    d, k = both(lib, "t2i", PROMPTS[0], emb[0][:1], emb[1][:1], height=64, width=64, num_inference_steps=3,
                **kwargs)  # fmt: skip
    close(d.images, k.images)


def test_t2i_parity_two_prompts_and_latents(lib, emb):
    latents = torch.randn(2, 4, 32, 32, generator=gen(9))  # the tiny MoVQ halves once
    d, k = both(lib, "t2i", PROMPTS[:2], emb[0], emb[1], height=64, width=64, num_inference_steps=2,
                latents=latents, output_type="np")  # fmt: skip
    close(d.images, k.images)


def test_t2i_parity_with_the_ddpm_scheduler_from_its_subfolder(lib, emb, k21_repos):
    """The docs' swap: DDPMScheduler.from_pretrained(repo, subfolder="ddpm_scheduler") (learned_range)."""
    outs = []
    for m in (diffusers, kandi):
        sched = m.DDPMScheduler.from_pretrained(k21_repos["decoder"], subfolder="ddpm_scheduler")
        pipe = m.DiffusionPipeline.from_pretrained(k21_repos["decoder"], scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe).__name__ == "KandinskyPipeline"
        outs.append(pipe("a fox", emb[0][:1], emb[1][:1], height=64, width=64, num_inference_steps=3,
                         generator=gen(4), output_type="np").images)  # fmt: skip
    close(*outs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_type": "np"},
        {"output_type": "pt", "strength": 0.6, "guidance_scale": 4.0},
        {"output_type": "pil", "strength": 0.5, "num_images_per_prompt": 2, "negative_prompt": "dark"},
    ],
)
def test_img2img_parity(lib, emb, kwargs):
    d, k = both(lib, "img2img", PROMPTS[1], picture(1), emb[0][:1], emb[1][:1], height=64, width=64,
                num_inference_steps=4, **kwargs)  # fmt: skip
    close(d.images, k.images)


def test_img2img_parity_two_prompts_tensor_images(lib, emb):
    imgs = torch.rand(2, 3, 64, 64, generator=gen(3))
    d, k = both(lib, "img2img", PROMPTS[:2], [imgs[0:1], imgs[1:2]], emb[0], emb[1], height=64, width=64,
                num_inference_steps=4, strength=0.7, output_type="np")  # fmt: skip
    close(d.images, k.images)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_type": "np"},
        {"output_type": "pt", "num_images_per_prompt": 2},
        {"output_type": "pil", "guidance_scale": 5.0, "negative_prompt": "blurry"},
    ],
)
def test_inpaint_parity(lib, emb, kwargs):
    d, k = both(lib, "inpaint", PROMPTS[2], picture(2), square_mask(), emb[0][:1], emb[1][:1], height=64,
                width=64, num_inference_steps=3, **kwargs)  # fmt: skip
    close(d.images, k.images)


def test_inpaint_parity_numpy_mask(lib, emb):
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:32] = 1.0
    d, k = both(lib, "inpaint", PROMPTS[0], picture(4), mask, emb[0][:1], emb[1][:1], height=64, width=64,
                num_inference_steps=2, output_type="np")  # fmt: skip
    close(d.images, k.images)


# ------------------------------------------------------------------------------------------ combined


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_type": "np"},
        {"output_type": "np", "num_images_per_prompt": 2, "negative_prompt": "ugly"},
        {"output_type": "pt", "prompt": PROMPTS[:2], "guidance_scale": 5.0},
    ],
)
def test_combined_parity(lib, kwargs):
    prompt = kwargs.pop("prompt", PROMPTS[0])
    d, k = both(lib, "combined", prompt, height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2,
                **kwargs)  # fmt: skip
    close(d.images, k.images)


def test_img2img_combined_parity(lib):
    d, k = both(lib, "img2img_combined", PROMPTS[0], picture(5), height=64, width=64, num_inference_steps=4,
                prior_num_inference_steps=2, strength=0.5, output_type="np")  # fmt: skip
    close(d.images, k.images)


def test_inpaint_combined_parity(lib):
    d, k = both(lib, "inpaint_combined", PROMPTS[1], picture(6), square_mask(), height=64, width=64,
                num_inference_steps=2, prior_num_inference_steps=2, output_type="np")  # fmt: skip
    close(d.images, k.images)


# ---------------------------------------------------------------------------- where diffusers is wrong


def test_guidance_one_with_several_images_works_in_every_decoder(lib, emb):
    k = lib["kandi"]
    common = dict(height=64, width=64, num_inference_steps=2, guidance_scale=1.0, num_images_per_prompt=2,
                  output_type="np")  # fmt: skip
    with pytest.raises(RuntimeError):  # diffusers: size mismatch
        lib["diffusers"]["t2i"]("a", emb[0][:1], emb[1][:1], generator=gen(0), **common)
    assert k["t2i"]("a", emb[0][:1], emb[1][:1], **common).images.shape == (2, 64, 64, 3)
    out = k["img2img"]("a", picture(0), emb[0][:1], emb[1][:1], strength=0.5, **common).images
    assert out.shape == (2, 64, 64, 3)
    out = k["inpaint"]("a", picture(0), square_mask(), emb[0][:1], emb[1][:1], **common).images
    assert out.shape == (2, 64, 64, 3)


def test_combined_img2img_and_inpaint_take_one_pil_image_with_several_per_prompt(lib):
    common = dict(height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2, num_images_per_prompt=2,
                  output_type="np")  # fmt: skip
    with pytest.raises(ValueError):  # diffusers: "Unexpected latents shape"
        lib["diffusers"]["img2img_combined"]("a", picture(1), generator=gen(0), **common)
    out = lib["kandi"]["img2img_combined"]("a", picture(1), generator=gen(0), **common).images
    assert out.shape == (2, 64, 64, 3)
    out = lib["kandi"]["inpaint_combined"]("a", picture(1), square_mask(), generator=gen(0), **common).images
    assert out.shape == (2, 64, 64, 3)


def test_combined_can_pass_the_negative_prompt_to_the_decoder(lib):
    k = lib["kandi"]["combined"]
    common = dict(height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2, output_type="np",
                  negative_prompt="bad")  # fmt: skip
    default = k("a", generator=gen(0), **common).images
    passed = k("a", generator=gen(0), negative_prompt_to_decoder=True, **common).images
    assert np.abs(default - passed).max() > 1e-4
    # the same as running the decoder with that negative prompt by hand (one generator for both stages)
    g = gen(0)
    emb = lib["kandi"]["prior"]("a", negative_prompt="bad", num_inference_steps=2, generator=g)
    manual = lib["kandi"]["t2i"]("a", emb.image_embeds, emb.negative_image_embeds, negative_prompt="bad",
                                 height=64, width=64, num_inference_steps=2, generator=g, output_type="np")  # fmt: skip
    close(passed, manual.images)


def test_combined_pairs_each_prompt_with_its_own_embeddings(lib):
    """Two prompts, two images each: image i*2+j comes from prompt i (diffusers tiles the prompts
    [a, b, a, b] against embeddings [a, a, b, b])."""
    k = lib["kandi"]
    common = dict(height=64, width=64, num_inference_steps=2, output_type="np")
    combined = k["combined"](PROMPTS[:2], num_images_per_prompt=2, prior_num_inference_steps=2, generator=gen(1),
                             **common).images  # fmt: skip
    g = gen(1)
    emb = k["prior"](PROMPTS[:2], num_images_per_prompt=2, num_inference_steps=2, generator=g)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    manual = k["t2i"](prompts, emb.image_embeds, emb.negative_image_embeds, generator=g, **common).images
    close(combined, manual)


def test_one_negative_prompt_for_several_prompts(lib, emb):
    out = lib["kandi"]["t2i"](PROMPTS[:2], emb[0], emb[1], negative_prompt="blurry", height=64, width=64,
                              num_inference_steps=2, output_type="np").images  # fmt: skip
    assert out.shape == (2, 64, 64, 3)


def test_img2img_size_not_a_multiple_of_64(lib, emb):
    # the tiny MoVQ halves once, so sizes round up to multiples of 4 (64 with the real one)
    out = lib["kandi"]["img2img"]("a", picture(1, 80), emb[0][:1], emb[1][:1], height=66, width=70,
                                  num_inference_steps=2, strength=0.5, output_type="np").images  # fmt: skip
    assert out.shape == (1, 68, 72, 3)


def test_clear_errors(lib, emb):
    k = lib["kandi"]
    e, n = emb[0][:1], emb[1][:1]
    with pytest.raises(ValueError, match="strength"):
        k["img2img"]("a", picture(1), e, n, strength=1.5)
    with pytest.raises(ValueError, match="prompt has 3 entries"):
        k["t2i"](PROMPTS, emb[0], emb[1])
    with pytest.raises(TypeError, match="prompt"):
        k["t2i"](None, e, n)
    with pytest.raises(ValueError, match="image"):
        k["inpaint"]("a", None, square_mask(), e, n)
    with pytest.raises(ValueError, match="UNet"):  # a 2.2 embedding width or the wrong checkpoint
        k["t2i"].__class__(**k["inpaint"].components)("a", e, n, num_inference_steps=1)


# ----------------------------------------------------------------------------------- loading by id


def test_auto_pipelines_by_official_id(k21_offline_hub):
    t2i = kandi.AutoPipelineForText2Image.from_pretrained("kandinsky-community/kandinsky-2-1")
    i2i = kandi.AutoPipelineForImage2Image.from_pretrained("kandinsky-community/kandinsky-2-1")
    inp = kandi.AutoPipelineForInpainting.from_pretrained("kandinsky-community/kandinsky-2-1-inpaint")
    assert type(t2i).__name__ == "KandinskyCombinedPipeline"
    assert type(i2i).__name__ == "KandinskyImg2ImgCombinedPipeline"
    assert type(inp).__name__ == "KandinskyInpaintCombinedPipeline"
    assert inp.unet.config.in_channels == 9
    back = kandi.AutoPipelineForText2Image.from_pipe(inp)
    assert type(back).__name__ == "KandinskyCombinedPipeline"
    inp.set_progress_bar_config(disable=True)
    out = inp("a", picture(0), square_mask(), height=64, width=64, num_inference_steps=1,
              prior_num_inference_steps=1, output_type="np").images  # fmt: skip
    assert out.shape == (1, 64, 64, 3)


def test_hub_ids_are_case_insensitive(k21_offline_hub):
    """The diffusers docs write kandinsky-community/Kandinsky-2-1-prior."""
    pipe = kandi.KandinskyPriorPipeline.from_pretrained("kandinsky-community/Kandinsky-2-1-prior")
    assert type(pipe.prior).__name__ == "Prior"
    unet = kandi.UNet2DConditionModel.from_pretrained("Kandinsky-Community/KANDINSKY-2-1", subfolder="unet")
    assert unet.config.addition_embed_type == "text_image"


def test_short_model_names(k21_offline_hub):
    pipe = kandi.AutoPipelineForText2Image.from_pretrained("kandinsky-2.1")
    assert type(pipe).__name__ == "KandinskyCombinedPipeline"
    prior = kandi.KandinskyPriorPipeline.from_pretrained("kandinsky-2.1")
    assert type(prior.prior).__name__ == "Prior"


def test_short_names_pick_the_repo_of_the_task(k21_offline_hub):
    inp = kandi.AutoPipelineForInpainting.from_pretrained("kandinsky-2.1")
    assert inp.unet.config.in_channels == 9
    assert kandi.KandinskyInpaintPipeline.from_pretrained("2.1").unet.config.in_channels == 9
    prior = kandi.PriorTransformer.from_pretrained("kandinsky-2.1", subfolder="prior")
    assert type(prior).__name__ == "Prior"


def test_first_download_uses_the_hubs_spelling(monkeypatch, tmp_path):
    """Online, an id typed in another case is stored under the Hub's own spelling (one cache entry)."""
    import huggingface_hub

    from kandi.loading import hub

    seen = {}
    monkeypatch.setattr(hub, "offline", lambda local_files_only=None: False)
    monkeypatch.setattr(
        huggingface_hub, "model_info", lambda name, token=None: type("I", (), {"id": name.lower()})()
    )
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name, **kw: ["model_index.json"])

    def fake_snapshot(name, **kw):
        seen["name"] = name
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    hub.resolve_repo_dir("Kandinsky-Community/Kandinsky-2-1-Prior", cache_dir=tmp_path / "empty")
    assert seen["name"] == "kandinsky-community/kandinsky-2-1-prior"


def test_cached_spelling(k21_cache):
    from kandi.loading.hub import cached_spelling

    assert (
        cached_spelling("KANDINSKY-community/Kandinsky-2-1", k21_cache) == "kandinsky-community/kandinsky-2-1"
    )
    assert cached_spelling("kandinsky-community/kandinsky-9", k21_cache) is None


def test_encode_prompt_matches_diffusers(lib):
    args = (["a cat", "красный дом"], "cpu", 2, True, ["dark", "blurry"])
    d = lib["diffusers"]["t2i"]._encode_prompt(*args)
    k = lib["kandi"]["t2i"]._encode_prompt(*args)
    for a, b in zip(d, k):
        close(a, b, 1e-5)
