"""The defects a new user hit before the engine layer, each refused or fixed the same way in every shell:
limits before any model loads, prompt length, the serve extra, a busy port, outpaint margins as a list,
batch jobs checked as a whole, A1111 PNGs replayed, and one-line, quiet output."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny
from PIL import Image, PngImagePlugin
from test_cli import assert_one_line_error, run

from kandi import cli
from kandi.engine import Limits, Request, RequestError, plan
from kandi.engine import replay as replay_module

TINY = ["--steps", "2", "--prior-steps", "2", "--offline", "-q"]


def picture(w: int = 32, h: int = 32) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["-W", "100000", "-H", "100000"],
            "-W/--width 100000 is over the limit of 4096 (raise it with --max-size)",
        ),
        (["--steps", "5000"], "--steps 5000 is over the limit of 1000 (raise it with --max-steps)"),
        (["--num-images", "500"], "--num-images 500 is over the limit of 64 (raise it with --max-images)"),
        (["-W", "600", "--max-size", "512"], "-W/--width 600 is over the limit of 512"),
    ],
)
def test_cli_refuses_sizes_past_the_limits_before_loading(args, fragment, capsys, tmp_path, monkeypatch):
    from kandi.cli import common

    monkeypatch.setattr(common, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    code, out, err = run(capsys, "generate", "a cat", *args, "-o", tmp_path / "out", "--offline")
    assert_one_line_error(code, out, err, 1, fragment)
    assert not (tmp_path / "out").exists()


def test_the_limits_can_be_raised(offline_hub, capsys, tmp_path):
    code, out, err = run(capsys, "generate", "a cat", "-W", "64", "-H", "64", *TINY, "--max-size", "64",
                         "--num-images", "2", "--max-images", "2", "-o", tmp_path)  # fmt: skip
    assert code == 0, err


def test_a_huge_prompt_is_refused_in_every_shell(offline_hub, capsys, tmp_path):
    huge = "a red cat " * 100_000  # 1 MB
    code, out, err = run(capsys, "generate", huge, "-o", tmp_path, "--offline")
    assert_one_line_error(code, out, err, 1, "the prompt is 1000000 characters, over the limit of 4000")
    assert len(err) < 300
    with pytest.raises(RequestError, match="over the limit of 4000") as e:
        plan(Request("generate", prompt="x", negative_prompt=huge))
    assert e.value.field == "negative_prompt"
    assert plan(Request("generate", prompt=huge), Limits(max_prompt=2_000_000)).opts.prompt == huge


def test_a_long_prompt_warns_in_one_short_line(caplog):

    from kandi.pipelines.k22 import _tokenize

    tok = tiny.clip_tokenizer(Path(__import__("tempfile").mkdtemp()))
    with caplog.at_level(logging.WARNING, logger="kandi"):
        _tokenize(tok, ["a red cat " * 5000])
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("kandi")]
    assert len(lines) == 1 and len(lines[0]) < 200 and "token(s) were cut off" in lines[0]


def test_batch_refuses_an_oversized_line_before_any_work(offline_hub, capsys, tmp_path):
    job = tmp_path / "job.jsonl"
    job.write_text('{"prompt": "a cat", "width": 100000}\n{"prompt": "a dog", "width": 64, "height": 64}\n')
    started = time.monotonic()
    code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out", *TINY)
    assert code == 1 and "1 succeeded, 1 failed" in out
    line = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    assert line["status"] == "failed" and "width 100000 is over the limit of 4096" in line["error"]
    assert time.monotonic() - started < 120  # (a loose bound: the refused line costs no model work)


# ------------------------------------------------------------------------------------------- server


def test_kandi_serve_without_the_extra_says_which_to_install(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    code, out, err = run(capsys, "serve", "--port", "1")
    assert_one_line_error(code, out, err, 2, "kandi serve needs the serve extra (fastapi missing)",
                          "pip install 'kandi[serve]'")  # fmt: skip


def test_a_busy_port_fails_before_the_models_load(k22_cache, tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        env = {**__import__("os").environ, **tiny.offline_env(k22_cache)}
        proc = subprocess.run([sys.executable, "-m", "kandi", "serve", "--offline", "--port", str(port), "--no-ui"],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        held.close()
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "choose another --port" in proc.stderr
    assert "loading" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def client(k22_cache):
    from fastapi.testclient import TestClient

    from kandi.engine import Engine
    from kandi.server.api import create_app

    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        with TestClient(create_app(Engine(["kandinsky-2.2"], offline=True), ui=False)) as c:
            yield c


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_outpaint_margins_as_a_list_or_an_object(client):
    small = {"steps": 2, "prior_steps": 2, "seed": 3, "prompt": "a beach", "image": _b64(picture())}
    as_list = client.post("/v1/inpaint", json={**small, "outpaint": [8, 0, 24, 0]})
    as_object = client.post("/v1/inpaint", json={**small, "outpaint": {"left": 8, "right": 24}})
    assert as_list.status_code == as_object.status_code == 200, as_list.text
    assert as_list.json()["images"][0]["png_base64"] == as_object.json()["images"][0]["png_base64"]
    bad = client.post("/v1/inpaint", json={**small, "outpaint": [8, 0]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "outpaint"


def test_server_limits_and_prompt_length(client):
    r = client.post("/v1/txt2img", json={"prompt": "x", "width": 100000})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "width: 100000 is over this server's limit of 2048",
        "field": "width",
    }
    r = client.post("/v1/txt2img", json={"prompt": "x" * 5000})
    assert r.status_code == 400 and r.json()["error"]["field"] == "prompt"
    assert "over this server's limit of 4000" in r.json()["error"]["message"]


def test_api_docs_are_served_from_the_server_itself(client):
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200


def test_loading_for_the_server_prints_no_bars(k22_cache, capfd):
    from kandi.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        Engine(["kandinsky-2.2"], offline=True).load()
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "%|" not in err


# -------------------------------------------------------------------------------------------- batch


def test_batch_with_an_unknown_model_is_one_error_before_any_work(capsys, tmp_path):
    job = tmp_path / "job.txt"
    job.write_text("a cat\na dog\n")
    code, out, err = run(capsys, "batch", job, "-m", "nope", "-o", tmp_path / "out")
    assert_one_line_error(code, out, err, 2, "unknown model 'nope'")
    assert not (tmp_path / "out").exists()


def test_batch_of_a_folder_or_an_image_says_what_a_job_is(capsys, tmp_path):
    picture().save(tmp_path / "cat.png")
    code, out, err = run(capsys, "batch", tmp_path)
    assert_one_line_error(code, out, err, 2, "is a folder: give a job file")
    code, out, err = run(capsys, "batch", tmp_path / "cat.png")
    assert_one_line_error(code, out, err, 2, "cat.png is an image, not a job file")
    (tmp_path / "blob.txt").write_bytes(b"\xff\xfe\x00\x81 binary")
    code, out, err = run(capsys, "batch", tmp_path / "blob.txt")
    assert_one_line_error(code, out, err, 2, "blob.txt is not a text file")


# ------------------------------------------------------------------------------------------- replay


def _a1111_png(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    picture(64, 64).save(path, pnginfo=info)
    return path


A1111 = ("a lighthouse at dawn\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6.5, "
         "Seed: 1234, Size: 64x64, Model hash: abc123, Model: v1-5-pruned, Clip skip: 2")  # fmt: skip


def test_from_png_reads_an_a1111_png(offline_hub, capsys, tmp_path):
    png = _a1111_png(tmp_path / "a1111.png", A1111)
    rec = replay_module.recorded(png, "generate")
    assert rec["options"] == {"prompt": "a lighthouse at dawn", "negative_prompt": "blurry", "steps": 3,
                              "guidance_scale": 6.5, "seed": 1234, "width": 64, "height": 64,
                              "scheduler": "DPM++ 2M Karras"}  # fmt: skip
    code, out, err = run(capsys, "generate", "--from-png", png, "--prior-steps", "2", "--offline", "-q",
                         "-o", tmp_path / "again.png")  # fmt: skip
    assert code == 0, err
    assert "could not take" in err and "DPM++" not in err and "v1-5-pruned" in err and "Clip skip" in err
    made = Image.open(tmp_path / "again.png").text["parameters"]
    assert (
        made.startswith("a lighthouse at dawn\nNegative prompt: blurry\nSteps: 3,") and "Seed: 1234," in made
    )
    assert "Sampler: DPM++ 2M Karras," in made  # the sampler is taken now that kandi has it


def test_a_corrupt_or_foreign_png_names_the_file(capsys, tmp_path):
    good = tmp_path / "good.png"
    picture().save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    code, out, err = run(capsys, "generate", "--from-png", tmp_path / "cut.png")
    assert_one_line_error(code, out, err, 1, str(tmp_path / "cut.png"))
    code, out, err = run(capsys, "generate", "--from-png", good)
    assert_one_line_error(code, out, err, 1, f"{good} has no kandi metadata and no A1111 parameters")


# ---------------------------------------------------------------------------------- quiet and clear


def test_generate_help_shows_each_familys_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "guidance (default 4.0 (kandinsky-3: 3.0;" in text and "steps (default 50 (kandinsky-3: 25;" in text
    )


def test_an_existing_output_is_kept_and_the_new_name_said(offline_hub, capsys, tmp_path):
    args = ["generate", "a cat", "-s", "1", "-W", "64", "-H", "64", *TINY, "-o", tmp_path / "cat.png"]
    assert run(capsys, *args)[0] == 0
    code, out, err = run(capsys, *args)
    assert code == 0 and out.startswith(f"{tmp_path / 'cat-1.png'}  seed 1")
    assert err == f"warning: {tmp_path / 'cat.png'} exists: this image is cat-1.png\n"


def test_fp16_on_the_cpu_warns_from_the_cli_too(offline_hub, capsys, tmp_path):
    code, out, err = run(capsys, "generate", "a cat", "-W", "64", "-H", "64", *TINY, "--dtype", "fp16",
                         "--device", "cpu", "-o", tmp_path)  # fmt: skip
    assert "warning: running float16 weights on the CPU" in err
