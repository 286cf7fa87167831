"""The tiny Kandinsky 3 fixtures are what diffusers expects: its own pipelines load and run them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import tiny
import torch

PROMPTS = ["Красивый закат над горами", "日落时的山脉", "Schöne Berge über dem Fluss"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_t5_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer, T5TokenizerFast

    tok = tiny.t5_tokenizer(tmp_path / "built")
    assert (tmp_path / "built" / "tokenizer.json").is_file()
    assert len(tok) == 1100 <= tiny.T5_VOCAB_SIZE and tok.model_max_length == 512
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    assert tok.convert_tokens_to_ids(["<extra_id_99>", "<extra_id_0>"]) == [1000, 1099]
    tok.save_pretrained(tmp_path / "saved")
    again = [
        T5TokenizerFast.from_pretrained(tmp_path / "saved"),
        AutoTokenizer.from_pretrained(tmp_path / "saved"),
    ]
    ids = [tok(p).input_ids for p in PROMPTS]
    for other in again:
        assert type(other).__name__ == "T5Tokenizer" and other.model_max_length == 512 and len(other) == 1100
        assert [other(p).input_ids for p in PROMPTS] == ids
    assert len({tuple(i) for i in ids}) == len(PROMPTS)
    for i in ids:
        assert i[-1] == 1 and 1 not in i[:-1] and 2 not in i and 0 not in i and max(i) < 1000
    assert tok.decode(ids[2], skip_special_tokens=True) == PROMPTS[2]
    batch = tok(PROMPTS, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (3, 128) and (batch.input_ids[:, -1] == 0).all()
    assert (batch.attention_mask.sum(1) == torch.tensor([len(i) for i in ids])).all()


def test_t5_text_encoder_dims():
    enc = tiny.t5_text_encoder()
    assert not enc.training and enc.config.d_model == 32 and enc.config.vocab_size == tiny.T5_VOCAB_SIZE
    ids = torch.tensor([[10, 20, 1, 0, 0]])
    with torch.no_grad():
        hidden = enc(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert hidden.shape == (1, 5, 32)


def test_saved_layout(k3_repo):
    files = {str(p.relative_to(k3_repo)) for p in k3_repo.rglob("*") if p.is_file()}
    assert files == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "movq/config.json",
        "movq/diffusion_pytorch_model.safetensors",
        "movq/diffusion_pytorch_model.fp16.safetensors",
    }
    index = json.loads((k3_repo / "model_index.json").read_text())
    assert index == json.loads((tiny.CONFIGS / "k3.model_index.json").read_text())
    assert json.loads((k3_repo / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    sched = json.loads((k3_repo / "scheduler" / "scheduler_config.json").read_text())
    official = json.loads((tiny.CONFIGS / "k3.scheduler.json").read_text())
    assert {k: sched[k] for k in official if not k.startswith("_")} == {
        k: v for k, v in official.items() if not k.startswith("_")
    }


@pytest.fixture(scope="module")
def t2i(k3_repo):
    from diffusers import Kandinsky3Pipeline

    pipe = Kandinsky3Pipeline.from_pretrained(k3_repo)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diffusers_text_to_image(t2i):
    assert t2i.text_encoder.dtype == t2i.unet.dtype == torch.float32
    # diffusers' K3 hard-codes a MoVQ factor of 8 for the latents: 64 -> 8x8 latents, which the tiny MoVQ
    # (factor 2) decodes to 16x16; 256 requested -> 32x32 latents -> 64x64 pixels
    small = t2i(
        PROMPTS[0], height=64, width=64, num_inference_steps=2, generator=gen(), output_type="np"
    ).images
    assert small.shape == (1, 16, 16, 3)
    out = t2i(
        PROMPTS[1], height=256, width=256, num_inference_steps=2, generator=gen(), output_type="np"
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all() and out.std() > 0.01


def test_diffusers_fp16_variant(k3_repo, t2i):
    from diffusers import Kandinsky3Pipeline

    pipe = Kandinsky3Pipeline.from_pretrained(k3_repo, variant="fp16", torch_dtype=torch.float32)
    for name in ("unet", "movq", "text_encoder"):
        a, b = getattr(pipe, name), getattr(t2i, name)
        assert a.dtype == torch.float32
        pa, pb = next(iter(a.parameters())), next(iter(b.parameters()))
        torch.testing.assert_close(pa, pb.half().float())  # the fp16 files hold the plain weights, rounded
    assert any(not torch.equal(p, q) for p, q in zip(pipe.unet.parameters(), t2i.unet.parameters()))


def test_official_text_encoder_dtype_is_float16(k3_repo, tmp_path):
    """The official text_encoder/config.json says float16: transformers 5 then loads the T5 in float16."""
    from transformers import T5EncoderModel

    shutil.copytree(k3_repo / "text_encoder", tmp_path / "te")
    config = json.loads((tmp_path / "te" / "config.json").read_text())
    (tmp_path / "te" / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    assert T5EncoderModel.from_pretrained(tmp_path / "te").dtype == torch.float16


def test_diffusers_img2img(t2i):
    from diffusers import Kandinsky3Img2ImgPipeline

    pipe = Kandinsky3Img2ImgPipeline(**t2i.components)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    out = pipe(
        PROMPTS[2], image=image, strength=0.5, num_inference_steps=2, generator=gen(), output_type="np"
    )
    # img2img encodes with the MoVQ itself (factor 2): 64x64 -> 32x32 latents -> 64x64
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


def test_auto_pipeline_by_official_id(k3_offline_hub):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained("kandinsky-community/kandinsky-3")
    assert type(pipe).__name__ == "Kandinsky3Pipeline"
    assert type(AutoPipelineForImage2Image.from_pipe(pipe)).__name__ == "Kandinsky3Img2ImgPipeline"
