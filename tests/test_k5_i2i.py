"""Kandinsky5I2IPipeline (image editing) against diffusers' on tiny random components, and kandi's
Qwen2.5-VL processor against transformers' own: every output type, callbacks, sizes, loading."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from kandi.compat.kandinsky5 import Kandinsky5I2IPipeline
from kandi.models.k5_dit import K5DiT
from kandi.models.vae_flux import AutoencoderKL
from kandi.pipelines import k5
from kandi.pipelines.k5_processor import QwenImageProcessor, QwenVLProcessor
from kandi.schedulers.flow_match import FlowMatchEulerDiscreteScheduler

diffusers = pytest.importorskip("diffusers")
tiny_k5 = pytest.importorskip("tiny_k5")


def _image(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_k5.i2i_components(tmp_path_factory.mktemp("k5i"))


def _ours(c) -> Kandinsky5I2IPipeline:
    dit = K5DiT.from_config(dict(c["transformer"].config)).eval()
    dit.load_state_dict(c["transformer"].state_dict(), strict=True)
    vae = AutoencoderKL.from_config(dict(c["vae"].config)).eval()
    vae.load_state_dict(c["vae"].state_dict(), strict=True)
    sched = FlowMatchEulerDiscreteScheduler.from_config(c["scheduler"].config)
    return Kandinsky5I2IPipeline(
        dit, vae, c["text_encoder"], c["tokenizer"], c["text_encoder_2"], c["tokenizer_2"], sched
    )


@pytest.fixture(scope="module")
def pipes(parts):
    ref = diffusers.Kandinsky5I2IPipeline(
        **{**parts, "tokenizer": tiny_k5.real_processor(parts["tokenizer"])}
    )
    ours = _ours(parts)
    for p in (ref, ours):
        p.resolutions = [(64, 64)]
        p.set_progress_bar_config(disable=True)
    return ref, ours


def _args(**kw):
    base = dict(image=_image(), prompt="a red square", height=64, width=64, num_inference_steps=2,
                guidance_scale=4.0, max_sequence_length=1024)  # fmt: skip
    return {**base, "generator": torch.Generator().manual_seed(0), **kw}


def _close(got, want) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- the processor


@pytest.mark.parametrize("size", [(64, 48), (500, 333), (1500, 1100), (20, 30), (2048, 1024)])
def test_processor_equals_transformers(parts, size) -> None:
    real, ours = tiny_k5.real_processor(parts["tokenizer"]), QwenVLProcessor(parts["tokenizer"])
    img = _image(*size)
    texts = [k5.I2I_TEMPLATE.format("a red square"), "ab<|image_pad|>"]
    kw = dict(text=texts, images=[img, _image(40, 90, 1)], videos=None, return_tensors="pt", padding=True)
    want, got = real(**kw), ours(**kw)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert ours.image_token_id == real.image_token_id == 261
    assert ours.decode(want["input_ids"][1][:3]) == real.decode(want["input_ids"][1][:3])


def test_processor_config_round_trip(tmp_path, parts) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64).save_pretrained(tmp_path)
    parts["tokenizer"].save_pretrained(tmp_path)
    loaded = QwenVLProcessor.from_pretrained(tmp_path)
    assert (loaded.image_processor.min_pixels, loaded.image_processor.max_pixels) == (3136, 50176)
    img = _image(900, 700)
    want = Qwen2VLImageProcessorPil.from_pretrained(tmp_path)(img, return_tensors="pt")
    got = loaded.image_processor([img])
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
    loaded.save_pretrained(tmp_path / "again")
    assert (
        QwenImageProcessor.from_dict(
            json.loads((tmp_path / "again" / "preprocessor_config.json").read_text())
        )([img])["image_grid_thw"].tolist()
        == want["image_grid_thw"].tolist()
    )
    with pytest.raises(ValueError, match="2 <.image_pad.> tokens for 1 images"):
        loaded(text=["<|image_pad|><|image_pad|>"], images=[img])


# ------------------------------------------------------------------------------- parity with diffusers


def test_template_and_defaults_are_diffusers(pipes) -> None:
    import inspect

    ref, ours = pipes
    assert ours.prompt_template == ref.prompt_template
    assert ours.prompt_template_encode_start_idx == ref.prompt_template_encode_start_idx == 54
    assert (
        Kandinsky5I2IPipeline(*[None] * 7).resolutions
        == diffusers.Kandinsky5I2IPipeline(*[None] * 7).resolutions
    )
    want = inspect.signature(diffusers.Kandinsky5I2IPipeline.__call__).parameters
    got = inspect.signature(Kandinsky5I2IPipeline.__call__).parameters
    assert list(got) == list(want)
    for name in want:
        if name not in ("self", "image", "callback_on_step_end_tensor_inputs"):
            assert got[name].default == want[name].default, name


@pytest.mark.parametrize("output_type", ["pt", "np", "latent", "pil"])
def test_outputs_match_diffusers(pipes, output_type) -> None:
    ref, ours = pipes
    want = ref(**_args(output_type=output_type)).image
    got = ours(**_args(output_type=output_type)).image
    if output_type == "pil":
        assert got[0].size == want[0].size == (64, 64)
        diff = np.abs(np.asarray(got[0], dtype=int) - np.asarray(want[0], dtype=int))
        assert diff.max() <= 1
        return
    if output_type == "np":
        got, want = torch.from_numpy(got), torch.from_numpy(want)
    if output_type == "latent":
        assert got.shape == (1, 1, 8, 8, 16)
    _close(got, want)


@pytest.mark.parametrize("g", [1.0, 3.5])
def test_guidance_and_negative_prompt_match_diffusers(pipes, g) -> None:
    ref, ours = pipes
    kw = dict(guidance_scale=g, negative_prompt="blurry", output_type="pt", prompt="make it blue")
    _close(ours(**_args(**kw)).image, ref(**_args(**kw)).image)


def test_size_from_the_image_snaps_as_diffusers(pipes) -> None:
    """Without height/width the image's size is taken, then snapped (here to the one listed size)."""
    ref, ours = pipes
    kw = dict(image=_image(96, 80, 3), height=None, width=None, output_type="pt")
    want = ref(**_args(**kw)).image
    got = ours(**_args(**kw)).image
    assert got.shape == (1, 3, 64, 64)
    _close(got, want)


