"""The tiny Kandinsky 2.1 fixtures are what diffusers expects: its own pipelines load and run them."""

from __future__ import annotations

import json

import pytest
import tiny
import torch

PROMPTS = ["A teddy bear на красной площади", "红色广场上的泰迪熊", "دب على الساحة الحمراء"]


def test_xlmr_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer, XLMRobertaTokenizerFast

    tok = tiny.xlmr_tokenizer(tmp_path / "built")
    assert (tmp_path / "built" / "tokenizer.json").is_file()
    assert len(tok) <= 1005 and tok.model_max_length == 512
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.mask_token_id == len(tok) - 1
    tok.save_pretrained(tmp_path / "saved")
    again = [
        XLMRobertaTokenizerFast.from_pretrained(tmp_path / "saved"),
        AutoTokenizer.from_pretrained(tmp_path / "saved"),
    ]
    ids = [tok(p).input_ids for p in PROMPTS]
    for other in again:
        assert other.model_max_length == 512
        assert [other(p).input_ids for p in PROMPTS] == ids
    assert len({tuple(i) for i in ids}) == len(PROMPTS)
    for i in ids:
        assert i[0] == 0 and i[-1] == 2 and 3 not in i and max(i) < 1005
    batch = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (3, 77) and (batch.input_ids[:, -1] == 1).all()


def test_mclip_text_encoder_dims():
    enc = tiny.mclip_text_encoder()
    assert enc.config.model_type == "M-CLIP"
    assert (enc.config.numDims, enc.config.transformerDimensions, enc.config.vocab_size) == (32, 32, 1005)
    ids = torch.tensor([[0, 10, 20, 2, 1]])
    pooled, hidden = enc(input_ids=ids, attention_mask=(ids != 1).long())
    assert pooled.shape == (1, 32) and hidden.shape == (1, 5, 32)


def test_saved_layout(k21_repos):
    decoder, inpaint = k21_repos["decoder"], k21_repos["inpaint"]
    for repo in (decoder, inpaint):
        for f in ("text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
            assert (repo / f).is_file(), f
        assert "kandinsky-community/kandinsky-2-1-prior" in (repo / "README.md").read_text()
        index = json.loads((repo / "model_index.json").read_text())
        assert index["_class_name"] == "KandinskyPipeline"
        assert index["tokenizer"] == ["transformers", "XLMRobertaTokenizerFast"]
        assert index["text_encoder"] == ["kandinsky", "MultilingualCLIP"]
    assert json.loads((decoder / "text_encoder" / "config.json").read_text())["model_type"] == "M-CLIP"
    assert json.loads((inpaint / "unet" / "config.json").read_text())["in_channels"] == 9


def test_ddpm_scheduler_subfolder(k21_repos):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(k21_repos["decoder"], subfolder="ddpm_scheduler")
    assert sched.config.variance_type == "learned_range" and sched.config.thresholding


@pytest.fixture(scope="module")
def prior_embeds(k21_repos):
    from diffusers import KandinskyPriorPipeline

    prior = KandinskyPriorPipeline.from_pretrained(k21_repos["prior"])
    out = prior(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.image_embeds.shape == (1, 32) and out.negative_image_embeds.shape == (1, 32)
    return out.image_embeds, out.negative_image_embeds


def test_diffusers_text_to_image(k21_repos, prior_embeds):
    from diffusers import KandinskyPipeline
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP

    pipe = KandinskyPipeline.from_pretrained(k21_repos["decoder"])
    assert isinstance(pipe.text_encoder, MultilingualCLIP)
    image_embeds, negative_image_embeds = prior_embeds
    out = pipe(
        PROMPTS[1],
        image_embeds=image_embeds,
        negative_image_embeds=negative_image_embeds,
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and out.std() > 0.01


def test_diffusers_inpaint(k21_repos, prior_embeds):
    from diffusers import KandinskyInpaintPipeline
    from PIL import Image

    pipe = KandinskyInpaintPipeline.from_pretrained(k21_repos["inpaint"])
    assert pipe.unet.config.in_channels == 9
    image_embeds, negative_image_embeds = prior_embeds
    image = Image.fromarray((torch.rand(64, 64, 3) * 255).to(torch.uint8).numpy())
    mask = torch.zeros(64, 64)
    mask[:32] = 1
    out = pipe(
        PROMPTS[2],
        image=image,
        mask_image=mask.numpy(),
        image_embeds=image_embeds,
        negative_image_embeds=negative_image_embeds,
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and out.std() > 0.01


def test_k21_cache(k21_offline_hub):
    from diffusers import KandinskyPipeline

    snap = k21_offline_hub / "models--kandinsky-community--kandinsky-2-1" / "snapshots"
    assert (next(snap.iterdir()) / "ddpm_scheduler" / "scheduler_config.json").is_file()
    pipe = KandinskyPipeline.from_pretrained("kandinsky-community/kandinsky-2-1")
    assert pipe.unet.config.in_channels == 4
