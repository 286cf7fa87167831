"""LoRA, the hi-res pass and upscaling in every shell: `kandi generate --lora/--hires`, `kandi upscale`,
batch fields, and the A1111 door (`<lora:NAME:SCALE>`, enable_hr, /loras, /upscalers,
/extra-single-image). The features themselves are tested in test_lora / test_hires / test_upscale."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tiny
from PIL import Image
from safetensors.torch import save_file
from test_cli import assert_one_line_error, pixels, run
from test_lora import DECODER_PROJS, _attn_proc_file

from kandi import pngmeta

TINY = ["-W", "64", "-H", "64", "--steps", "2", "--prior-steps", "2", "--offline", "-q"]


@pytest.fixture(scope="module")
def lora_dir(k22_repos, tmp_path_factory) -> Path:
    """A folder with a LoRA for the tiny 2.2 decoder, in the training examples' layout."""
    from kandi.models.unet2 import UNet2

    unet = UNet2.from_pretrained(k22_repos["decoder"] / "unet")
    sd, _ = _attn_proc_file(unet, DECODER_PROJS, seed=5, rank=2)
    folder = tmp_path_factory.mktemp("loras")
    save_file({k: v.contiguous() * 4 for k, v in sd.items()}, folder / "style.safetensors")
    return folder


def test_generate_with_a_lora_records_it_and_from_png_reproduces_it(offline_hub, lora_dir, capsys, tmp_path):
    lora = lora_dir / "style.safetensors"
    base = ["generate", "a red cat", "-s", "3", *TINY]
    assert run(capsys, *base, "-o", tmp_path / "plain.png")[0] == 0
    code, out, err = run(capsys, *base, "--lora", f"{lora}:0.8", "-o", tmp_path / "lora.png")
    assert code == 0, err
    assert not np.array_equal(pixels(tmp_path / "plain.png"), pixels(tmp_path / "lora.png"))
    params = pngmeta.read_png_text(tmp_path / "lora.png")["parameters"]
    assert 'Lora hashes: "style: ' in params
    meta = pngmeta.read_png_options(tmp_path / "lora.png")
    assert meta["loras"][0]["scale"] == 0.8 and meta["options"]["extra"]["loras"][0]["path"] == str(lora)
    # the same request again from its PNG: the same bytes (the LoRA is read from the recorded path)
    assert run(capsys, "generate", "--from-png", tmp_path / "lora.png", "--offline", "-q", "-o",
               tmp_path / "again.png")[0] == 0  # fmt: skip
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "lora.png").read_bytes()
    # the prompt's A1111 tag is the same LoRA at the same scale; the model reads the prompt without it
    code, out, err = run(capsys, "generate", "a red cat <lora:style:0.8>", "-s", "3", *TINY, "--lora-dir", lora_dir,
                         "-o", tmp_path / "tag.png")  # fmt: skip
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / "tag.png"), pixels(tmp_path / "lora.png"))


def test_lora_errors_are_one_line(offline_hub, lora_dir, capsys, tmp_path):
    code, out, err = run(
        capsys, "generate", "a cat", *TINY, "--lora", tmp_path / "none.safetensors", "-o", tmp_path
    )
    assert_one_line_error(code, out, err, 1, "LoRA file not found")
    code, out, err = run(
        capsys, "generate", "a cat <lora:nope:1>", *TINY, "--lora-dir", lora_dir, "-o", tmp_path
    )
    assert_one_line_error(code, out, err, 1, "no LoRA named 'nope'", "style")
    code, out, err = run(capsys, "generate", "a cat <lora:style:1>", *TINY, "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "no LoRA folder is set (--lora-dir)")


def test_generate_with_a_hires_pass(offline_hub, capsys, tmp_path):
    args = ["generate", "a red cat", "-s", "4", *TINY, "--hires", "2", "--hires-strength", "0.6",
            "--hires-steps", "2", "-o", tmp_path / "hr.png"]  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 0, err
    with Image.open(tmp_path / "hr.png") as im:
        assert im.size == (128, 128)
        params = im.text["parameters"]
    assert "Size: 64x64," in params and "Hires upscale: 2," in params and "Hires steps: 2," in params
    assert "Denoising strength: 0.6" in params and "Hires upscaler: Lanczos" in params
    assert run(capsys, "generate", "--from-png", tmp_path / "hr.png", "--offline", "-q", "-o",
               tmp_path / "again.png")[0] == 0  # fmt: skip
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "hr.png").read_bytes()
    code, out, err = run(capsys, "generate", "a cat", *TINY, "--hires", "9", "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "hires scale 9.0 is out of range")
    code, out, err = run(capsys, "generate", "a cat", *TINY, "--hires-steps", "3", "-o", tmp_path)
    assert_one_line_error(code, out, err, 2, "go with --hires SCALE")
    code, out, err = run(
        capsys, "generate", "a cat", *TINY, "--hires", "8", "--max-size", "256", "-o", tmp_path
    )
    assert_one_line_error(code, out, err, 1, "512 is over the limit of 256")


def test_kandi_upscale(capsys, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)).save(src)
    code, out, err = run(capsys, "upscale", src, "--scale", "4")
    assert code == 0, err
    with Image.open(tmp_path / "in-x4.png") as im:
        assert im.size == (120, 80) and im.text["postprocessing"].startswith("Postprocess upscale by: 4")
    assert out.startswith(f"{tmp_path / 'in-x4.png'}  120x80 (Lanczos)")
    code, out, err = run(capsys, "upscale", src, "--scale", "9")
    assert_one_line_error(code, out, err, 1, "whole upscale factor from 1 to 8")
    code, out, err = run(capsys, "upscale", src, "--upscaler", "RealESRGAN_x4plus")
    assert_one_line_error(code, out, err, 1, "unknown upscaler 'RealESRGAN_x4plus'", "Lanczos")
    code, out, err = run(capsys, "upscale", src, "--scale", "4", "--max-size", "16")
    assert_one_line_error(code, out, err, 1, "would be 120x80, over the limit of 64")