def test_callback_sees_the_whole_dit_input_as_diffusers(pipes) -> None:
    ref, ours = pipes
    seen = {}

    def cb(pipe, i, t, kw):
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append(kw["latents"].shape)
        return {"latents": kw["latents"] * 0.9}

    want = ref(**_args(output_type="pt", callback_on_step_end=cb)).image
    got = ours(**_args(output_type="pt", callback_on_step_end=cb)).image
    assert seen["kandi"] == seen["diffusers"] == [(1, 1, 8, 8, 33)] * 2
    _close(got, want)


def test_given_latents_and_embeddings_as_diffusers(pipes) -> None:
    ref, ours = pipes
    full = torch.randn(1, 1, 8, 8, 33, generator=torch.Generator().manual_seed(3))
    _close(ours(**_args(latents=full.clone(), output_type="pt")).image,
           ref(**_args(latents=full.clone(), output_type="pt")).image)  # fmt: skip
    q, c, cu = ref.encode_prompt("a red square", _image(), max_sequence_length=1024)
    gq, gc, gcu = ours.encode_prompt("a red square", _image(), max_sequence_length=1024)
    _close(gq, q)
    _close(gc, c)
    assert torch.equal(gcu, cu)
    embeds = dict(prompt=None, prompt_embeds_qwen=q, prompt_embeds_clip=c, prompt_cu_seqlens=cu)
    _close(ours(**_args(**embeds, output_type="pt")).image, ours(**_args(output_type="pt")).image)


