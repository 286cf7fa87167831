"""Samplers by name, Kandinsky 3.1 (Flash, base, inpainting) and Kandinsky 5 in the shells: the CLI, a
batch job and the server take them as they take the 2.x models."""

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

TINY = ["-W", "64", "-H", "64", "--steps", "3", "--prior-steps", "2", "--offline", "-q"]


# ----------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", "euler"])
def test_cli_sampler_by_name_is_recorded_and_replayed(name, offline_hub, capsys, tmp_path):
    code, out, err = run(
        capsys, "generate", "a red cat", "-s", "2", *TINY, "--sampler", name, "-o", tmp_path / "a.png"
    )
    assert code == 0, err
    from kandi.schedulers.names import _find

    shown = _find(name).name
    assert f"Sampler: {shown}," in pngmeta.read_png_text(tmp_path / "a.png")["parameters"]
    assert (
        run(
            capsys, "generate", "--from-png", tmp_path / "a.png", "--offline", "-q", "-o", tmp_path / "b.png"
        )[0]
        == 0
    )
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_samplers_change_the_image_and_unknown_ones_are_listed(offline_hub, capsys, tmp_path):
    for name in ("DDPM", "Euler a"):
        assert run(capsys, "generate", "a red cat", "-s", "2", *TINY, "--sampler", name, "-o",
                   tmp_path / f"{name}.png")[0] == 0  # fmt: skip
    assert not np.array_equal(pixels(tmp_path / "DDPM.png"), pixels(tmp_path / "Euler a.png"))
    code, out, err = run(capsys, "generate", "a cat", *TINY, "--sampler", "Restart", "-o", tmp_path)
    assert_one_line_error(code, out, err, 2, "unknown sampler 'Restart'", "DPM++ 2M Karras", "Euler a")


def test_batch_takes_a_sampler_field(offline_hub, capsys, tmp_path):
    job = tmp_path / "job.jsonl"
    job.write_text(json.dumps({"prompt": "a red cat", "seed": 2, "sampler": "Euler a", "output": "e"}) + "\n")
    assert run(capsys, "batch", job, "-o", tmp_path / "out", *TINY)[0] == 0
    assert (
        run(
            capsys,
            "generate",
            "a red cat",
            "-s",
            "2",
            *TINY,
            "--sampler",
            "Euler a",
            "-o",
            tmp_path / "c.png",
        )[0]
        == 0
    )
    assert np.array_equal(pixels(tmp_path / "out" / "e.png"), pixels(tmp_path / "c.png"))
    job.write_text(json.dumps({"prompt": "a red cat", "sampler": "Restart"}) + "\n")
    code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out2", *TINY)
    assert code == 1 and "unknown sampler 'Restart'" in (tmp_path / "out2" / "manifest.jsonl").read_text()


@pytest.fixture(scope="module")
def client(k22_cache):
    from fastapi.testclient import TestClient

    from kandi.engine import Engine
    from kandi.server.api import create_app

    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        with TestClient(create_app(Engine(["kandinsky-2.2"], offline=True), ui=False)) as c:
            yield c


