"""The `kandi` command line end to end: tiny random 2.2 repos in a temporary offline Hugging Face cache, CPU.

Most runs call `kandi.cli.main` in-process; one runs `python -m kandi` in a subprocess, as a user would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

import kandi
from kandi import cli, pngmeta
from kandi.engine.console import quiet_third_party
from kandi.errors import KandiWarning

OFFICIAL = {
    "decoder": "kandinsky-community/kandinsky-2-2-decoder",
    "prior": "kandinsky-community/kandinsky-2-2-prior",
}
TINY = ["-W", "64", "-H", "64", "--steps", "3", "--prior-steps", "2"]
PROMPT, NEGATIVE = "a red cat", "blurry"


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def written(out: str) -> list[tuple[Path, int]]:
    """(path, seed) of each `PATH  seed N` line that generate prints."""
    return [(Path(p), int(s)) for p, s in re.findall(r"^(.+\.png)  seed (\d+)$", out, re.M)]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def chunks(path: Path) -> dict[str, str]:
    with Image.open(path) as im:
        return dict(im.text)


@pytest.fixture(scope="module")
def first(tmp_path_factory, k22_cache) -> tuple[Path, str, str]:
    """One image made with seed 42 and a negative prompt: (path, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("first")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["generate", PROMPT, "-n", NEGATIVE, "-s", "42", "-o", str(folder), *TINY])
    assert code == 0, err.getvalue()
    return folder / "kandi-42.png", out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------- generate


def test_png_carries_a1111_parameters_and_kandi_json(first):
    path, out, err = first
    assert written(out) == [(path, 42)]
    assert err == ""  # no library warnings or loading bars
    text = chunks(path)
    assert text["parameters"] == (
        "a red cat\nNegative prompt: blurry\nSteps: 3, Sampler: DDPM, CFG scale: 4.0, Seed: 42, Size: 64x64, "
        f"Model: kandinsky-2.2, Prior steps: 2, Prior CFG scale: 4.0, Version: kandi {kandi.__version__}"
    )
    data = json.loads(text["kandi"])
    assert data["options"] == {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "model": "kandinsky-2.2", "width": 64, "height": 64,
        "steps": 3, "guidance_scale": 4.0, "prior_steps": 2, "prior_guidance_scale": 4.0, "seed": 42,
        "num_images": 1, "scheduler": None, "extra": {},
    }  # fmt: skip
    assert data["repos"] == {"decoder": OFFICIAL["decoder"], "prior": OFFICIAL["prior"]}
    assert (data["version"], data["device"], data["dtype"], data["sampler"]) == (
        kandi.__version__, "cpu", "float32", "DDPM",
    )  # fmt: skip
    assert pixels(path).shape == (64, 64, 3)


def test_from_png_reproduces_bit_for_bit(first, offline_hub, capsys, tmp_path):
    code, out, err = run(capsys, "generate", "--from-png", first[0], "-o", tmp_path / "again.png")
    assert (code, err) == (0, "")
    assert written(out) == [(tmp_path / "again.png", 42)]
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), pixels(first[0]))
    assert chunks(tmp_path / "again.png") == chunks(first[0])


def test_image_is_diffusers_combined_pipeline_output(first, offline_hub):
    import diffusers

    pipe = diffusers.KandinskyV22CombinedPipeline.from_pretrained(OFFICIAL["decoder"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' own callback_steps deprecation
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, width=64, height=64, num_inference_steps=3,
                   prior_num_inference_steps=2, generator=torch.Generator().manual_seed(42)).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(first[0]), np.array(ref))


def test_num_images_gives_each_image_its_own_seed(first, offline_hub, capsys, tmp_path):
    code, out, _ = run(
        capsys, "generate", PROMPT, "-n", NEGATIVE, "-s", 42, "--num-images", 2, "-o", tmp_path, *TINY
    )
    assert code == 0
    assert written(out) == [(tmp_path / "kandi-42.png", 42), (tmp_path / "kandi-43.png", 43)]
    meta = json.loads(chunks(tmp_path / "kandi-43.png")["kandi"])["options"]
    assert (meta["seed"], meta["num_images"]) == (43, 1)
    np.testing.assert_array_equal(pixels(tmp_path / "kandi-42.png"), pixels(first[0]))
    # the second image alone, from its own seed
    code, out, _ = run(
        capsys, "generate", PROMPT, "-n", NEGATIVE, "-s", 43, "-o", tmp_path / "alone.png", *TINY
    )
    assert written(out) == [(tmp_path / "alone.png", 43)]
    np.testing.assert_array_equal(pixels(tmp_path / "alone.png"), pixels(tmp_path / "kandi-43.png"))
    assert not pixels(tmp_path / "kandi-42.png").tolist() == pixels(tmp_path / "kandi-43.png").tolist()


