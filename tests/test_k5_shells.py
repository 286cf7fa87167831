"""Kandinsky 5 image editing (kandinsky-5-i2i) in the shells: `kandi img2img`, a batch job, the native API
and the A1111 door take it as they take the other models; PNG metadata and --from-png replay it."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import tiny
from PIL import Image
from test_cli import assert_one_line_error, pixels, run

from kandi import pngmeta

REPO = "kandinskylab/Kandinsky-5.0-I2I-Lite-sft-Diffusers"
# the tiny model at a small listed size: 128x128 in the registry's resolution list is not one, so the
# tests list it (kandi's K5Models.resolutions is what pipe.resolutions is to the pipeline)
SMALL = [(128, 128), (128, 96)]


@pytest.fixture(scope="module")
def k5i2i_hub(tmp_path_factory):
    """The tiny Kandinsky 5 editing repo in the official layout, in a cache under the official id."""
    import diffusers
    import tiny_k5

    c = tiny_k5.i2i_components(tmp_path_factory.mktemp("k5ic"))
    folder = tmp_path_factory.mktemp("k5irepo")
    pipe = diffusers.Kandinsky5I2IPipeline(**{**c, "tokenizer": tiny_k5.real_processor(c["tokenizer"])})
    classes = {"transformer": ("diffusers", "Kandinsky5Transformer3DModel"), "vae": ("diffusers", "AutoencoderKL"),
               "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
               "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
               "tokenizer": ("transformers", "Qwen2VLProcessor"), "text_encoder_2": ("transformers", "CLIPTextModel"),
               "tokenizer_2": ("transformers", "CLIPTokenizer")}  # fmt: skip
    for name in classes:
        comp = getattr(pipe, name)
        getattr(comp, "tokenizer", comp).save_pretrained(folder / name)
    pipe.tokenizer.image_processor.save_pretrained(folder / "tokenizer")
    index = {"_class_name": "Kandinsky5I2IPipeline", "_diffusers_version": "0.42.1",
             **{k: list(v) for k, v in classes.items()}}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    cache = tmp_path_factory.mktemp("hf5i") / "hub"
    tiny.install_in_cache(cache, REPO, folder)
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, cache)
        from kandi.pipelines import k5

        mp.setattr(k5, "RESOLUTIONS", SMALL)  # K5Models' default list
        yield folder


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _pipeline_image(folder, photo, seed: int, prompt: str = "make it blue") -> np.ndarray:
    import torch

    from kandi import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.resolutions = list(SMALL)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image=Image.open(photo), prompt=prompt, num_inference_steps=2,
               generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return np.asarray(out.image[0])


def test_img2img_from_the_cli_equals_the_pipeline(k5i2i_hub, photo, capsys, tmp_path):
    args = ["img2img", photo, "make it blue", "-m", "kandinsky-5-i2i", "--steps", "2", "-s", "4", "--offline",
            "-q"]  # fmt: skip
    code, out, err = run(capsys, *args, "-o", tmp_path / "edit.png")
    assert code == 0, err
    got = pixels(tmp_path / "edit.png")
    assert got.shape == (96, 128, 3)  # the photo's own size, a listed one
    assert np.array_equal(got, _pipeline_image(k5i2i_hub, photo, 4))
    params = pngmeta.read_png_text(tmp_path / "edit.png")["parameters"]
    assert "Model: kandinsky-5-i2i" in params and "Sampler: Euler," in params
    assert "Denoising strength" not in params and "Prior steps" not in params
    code, out, err = run(capsys, "img2img", "--from-png", tmp_path / "edit.png", "--offline", "-q", "-o",
                         tmp_path / "again.png")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "edit.png").read_bytes()


def test_cli_refusals(k5i2i_hub, photo, capsys, tmp_path):
    code, out, err = run(capsys, "generate", "a cat", "-m", "kandinsky-5-i2i", "--offline", "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "kandinsky-5-i2i cannot do txt2img", "use kandinsky-5")
    code, out, err = run(capsys, "img2img", photo, "a cat", "-m", "kandinsky-5", "--offline", "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "kandinsky-5 cannot do img2img", "use kandinsky-5-i2i")
    code, out, err = run(capsys, "img2img", photo, "a cat", "-m", "kandinsky-5-i2i", "--sampler", "DDIM",
                         "--offline", "-o", tmp_path)  # fmt: skip
    assert_one_line_error(code, out, err, 2, "kandinsky-5-i2i runs flow-matching Euler only")
    code, out, err = run(capsys, "inpaint", photo, "a cat", "--mask", photo, "-m", "kandinsky-5-i2i", "--offline",
                         "-o", tmp_path)  # fmt: skip
    assert code != 0 and "kandinsky-5-i2i" in err


def test_batch_job(k5i2i_hub, photo, capsys, tmp_path):
    job = tmp_path / "job.jsonl"
    line = {"task": "img2img", "image": str(photo), "prompt": "make it blue", "model": "kandinsky-5-i2i",
            "steps": 2, "seed": 7, "output": "e"}  # fmt: skip
    job.write_text(json.dumps(line) + "\n")
    code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out", "--offline", "-q")
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / "out" / "e.png"), _pipeline_image(k5i2i_hub, photo, 7))


def test_native_api_and_a1111_door(k5i2i_hub, photo):
    from fastapi.testclient import TestClient

    from kandi.engine import Engine
    from kandi.server.api import create_app

    b64 = base64.b64encode(photo.read_bytes()).decode()
    want = _pipeline_image(k5i2i_hub, photo, 3)
    with TestClient(create_app(Engine(["kandinsky-5-i2i"], offline=True).load(), ui=False)) as c:
        models = c.get("/models").json()["models"]
        assert models[0]["family"] == "k5i2i" and models[0]["tasks"] == ["img2img"]
        r = c.post("/v1/img2img", json={"prompt": "make it blue", "image": b64, "steps": 2, "seed": 3})
        assert r.status_code == 200, r.text
        png = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png_base64"])))
        assert np.array_equal(np.asarray(png.convert("RGB")), want)
        r = c.post("/sdapi/v1/img2img", json={"prompt": "make it blue", "init_images": [b64], "steps": 2,
                                              "seed": 3, "denoising_strength": 0.5, "width": 128, "height": 96})  # fmt: skip
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert any("strength 0.5 is ignored" in n for n in info["comments"]["kandi"])
        png = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert np.array_equal(np.asarray(png.convert("RGB")), want)
        bad = c.post("/v1/txt2img", json={"prompt": "a cat", "steps": 2})
        assert bad.status_code == 400 and "use kandinsky-5" in bad.text
        bad = c.post("/v1/img2img", json={"prompt": "a cat", "image": b64, "scheduler": "DDIM"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "scheduler"


@pytest.mark.parametrize("family", ["k5", "k5i2i"])
def test_ui_bodies_leave_out_the_prior(family):
    """The UI's img2img tab sends Kandinsky 5 no prior fields (it has no prior), and its tabs follow the
    family: text to image for kandinsky-5, img2img for kandinsky-5-i2i."""
    from kandi.engine.requests import tasks_of
    from kandi.server.ui_bodies import build_body

    values = {"prompt": "make it blue", "steps": 2, "prior_steps": 2, "prior_guidance_scale": 4.0,
              "image": Image.new("RGB", (64, 48)), "strength": 0.5, "input_size": True}  # fmt: skip
    body = build_body("img2img", values, family)
    assert body.prior_steps is None and body.prior_guidance_scale is None and body.width is None
    assert tasks_of(family) == (["text_to_image"] if family == "k5" else ["image_to_image"])
