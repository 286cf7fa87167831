"""`kandi img2img`, `inpaint` (mask and --outpaint), `mix` and `controlnet` end to end: tiny random 2.2 repos
in a temporary offline Hugging Face cache, CPU.

Every image is compared with what the Python API (kandi's diffusers-compatible pipelines, built from the
same tiny folders) makes with `torch.Generator().manual_seed(seed)`, and made again with --from-png.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, chunks, pixels, run, written

import kandi
from kandi import cli
from kandi.engine.requests import default_size

PROMPT, NEGATIVE = "a red cat", "blurry"
STEPS = ["--steps", "3", "--prior-steps", "2"]
T32 = ["-W", "32", "-H", "32", *STEPS]  # the tiny 2.2 and inpainting MoVQs downsample 2x
T64 = ["-W", "64", "-H", "64", *STEPS]  # the tiny ControlNet MoVQ downsamples 8x
MARGINS = (8, 0, 13, 5)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Input files: a 32x32 picture, a mask, a 16-bit 64x64 depth map, a 64x64 start image; and a text
    file named .png, and a file that does not exist."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = {k: folder / f"{k}.png" for k in ("picture", "mask", "depth", "init", "text", "missing")}
    paths["text"].write_text("not an image")
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(paths["picture"])
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(paths["mask"])
    Image.fromarray((rng.random((64, 64)) * 65535).astype(np.uint16)).save(paths["depth"])
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(paths["init"])
    return paths


@pytest.fixture(scope="module")
def api(k22_repos, k22_edit_repos) -> dict[str, object]:
    """kandi's diffusers-compatible pipelines on the tiny folders the cache holds."""
    prior = kandi.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
    dec = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    inp = kandi.KandinskyV22InpaintPipeline.from_pretrained(k22_edit_repos["inpaint"])
    ctl = kandi.KandinskyV22ControlnetPipeline.from_pretrained(k22_edit_repos["controlnet"])
    pc = {"prior_" + k: v for k, v in prior.components.items()}
    pipes = {
        "prior": prior,
        "img2img": kandi.KandinskyV22Img2ImgCombinedPipeline(**dec.components, **pc),
        "inpaint": kandi.KandinskyV22InpaintCombinedPipeline(**inp.components, **pc),
        "combined": kandi.KandinskyV22CombinedPipeline(**dec.components, **pc),
        "controlnet": ctl,
        "controlnet_img2img": kandi.KandinskyV22ControlnetImg2ImgPipeline(**ctl.components),
    }
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def _controlnet(api, files, seed: int, **init) -> Image.Image:
    """The prior, then the ControlNet decoder (with an init image: its img2img form), one generator."""
    g = gen(seed)
    e = api["prior"](PROMPT, negative_prompt=NEGATIVE, num_inference_steps=2, generator=g)
    pipe = api["controlnet_img2img" if init else "controlnet"]
    return pipe(image_embeds=e.image_embeds, negative_image_embeds=e.negative_image_embeds, hint=files["depth"],
                height=64, width=64, num_inference_steps=3, generator=g, **init).images[0]  # fmt: skip