def test_a1111_sampler_and_schedule_type(client):
    small = {"prompt": "a cat", "steps": 3, "width": 32, "height": 32, "seed": 1}
    r = client.post("/sdapi/v1/txt2img", json={**small, "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
    info = json.loads(r.json()["info"])
    assert info["sampler_name"] == "DPM++ 2M Karras" and not info["comments"]
    assert "Sampler: DPM++ 2M Karras," in info["infotexts"][0]
    r = client.post("/sdapi/v1/txt2img", json={**small, "sampler_name": "Restart"})  # an extension's sampler
    info = json.loads(r.json()["info"])
    assert (
        r.status_code == 200 and "Restart" in info["comments"]["kandi"][0] and info["sampler_name"] == "DDPM"
    )
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert {"DDPM", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "Euler", "Euler a"} <= set(names)
    native = client.post("/v1/txt2img", json={**small, "scheduler": "Euler a"})
    assert native.status_code == 200 and "Sampler: Euler a," in native.json()["images"][0]["parameters"]
    bad = client.post("/v1/txt2img", json={**small, "scheduler": "Restart"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "scheduler"


# -------------------------------------------------------------------------------------- Kandinsky 3.1


@pytest.fixture(scope="module")
def k31_hub(tmp_path_factory):
    import k31_tiny

    folder = k31_tiny.write_folder(tmp_path_factory.mktemp("k31"), k31_tiny.manifests())
    cache = tmp_path_factory.mktemp("hf31") / "hub"
    tiny.install_in_cache(cache, "ai-forever/Kandinsky3.1", folder)
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, cache)
        yield cache


def test_kandinsky_31_flash_base_and_inpainting_from_the_cli(k31_hub, capsys, tmp_path):
    small = ["-W", "64", "-H", "64", "--offline", "-q"]
    code, out, err = run(capsys, "generate", "a red fox", "-m", "kandinsky-3.1-flash", "-s", "1", *small, "-o",
                         tmp_path / "flash.png")  # fmt: skip
    assert code == 0, err
    params = pngmeta.read_png_text(tmp_path / "flash.png")["parameters"]
    assert "Steps: 4," in params and "Model: kandinsky-3.1-flash" in params and "Prior steps" not in params
    code, out, err = run(capsys, "generate", "a red fox", "-m", "kandinsky-3.1", "--steps", "3", "-s", "1", *small,
                         "-o", tmp_path / "base.png")  # fmt: skip
    assert code == 0, err
    assert run(capsys, "generate", "--from-png", tmp_path / "base.png", "--offline", "-q", "-o",
               tmp_path / "again.png")[0] == 0  # fmt: skip
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "base.png").read_bytes()
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(photo)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, out, err = run(capsys, "inpaint", photo, "a hat", "--mask", tmp_path / "mask.png", "-m", "kandinsky-3.1",
                         "--steps", "2", "--paste-back", "-s", "3", "--offline", "-q", "-o", tmp_path / "inp.png")  # fmt: skip
    assert code == 0, err
    out_px, in_px = pixels(tmp_path / "inp.png"), np.asarray(Image.open(photo))
    # kept outside the mask (within one level: 3.1 inpaints at its own ~1024² working size and back)
    assert out_px.shape == in_px.shape and np.abs(out_px[:8].astype(int) - in_px[:8]).max() <= 1
    code, out, err = run(capsys, "mix", "a", "1", "-m", "kandinsky-3.1", *small, "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "kandinsky-3.1 cannot do mix")


def test_kandinsky_31_through_the_server(k31_hub):
    from fastapi.testclient import TestClient

    from kandi.engine import Engine
    from kandi.server.api import create_app

    with TestClient(create_app(Engine(["kandinsky-3.1-flash"], offline=True).load(), ui=False)) as c:
        models = c.get("/models").json()["models"]
        assert models[0]["family"] == "k31" and models[0]["tasks"] == ["txt2img", "img2img", "inpaint"]
        r = c.post("/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "seed": 2})
        assert r.status_code == 200, r.text
        png = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png_base64"])))
        assert png.size == (64, 64) and "kandinsky-3.1-flash" in png.text["parameters"]


# ---------------------------------------------------------------------------------------- Kandinsky 5


@pytest.fixture(scope="module")
def k5_hub(tmp_path_factory):
    """The tiny Kandinsky 5 text-to-image repo in the official layout, in a cache under the official id."""
    import diffusers
    import tiny_k5

    c = tiny_k5.t2i_components(tmp_path_factory.mktemp("k5c"))
    folder = tmp_path_factory.mktemp("k5repo")
    pipe = diffusers.Kandinsky5T2IPipeline(**{**c, "tokenizer": tiny_k5.ProcessorShim(c["tokenizer"])})
    classes = {"transformer": ("diffusers", "Kandinsky5Transformer3DModel"), "vae": ("diffusers", "AutoencoderKL"),
               "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
               "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
               "tokenizer": ("transformers", "Qwen2VLProcessor"), "text_encoder_2": ("transformers", "CLIPTextModel"),
               "tokenizer_2": ("transformers", "CLIPTokenizer")}  # fmt: skip
    for name in classes:
        comp = getattr(pipe, name)
        getattr(comp, "tokenizer", comp).save_pretrained(folder / name)
    index = {"_class_name": "Kandinsky5T2IPipeline", "_diffusers_version": "0.42.1",
             **{k: list(v) for k, v in classes.items()}}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    cache = tmp_path_factory.mktemp("hf5") / "hub"
    tiny.install_in_cache(cache, "kandinskylab/Kandinsky-5.0-T2I-Lite-sft-Diffusers", folder)
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, cache)
        yield cache


def test_kandinsky_5_from_the_cli(k5_hub, capsys, tmp_path):
    args = ["generate", "a red square", "-m", "kandinsky-5", "--steps", "2", "-s", "4", "--offline", "-q"]
    code, out, err = run(capsys, *args, "-o", tmp_path / "k5.png")
    assert code == 0, err
    params = pngmeta.read_png_text(tmp_path / "k5.png")["parameters"]
    assert "Model: kandinsky-5" in params and "Sampler: Euler," in params and "Prior steps" not in params
    assert run(capsys, "generate", "--from-png", tmp_path / "k5.png", "--offline", "-q", "-o",
               tmp_path / "again.png")[0] == 0  # fmt: skip
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "k5.png").read_bytes()
    code, out, err = run(capsys, "mix", "a", "1", "-m", "kandinsky-5", "--offline", "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "kandinsky-5 cannot do mix")
    code, out, err = run(capsys, *args, "--sampler", "DDIM", "-o", tmp_path / "ddim.png")
    assert_one_line_error(code, out, err, 2, "kandinsky-5 runs flow-matching Euler only")
    assert run(capsys, *args, "--sampler", "Euler", "-o", tmp_path / "euler.png")[0] == 0