def test_batch_items_take_lora_and_hires(offline_hub, lora_dir, capsys, tmp_path):
    lines = [{"prompt": "a red cat", "seed": 3, "lora": [str(lora_dir / "style.safetensors"), 0.8], "output": "lora"},
             {"prompt": "a red cat", "seed": 4, "hires": 2, "hires_steps": 2, "hires_strength": 0.6, "output": "hr"}]  # fmt: skip
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out", *TINY)
    assert code == 0, err
    assert run(capsys, "generate", "a red cat", "-s", "3", *TINY, "--lora", f"{lora_dir / 'style.safetensors'}:0.8",
               "-o", tmp_path / "cli-lora.png")[0] == 0  # fmt: skip
    assert np.array_equal(pixels(tmp_path / "out" / "lora.png"), pixels(tmp_path / "cli-lora.png"))
    with Image.open(tmp_path / "out" / "hr.png") as im:
        assert im.size == (128, 128) and "Hires upscale: 2," in im.text["parameters"]


@pytest.fixture(scope="module")
def a1111(k22_cache, lora_dir):
    from fastapi.testclient import TestClient

    from kandi.engine import Engine
    from kandi.server.api import create_app

    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        app = create_app(Engine(["kandinsky-2.2"], offline=True), ui=False, lora_dir=str(lora_dir))
        with TestClient(app) as c:
            yield c


def _png(data: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(data)))
    im.load()
    return im


def test_a1111_hires_fields_and_lora_tags(a1111, offline_hub, lora_dir, capsys, tmp_path):
    small = {"steps": 2, "width": 64, "height": 64, "seed": 3, "cfg_scale": 4}
    r = a1111.post("/sdapi/v1/txt2img", json={"prompt": "a red cat <lora:style:0.8>", **small, "enable_hr": True,
                                              "hr_scale": 2, "hr_upscaler": "Lanczos", "denoising_strength": 0.6,
                                              "hr_second_pass_steps": 2})  # fmt: skip
    assert r.status_code == 200, r.text
    im = _png(r.json()["images"][0])
    assert im.size == (128, 128)
    assert "Hires upscale: 2," in im.text["parameters"] and 'Lora hashes: "style: ' in im.text["parameters"]
    assert json.loads(r.json()["info"])["denoising_strength"] == 0.6
    names = [x["name"] for x in a1111.get("/sdapi/v1/loras").json()]
    assert names == ["style"]
    assert [x["name"] for x in a1111.get("/sdapi/v1/upscalers").json()][:2] == ["Lanczos", "Nearest"]
    r = a1111.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:other:1>", **small})
    assert r.status_code == 400 and r.json()["error"]["field"] == "prompt" and "no LoRA named" in r.text


def test_a1111_extra_single_image(a1111):
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), "red").save(buf, format="PNG")
    r = a1111.post("/sdapi/v1/extra-single-image", json={"image": base64.b64encode(buf.getvalue()).decode(),
                                                          "upscaling_resize": 2, "upscaler_1": "Lanczos"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert _png(r.json()["image"]).size == (48, 32) and "Postprocess upscale by: 2" in r.json()["html_info"]