def test_random_seed_is_printed_and_recorded(offline_hub, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "generate", "a dog", *TINY)
    assert (code, err) == (0, "")
    [(path, seed)] = written(out)
    assert path == Path("outputs") / f"kandi-{seed}.png"  # the default folder and name
    assert f"Seed: {seed}," in chunks(path)["parameters"]
    assert json.loads(chunks(path)["kandi"])["options"]["seed"] == seed


def test_never_overwrites_an_existing_file(offline_hub, capsys, tmp_path):
    target = tmp_path / "cat.png"
    target.write_bytes(b"not yours to overwrite")
    code, out, _ = run(capsys, "generate", "a cat", "-s", 7, "-o", target, *TINY)
    assert code == 0
    assert written(out) == [(tmp_path / "cat-1.png", 7)]
    assert target.read_bytes() == b"not yours to overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-1.png", "cat.png"]  # no temp file left


def test_russian_and_chinese_prompts_round_trip(offline_hub, capsys, tmp_path):
    prompt, negative = "рыжий кот, 一只红色的猫", "размыто"
    code, out, _ = run(capsys, "generate", prompt, "-n", negative, "-s", 3, "-o", tmp_path / "ru.png", *TINY)
    assert code == 0
    raw = (tmp_path / "ru.png").read_bytes()
    assert b"iTXtparameters" in raw and b"iTXtkandi" in raw  # UTF-8 chunks, not Latin-1 tEXt
    params = chunks(tmp_path / "ru.png")["parameters"]
    assert params.startswith(f"{prompt}\nNegative prompt: {negative}\nSteps: 3, ")
    opts = pngmeta.read_png_options(tmp_path / "ru.png")["options"]
    assert (opts["prompt"], opts["negative_prompt"]) == (prompt, negative)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_with_quiet(offline_hub, capsys, tmp_path, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    args = ["generate", "a cat", "-s", "1", "-o", str(tmp_path), *TINY]
    assert cli.main(args) == 0
    assert "image 1/1" in term.getvalue() and "decoder" in term.getvalue()
    term.seek(0), term.truncate()
    assert cli.main([*args[: -len(TINY) - 1], str(tmp_path / "quiet"), *TINY, "--quiet"]) == 0
    assert term.getvalue() == ""


def test_subprocess_run_is_quiet_and_reproducible(first, k22_cache, tmp_path):
    env = {**os.environ, **tiny.offline_env(k22_cache), "OMP_NUM_THREADS": "1"}
    args = ["generate", PROMPT, "-n", NEGATIVE, "-s", "42", "-o", str(tmp_path / "sub.png"), *TINY]
    proc = subprocess.run([sys.executable, "-m", "kandi", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no third-party warning or bar reaches the user
    assert written(proc.stdout) == [(tmp_path / "sub.png", 42)]
    np.testing.assert_array_equal(pixels(tmp_path / "sub.png"), pixels(first[0]))


# --------------------------------------------------------------------------------------------- errors


def assert_one_line_error(code: int, out: str, err: str, status: int, *fragments: str) -> None:
    assert code == status, err
    assert out == ""
    assert err.startswith("kandi: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-W", "0"], "-W/--width: expected a positive integer, got '0'"),
        (["-W", "abc"], "-W/--width: expected a positive integer, got 'abc'"),
        (["-H", "-64"], "-H/--height: expected a positive integer, got '-64'"),
        (["--steps", "0"], "--steps: expected a positive integer"),
        (["--prior-steps", "1.5"], "--prior-steps: expected a positive integer"),
        (["--num-images", "0"], "--num-images: expected a positive integer"),
        (["--guidance-scale", "nan"], "--guidance-scale/--cfg: expected a finite number, got 'nan'"),
        (["--cfg", "inf"], "expected a finite number, got 'inf'"),
        (["--prior-guidance-scale", "x"], "--prior-guidance-scale: expected a finite number"),
        (["-s", "-2"], "-s/--seed: expected an integer from 0"),
        (["--dtype", "int8"], "--dtype: expected fp32, fp16 or bf16"),
        (["--scheduler", "euler2"], "unknown sampler 'euler2'"),
        (["-m", "kandinsky-9"], "unknown model 'kandinsky-9'"),
        (["-o", "cat.jpg"], "kandi writes PNG files"),
    ],
)
def test_usage_errors_are_one_line_before_any_work(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(capsys, "generate", "a cat", *TINY, *args), 2, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing loaded


def test_missing_prompt_and_command(capsys):
    assert_one_line_error(*run(capsys, "generate"), 2, "a PROMPT is needed")
    assert_one_line_error(*run(capsys), 2, "required: COMMAND")


def test_output_under_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out, err = run(capsys, "generate", "a cat", *TINY, "-o", tmp_path / "file" / "out")
    assert_one_line_error(code, out, err, 1, "cannot write to the output folder", "Not a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_output_in_a_read_only_folder(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, out, err = run(capsys, "generate", "a cat", *TINY, "-o", ro / "cat.png")
    assert_one_line_error(code, out, err, 1, "cannot write to the output folder", "Permission denied")


def test_from_png_without_metadata(capsys, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert_one_line_error(*run(capsys, "generate", "--from-png", plain), 1, f"{plain} has no kandi metadata")
    (tmp_path / "text.png").write_text("hello")
    assert_one_line_error(
        *run(capsys, "generate", "--from-png", tmp_path / "text.png"), 1, "is not a PNG image"
    )
    code, out, err = run(capsys, "generate", "--from-png", tmp_path / "missing.png")
    assert_one_line_error(code, out, err, 1, "missing.png: No such file or directory")


def test_offline_without_weights_says_how_to_download(capsys, tmp_path, monkeypatch):
    tiny.diffusers_to_kandi_env(monkeypatch, tmp_path / "empty-cache")
    code, out, err = run(capsys, "generate", "a cat", *TINY, "-o", tmp_path)
    assert_one_line_error(
        code, out, err, 1, "not in the Hugging Face cache", "`kandi download kandinsky-2.2`"
    )


def test_interrupt_exits_130_and_bugs_keep_their_traceback(capsys, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.common, "plan", interrupt)
    assert_one_line_error(*run(capsys, "generate", "a cat"), 130, "interrupted")

    def bug(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.common, "plan", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["generate", "a cat"])


# ------------------------------------------------------------------------------------------- download


def test_download_cached_model_prints_paths(offline_hub, capsys):
    code, out, err = run(capsys, "download")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["decoder", "prior"]
    for line, role in zip(lines, ("decoder", "prior")):
        repo, path = line.split(": ", 1)[1].split(" -> ")
        assert repo == OFFICIAL[role] and (Path(path) / "model_index.json").is_file()


def test_download_offline_without_cache(capsys, tmp_path, monkeypatch):
    tiny.diffusers_to_kandi_env(monkeypatch, tmp_path / "empty-cache")
    code, out, err = run(capsys, "download", "kandinsky-2.2")
    assert_one_line_error(code, out, err, 1, "not in the Hugging Face cache", "offline mode is on")
    assert_one_line_error(*run(capsys, "download", "nonsense"), 2, "unknown model 'nonsense'")


# ----------------------------------------------------------------------------------------- help, noise


def test_help_imports_no_torch():
    script = (
        "import sys, contextlib, io, kandi.cli\n"
        "for argv in (['--help'], ['generate', '--help'], ['download', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        kandi.cli.main(argv)\n"
        "    assert 'usage: kandi' in out.getvalue()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'PIL', 'kandi.pipelines') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"kandi {kandi.__version__}"


def test_only_kandi_warnings_reach_the_user(capsys):
    import logging

    level = logging.getLogger("transformers").level
    with quiet_third_party():
        warnings.warn("offload ignored", KandiWarning, stacklevel=1)
        warnings.warn("some library deprecation", FutureWarning, stacklevel=1)
        logging.getLogger("transformers.foo").warning("library chatter")
        logging.getLogger("kandi.pipelines.k22").warning("prompt cut off")
        logging.getLogger("kandi.loading").info("details")
    assert capsys.readouterr().err == "warning: offload ignored\nwarning: prompt cut off\n"
    assert logging.getLogger("transformers").level == level  # undone after the command


# ------------------------------------------------------------------------------------------- pngmeta


def test_a1111_format_and_quoting():
    opts = {"prompt": "a cat", "negative_prompt": None, "model": "my, model", "steps": 50, "guidance_scale": 4,
            "prior_steps": 25, "prior_guidance_scale": 7.5, "seed": 1}  # fmt: skip
    assert pngmeta.format_parameters(opts, sampler="DDIM", size=(768, 512), version="9.9") == (
        "a cat\nSteps: 50, Sampler: DDIM, CFG scale: 4.0, Seed: 1, Size: 768x512, "
        'Model: "my, model", Prior steps: 25, Prior CFG scale: 7.5, Version: kandi 9.9'
    )
    opts["negative_prompt"] = ""  # an empty negative prompt gets no line, as in A1111
    assert "Negative prompt" not in pngmeta.format_parameters(opts, sampler="DDIM", size=(1, 1), version="1")
    assert [pngmeta.quote(v) for v in ("plain", "a: b", "x\ny", 2.5)] == ["plain", '"a: b"', '"x\\ny"', "2.5"]


def test_write_png_is_atomic_and_refuses_existing(tmp_path):
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    path = pngmeta.write_png(tmp_path / "a.png", image, "params", '{"options": {"prompt": "x"}}')
    assert chunks(path) == {"parameters": "params", "kandi": '{"options": {"prompt": "x"}}'}
    with pytest.raises(FileExistsError):
        pngmeta.write_png(path, image, "other", "{}")
    assert chunks(path)["parameters"] == "params"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    assert pngmeta.read_png_options(path) == {"options": {"prompt": "x"}}