DECODER = dict(num_inference_steps=3, prior_num_inference_steps=2)
# name: (arguments after the command's, the Python API's image for a seed)
CASES = {
    "img2img": (
        ["img2img", "{picture}", PROMPT, "--strength", "0.5", *T32],
        lambda api, f, s: api["img2img"](PROMPT, Image.open(f["picture"]), negative_prompt=NEGATIVE, strength=0.5,
                                         height=32, width=32, generator=gen(s), **DECODER).images[0],
    ),
    "inpaint": (
        ["inpaint", "{picture}", PROMPT, "--mask", "{mask}", "--strength", "0.8", "--paste-back", "--feather", "2",
         *T32],
        lambda api, f, s: api["inpaint"](PROMPT, Image.open(f["picture"]), Image.open(f["mask"]),
                                         negative_prompt=NEGATIVE, height=32, width=32, generator=gen(s), strength=0.8,
                                         paste_back=True, paste_back_feather=2, **DECODER).images[0],
    ),
    "outpaint": (
        ["inpaint", "{picture}", PROMPT, "--outpaint", ",".join(map(str, MARGINS)), *STEPS],
        lambda api, f, s: api["inpaint"].outpaint(PROMPT, Image.open(f["picture"]), *MARGINS, negative_prompt=NEGATIVE,
                                                  generator=gen(s), **DECODER).images[0],
    ),
    "mix": (
        ["mix", "a red cat", "0.7", "{picture}", "0.3", *T32],
        lambda api, f, s: api["combined"].mix(["a red cat", Image.open(f["picture"]).convert("RGB")], [0.7, 0.3],
                                              negative_prior_prompt=NEGATIVE, prior_num_inference_steps=2,
                                              num_inference_steps=3, height=32, width=32, generator=gen(s)).images[0],
    ),
    "controlnet": (["controlnet", "{depth}", PROMPT, *T64], lambda api, f, s: _controlnet(api, f, s)),
    "controlnet-init": (
        ["controlnet", "{depth}", PROMPT, "--image", "{init}", "--strength", "0.6", *T64],
        lambda api, f, s: _controlnet(api, f, s, image=Image.open(f["init"]), strength=0.6),
    ),
}  # fmt: skip


def _args(case: str, files: dict[str, Path]) -> list[str]:
    return [a.format(**files) for a in CASES[case][0]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", CASES)
def test_edit_command_matches_the_python_api_and_reproduces(case, files, api, offline_hub, capsys, tmp_path):
    args = _args(case, files)
    code, out, err = run(capsys, *args, "-n", NEGATIVE, "-s", 42, "--num-images", 2, "-o", tmp_path)
    assert (code, err) == (0, "")
    made = [tmp_path / "kandi-42.png", tmp_path / "kandi-43.png"]
    assert written(out) == list(zip(made, (42, 43)))
    for path, seed in zip(made, (42, 43)):
        np.testing.assert_array_equal(pixels(path), np.array(CASES[case][1](api, files, seed)))
    text = chunks(made[1])
    assert text["parameters"].startswith(f"{PROMPT}\nNegative prompt: {NEGATIVE}\nSteps: 3, ")
    data = json.loads(text["kandi"])
    assert (data["command"], data["options"]["seed"], data["options"]["num_images"]) == (args[0], 43, 1)
    for role, entry in data.get("inputs", {}).items():
        assert Path(entry["path"]).is_absolute() and entry["sha256"] == sha256(Path(entry["path"])), role
    # the second image again, from its PNG alone
    code, out, err = run(capsys, args[0], "--from-png", made[1], "-o", tmp_path / "again.png")
    assert (code, err) == (0, "")
    assert written(out) == [(tmp_path / "again.png", 43)]
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), pixels(made[1]))
    assert chunks(tmp_path / "again.png") == text


def test_img2img_metadata(files, offline_hub, capsys, tmp_path):
    code, out, err = run(capsys, *_args("img2img", files), "-s", 5, "-o", tmp_path / "a.png")
    assert (code, err, written(out)) == (0, "", [(tmp_path / "a.png", 5)])
    text = chunks(tmp_path / "a.png")
    assert text["parameters"] == (
        "a red cat\nSteps: 3, Sampler: DDPM, CFG scale: 4.0, Seed: 5, Size: 32x32, Model: kandinsky-2.2, "
        f"Prior steps: 2, Prior CFG scale: 4.0, Denoising strength: 0.5, Version: kandi {kandi.__version__}"
    )
    data = json.loads(text["kandi"])
    assert data["options"]["extra"] == {"strength": 0.5}
    assert data["inputs"] == {"image": {"path": str(files["picture"]), "sha256": sha256(files["picture"])}}
    assert data["repos"]["decoder"] == "kandinsky-community/kandinsky-2-2-decoder"


