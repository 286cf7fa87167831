"""The CLI with `--model kandinsky-2.1`: generate, img2img, inpaint, outpaint and mix on tiny random 2.1
repos in an offline Hugging Face cache; every image equals the 2.1 Python API's with the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import chunks, pixels, run, written

import kandi

PROMPT, NEGATIVE = "медведь на красной площади", "blurry"
STEPS = ["--steps", "3", "--prior-steps", "2"]
T64 = ["-W", "64", "-H", "64", *STEPS]
K21 = ["--model", "kandinsky-2.1"]
DECODER = dict(num_inference_steps=3, prior_num_inference_steps=2, height=64, width=64)
MARGINS = (8, 0, 12, 4)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs21")
    rng = np.random.default_rng(1)
    paths = {k: folder / f"{k}.png" for k in ("picture", "mask")}
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(paths["picture"])
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(paths["mask"])
    return paths


@pytest.fixture(scope="module")
def api(k21_repos) -> dict[str, object]:
    prior = kandi.KandinskyPriorPipeline.from_pretrained(k21_repos["prior"])
    dec = kandi.KandinskyPipeline.from_pretrained(k21_repos["decoder"])
    inp = kandi.KandinskyInpaintPipeline.from_pretrained(k21_repos["inpaint"])
    pc = {"prior_" + k: v for k, v in prior.components.items()}
    pipes = {
        "combined": kandi.KandinskyCombinedPipeline(**dec.components, **pc),
        "img2img": kandi.KandinskyImg2ImgCombinedPipeline(**dec.components, **pc),
        "inpaint": kandi.KandinskyInpaintCombinedPipeline(**inp.components, **pc),
    }
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


CASES = {
    "generate": (
        ["generate", PROMPT, *T64],
        lambda api, f, s: api["combined"](PROMPT, negative_prompt=NEGATIVE, generator=gen(s), **DECODER).images[0],
    ),
    "img2img": (
        ["img2img", "{picture}", PROMPT, "--strength", "0.6", *T64],
        lambda api, f, s: api["img2img"](PROMPT, Image.open(f["picture"]), negative_prompt=NEGATIVE, strength=0.6,
                                         generator=gen(s), **DECODER).images[0],
    ),
    "inpaint": (
        ["inpaint", "{picture}", PROMPT, "--mask", "{mask}", *T64],
        lambda api, f, s: api["inpaint"](PROMPT, Image.open(f["picture"]), Image.open(f["mask"]),
                                         negative_prompt=NEGATIVE, generator=gen(s), **DECODER).images[0],
    ),
    "outpaint": (
        ["inpaint", "{picture}", PROMPT, "--outpaint", ",".join(map(str, MARGINS)), *STEPS],
        lambda api, f, s: api["inpaint"].outpaint(PROMPT, Image.open(f["picture"]), *MARGINS, negative_prompt=NEGATIVE,
                                                  generator=gen(s), num_inference_steps=3,
                                                  prior_num_inference_steps=2).images[0],
    ),
    "mix": (
        ["mix", "a red cat", "0.7", "{picture}", "0.3", *T64],
        lambda api, f, s: api["combined"].mix(["a red cat", Image.open(f["picture"]).convert("RGB")], [0.7, 0.3],
                                              negative_prior_prompt=NEGATIVE, prior_num_inference_steps=2,
                                              num_inference_steps=3, height=64, width=64,
                                              generator=gen(s)).images[0],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_k21_command_matches_the_python_api(case, files, api, k21_offline_hub, capsys, tmp_path):
    args = [a.format(**files) for a in CASES[case][0]]
    code, out, err = run(capsys, *args, *K21, "-n", NEGATIVE, "-s", 7, "-o", tmp_path / "a.png")
    assert (code, err) == (0, "")
    assert written(out) == [(tmp_path / "a.png", 7)]
    np.testing.assert_array_equal(pixels(tmp_path / "a.png"), np.array(CASES[case][1](api, files, 7)))
    text = chunks(tmp_path / "a.png")
    assert "Model: kandinsky-2.1" in text["parameters"]
    data = json.loads(text["kandi"])
    assert data["options"]["model"] == "kandinsky-2.1"
    assert data["repos"]["prior"] == "kandinsky-community/kandinsky-2-1-prior"
    # made again from the PNG alone
    code, out, err = run(capsys, args[0], "--from-png", tmp_path / "a.png", "-o", tmp_path / "b.png")
    assert (code, err) == (0, "")
    np.testing.assert_array_equal(pixels(tmp_path / "b.png"), pixels(tmp_path / "a.png"))


def test_k21_controlnet_is_a_clear_error(files, k21_offline_hub, capsys, tmp_path):
    code, out, err = run(capsys, "controlnet", files["picture"], PROMPT, *K21, "-o", tmp_path / "c.png")
    assert code != 0 and "kandinsky-2.1 has no controlnet" in err and "Traceback" not in err
