"""The CLI with `--model kandinsky-3`: generate and img2img on a tiny random Kandinsky 3 repo in an offline
Hugging Face cache; every image equals the Python API's with the same seed, and is made again from its PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import chunks, pixels, run, written

import kandi

PROMPT, NEGATIVE = "Schöne Berge über dem Fluss", "blurry"
K3 = ["--model", "kandinsky-3", "--steps", "3"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def api(k3_repo):
    t2i = kandi.Kandinsky3Pipeline.from_pretrained(k3_repo)
    pipes = {"t2i": t2i, "img2img": kandi.Kandinsky3Img2ImgPipeline(**t2i.components)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("k3in") / "in.png"
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_generate(api, k3_offline_hub, capsys, tmp_path):
    args = [
        "generate",
        PROMPT,
        *K3,
        "-W",
        "256",
        "-H",
        "256",
        "-n",
        NEGATIVE,
        "-s",
        3,
        "-o",
        tmp_path / "a.png",
    ]
    code, out, err = run(capsys, *args)
    assert (code, written(out)) == (0, [(tmp_path / "a.png", 3)]), err
    ref = api["t2i"](PROMPT, negative_prompt=NEGATIVE, height=256, width=256, num_inference_steps=3,
                     generator=gen(3)).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(tmp_path / "a.png"), np.array(ref))
    text = chunks(tmp_path / "a.png")
    assert "Model: kandinsky-3" in text["parameters"] and "Prior steps" not in text["parameters"]
    assert "CFG scale: 3.0" in text["parameters"]
    data = json.loads(text["kandi"])
    assert data["repos"] == {"decoder": "kandinsky-community/kandinsky-3", "prior": None}
    code, out, err = run(capsys, "generate", "--from-png", tmp_path / "a.png", "-o", tmp_path / "b.png")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(tmp_path / "b.png"), pixels(tmp_path / "a.png"))


def test_img2img(api, picture, k3_offline_hub, capsys, tmp_path):
    args = ["img2img", picture, PROMPT, *K3, "--strength", "0.75", "-s", 4, "-o", tmp_path / "a.png"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    ref = api["img2img"](PROMPT, image=Image.open(picture), strength=0.75, num_inference_steps=3,
                         generator=gen(4)).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(tmp_path / "a.png"), np.array(ref))


def test_k3_cannot_inpaint(picture, k3_offline_hub, capsys, tmp_path):
    code, out, err = run(capsys, "inpaint", picture, PROMPT, "--mask", picture, *K3, "-o", tmp_path / "c.png")
    assert code != 0 and "kandinsky-2.2" in err and "Traceback" not in err