def test_outpainting_keeps_the_original_pixels(files, offline_hub, capsys, tmp_path):
    left, top, right, bottom = MARGINS
    code, out, err = run(capsys, *_args("outpaint", files), "-s", 1, "-o", tmp_path / "wide.png")
    assert (code, err) == (0, "")
    wide, original = pixels(tmp_path / "wide.png"), pixels(files["picture"])
    assert wide.shape == (top + 32 + bottom, left + 32 + right, 3)
    np.testing.assert_array_equal(wide[top : top + 32, left : left + 32], original)
    data = json.loads(chunks(tmp_path / "wide.png")["kandi"])
    assert data["options"]["extra"] == {"strength": 1.0, "outpaint": list(MARGINS), "feather": 8}
    assert (data["options"]["width"], data["options"]["height"]) == (53, 37)
    assert data["repos"]["decoder"] == "kandinsky-community/kandinsky-2-2-decoder-inpaint"
    assert set(data["inputs"]) == {"image"}


def test_mix_metadata_names_texts_and_images(files, offline_hub, capsys, tmp_path):
    args = [
        "mix",
        "text:a cat",
        1,
        f"image:{files['picture']}",
        -0.5,
        "-s",
        2,
        "-o",
        tmp_path / "m.png",
        *T32,
    ]
    assert run(capsys, *args)[0] == 0
    data = json.loads(chunks(tmp_path / "m.png")["kandi"])
    assert data["options"]["prompt"] == "a cat"
    assert data["options"]["extra"] == {
        "mix": [{"text": "a cat", "weight": 1.0}, {"image": "item2", "weight": -0.5}]
    }
    assert data["inputs"]["item2"]["path"] == str(files["picture"])


def test_mask_of_another_size_is_stretched(files, offline_hub, capsys, tmp_path):
    small = tmp_path / "small-mask.png"
    Image.open(files["mask"]).resize((16, 16)).save(small)
    args = ["inpaint", files["picture"], PROMPT, "--mask", small, "-s", 1, "-o", tmp_path / "o.png", *T32]
    code, out, err = run(capsys, *args)
    assert code == 0
    assert err == "warning: the 16x16 mask is stretched to the 32x32 image\n"


def test_default_size_is_the_inputs_rounded_to_64():
    sizes = [(32, 32), (100, 70), (500, 333), (96, 160)]
    assert [default_size(Image.new("RGB", s)) for s in sizes] == [
        (64, 64), (128, 64), (512, 320), (128, 192),
    ]  # fmt: skip


# -------------------------------------------------------------------------------------- --from-png


@pytest.fixture
def made_from_copy(files, offline_hub, capsys, tmp_path) -> tuple[Path, Path]:
    """(input copy, PNG made from it by img2img)."""
    copy = tmp_path / "copy.png"
    copy.write_bytes(files["picture"].read_bytes())
    args = ["img2img", copy, PROMPT, "-s", 3, "-o", tmp_path / "made.png", "--steps", 1, "--prior-steps", 1]
    assert run(capsys, *args, "-W", 32, "-H", 32)[0] == 0
    return copy, tmp_path / "made.png"


def test_from_png_refuses_a_changed_or_missing_input(made_from_copy, capsys):
    copy, made = made_from_copy
    Image.open(copy).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy)
    code, out, err = run(capsys, "img2img", "--from-png", made)
    assert_one_line_error(code, out, err, 1, f"was made from the IMAGE {copy}, which has changed since")
    copy.unlink()
    code, out, err = run(capsys, "img2img", "--from-png", made)
    assert_one_line_error(code, out, err, 1, f"was made from the IMAGE {copy}, which is missing")