def test_inputs_of_any_kind_are_the_same_image(pipes) -> None:
    _, ours = pipes
    img = _image()
    want = ours(**_args(image=img, output_type="pt")).image
    arr = np.array(img)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    rgba = img.convert("RGBA")
    for other in (arr, tensor, [tensor], rgba):
        _close(ours(**_args(image=other, output_type="pt")).image, want)


def test_several_images_and_prompts(pipes) -> None:
    """diffusers fails on batches; kandi repeats the source image, and image k uses generator k."""
    _, ours = pipes
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    out = ours(**_args(num_images_per_prompt=2, generator=gens, output_type="pt")).image
    assert out.shape == (2, 3, 64, 64) and not torch.allclose(out[0], out[1])
    _close(out[:1], ours(**_args(output_type="pt")).image)
    two = ours(**_args(prompt=["a red square", "a red circle"], image=[_image(), _image(seed=5)],
                       output_type="latent")).image  # fmt: skip
    assert two.shape == (2, 1, 8, 8, 16)


def test_prompt_cache_keys_the_image(pipes) -> None:
    _, ours = pipes
    ours.prompt_cache.clear()
    ours.encode_prompt("a red square", _image())
    ours.encode_prompt("a red square", _image())
    assert len(ours.prompt_cache._items) == 1
    ours.encode_prompt("a red square", _image(seed=9))
    assert len(ours.prompt_cache._items) == 2


def test_long_prompt_keeps_the_image_tokens(pipes, caplog) -> None:
    _, ours = pipes
    view = k5.qwen_view(_image())
    proc = QwenVLProcessor(ours.tokenizer)
    base = proc(text=[k5.I2I_TEMPLATE.format("")], images=[view])["input_ids"].shape[-1] - k5.I2I_START
    with caplog.at_level(logging.WARNING, logger="kandi.pipelines.k5"):
        q, _, cu = ours.encode_prompt("a red square " * 20, _image(), max_sequence_length=base + 10)
    assert int(cu[-1]) <= base + 10 and q.shape[1] == int(cu[-1])
    assert "truncated" in caplog.text
    with pytest.raises(ValueError, match=f"pass at least {base}"):
        ours.encode_prompt("a red square", _image(), max_sequence_length=base - 1)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"image": None}, "image is required"),
        ({"image": [_image(), _image(), _image()]}, "3 source images for 1 prompts"),
        ({"prompt": None}, "prompt is required"),
        ({"width": 0}, "width"),
        ({"output_type": "jpg"}, "output_type"),
        ({"max_sequence_length": 2000}, "max_sequence_length"),
        ({"latents": torch.zeros(1, 1, 8, 8, 20)}, "latents has shape"),
        ({"prompt_embeds_qwen": torch.zeros(1, 4, 32)}, "pass all three"),
        ({"callback_on_step_end": lambda *a: {"latents": torch.zeros(1, 1, 8, 8, 5)}}, "5 channels"),
    ],
)
def test_bad_arguments(pipes, bad, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        pipes[1](**{**_args(), **bad})


def test_from_pretrained_official_layout(tmp_path, pipes) -> None:
    """A diffusers-saved tiny repo with the official model_index.json loads strictly, processor included."""
    ref, _ = pipes
    tiny_k5.save_official_layout(ref, tmp_path, "Kandinsky5I2IPipeline")
    from kandi import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(loaded).__name__ == "Kandinsky5I2IPipeline" and type(loaded.transformer).__name__ == "K5DiT"
    assert isinstance(loaded.tokenizer, QwenVLProcessor)
    loaded.resolutions = [(64, 64)]
    loaded.set_progress_bar_config(disable=True)
    _close(loaded(**_args(output_type="pt")).image, ref(**_args(output_type="pt")).image)
    loaded.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert saved["tokenizer"] == ["transformers", "Qwen2VLProcessor"]
    assert (tmp_path / "saved" / "tokenizer" / "preprocessor_config.json").is_file()