def test_from_png_of_another_command(made_from_copy, capsys):
    _, made = made_from_copy
    code, out, err = run(capsys, "generate", "--from-png", made)
    assert_one_line_error(code, out, err, 2, "was made by `kandi img2img`", "kandi img2img --from-png")


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "args, status, fragment",
    [
        (["img2img"], 2, "an IMAGE is needed"),
        (["img2img", "{missing}", PROMPT], 1, "IMAGE: image file not found"),
        (["img2img", "{text}", PROMPT], 1, "is not a readable image"),
        (["img2img", "{picture}"], 2, "a PROMPT is needed"),
        (
            ["img2img", "{picture}", PROMPT, "--strength", "1.5"],
            2,
            "--strength: expected a number from 0 to 1",
        ),
        (
            ["img2img", "{picture}", PROMPT, "--strength", "-0.1"],
            2,
            "expected a number from 0 to 1, got '-0.1'",
        ),
        (["inpaint", "{picture}", PROMPT], 2, "--mask MASK or --outpaint LEFT,TOP,RIGHT,BOTTOM is needed"),
        (["inpaint", "{picture}", PROMPT, "--mask", "{missing}"], 1, "MASK: image file not found"),
        (["inpaint", "{picture}", PROMPT, "--outpaint", "8,0"], 2, "expected LEFT,TOP,RIGHT,BOTTOM"),
        (["inpaint", "{picture}", PROMPT, "--outpaint", "0,0,0,0"], 2, "not all 0; got '0,0,0,0'"),
        (["inpaint", "{picture}", PROMPT, "--outpaint=-1,0,0,0"], 2, "pixels >= 0"),
        (["inpaint", "{picture}", PROMPT, "--outpaint", "a,b,c,d"], 2, "expected LEFT,TOP,RIGHT,BOTTOM"),
        (["inpaint", "{picture}", PROMPT, "--outpaint", "8,0,0,0", "-W", "64"], 2, "leave out -W/-H"),
        (
            ["inpaint", "{picture}", PROMPT, "--outpaint", "8,0,0,0", "--mask", "{mask}"],
            2,
            "not allowed with",
        ),
        (["inpaint", "{picture}", PROMPT, "--mask", "{mask}", "--feather", "4"], 2, "add --paste-back"),
        (["inpaint", "{picture}", PROMPT, "--mask", "{mask}", "--feather", "-4"], 2, "--feather: expected"),
        (["mix"], 2, "mix needs ITEM WEIGHT pairs"),
        (["mix", "a cat", "0.5", "a dog"], 2, "'a dog' has no WEIGHT"),
        (["mix", "a cat", "half"], 2, "the WEIGHT of 'a cat' must be a number, got 'half'"),
        (["mix", "a cat", "nan"], 2, "must be a number, got 'nan'"),
        (["mix", "cat.png", "1"], 2, "no such image file 'cat.png' (write text:cat.png"),
        (["mix", "image:{missing}", "1"], 1, "item 1: image file not found"),
        (["controlnet"], 2, "a HINT is needed"),
        (["controlnet", "{missing}", PROMPT], 1, "HINT: image file not found"),
        (["controlnet", "{depth}", PROMPT, "--strength", "0.5"], 2, "--strength needs --image INIT"),
        (["controlnet", "{depth}", PROMPT, "--image", "{missing}"], 1, "INIT: image file not found"),
    ],
)
def test_errors_are_one_line_before_any_work(files, capsys, tmp_path, monkeypatch, args, status, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *[a.format(**files) for a in args], *T32)
    assert_one_line_error(code, out, err, status, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_decoder_of_the_wrong_kind(files, k22_repos, offline_hub, capsys, tmp_path):
    args = ["inpaint", files["picture"], PROMPT, "--mask", files["mask"], "-m", k22_repos["decoder"], *T32]
    code, out, err = run(capsys, *args, "-o", tmp_path)
    assert_one_line_error(code, out, err, 1, "this task needs an inpainting decoder")


def test_help_of_the_edit_commands(capsys):
    # test_cli's test_help_imports_no_torch covers these too: `kandi --help` builds every subparser
    for name in ("img2img", "inpaint", "mix", "controlnet"):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert text.startswith(f"usage: kandi {name}")
        assert "rounded to the nearest multiple of 64" in text or name == "mix"
