"""`kandi batch` on this machine: job files, seeds, the manifest, kill-and-resume, failures, batching.

Tiny random 2.2 repos (folders, or the offline cache under the official ids), CPU, one torch thread in
every process (the pixels of CPU kernels depend on the thread count).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, pixels, run

from kandi import cli, pngmeta
from kandi.batch import job as batch_job
from kandi.batch import runner as batch
from kandi.batch.job import derive_seed, read_job

TINY = ["-W", "32", "-H", "32", "--steps", "3", "--prior-steps", "2"]  # the tiny MoVQ downsamples 2x
PROMPTS = ["a red cat", "a blue dog", "a house on a hill", "Красивый закат над горами", "a green frog"]


def models(k22_repos) -> list[str]:
    return ["-m", str(k22_repos["decoder"]), "--prior", str(k22_repos["prior"])]


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def done(folder: Path) -> list[dict]:
    return [r for r in manifest(folder) if r["status"] == "done"]


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_job(tmp_path_factory) -> Path:
    lines = ["# the deployment guide's loop, as a job file", "", *PROMPTS[:2], "   ", *PROMPTS[2:]]
    return write(tmp_path_factory.mktemp("job") / "prompts.txt", "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_job, k22_repos) -> Path:
    """The text job run once, uninterrupted, batch size 2, in this process."""
    out = tmp_path_factory.mktemp("reference")
    code = cli.main(
        ["batch", str(text_job), "-o", str(out), "-q", "--batch-size", "2", *models(k22_repos), *TINY]
    )
    assert code == 0
    return out


# ---------------------------------------------------------------------------------------- the basics


@pytest.fixture(scope="module")
def singles(tmp_path_factory, text_job, k22_repos) -> Path:
    """The text job with the default batch size on the CPU (1): each item alone."""
    out = tmp_path_factory.mktemp("singles")
    assert cli.main(["batch", str(text_job), "-o", str(out), "-q", *models(k22_repos), *TINY]) == 0
    return out


def test_text_job_names_seeds_and_metadata(reference):
    records = manifest(reference)
    assert [r["outputs"] for r in records] == [[f"image_{i}.png"] for i in range(5)]
    assert [r["line"] for r in records] == [3, 4, 6, 7, 8]  # comments and blank lines are no items
    assert [r["seeds"] for r in records] == [[derive_seed(0, i)] for i in range(5)]
    assert {r["status"] for r in records} == {"done"} and len({r["id"] for r in records}) == 5
    assert not list(reference.glob(".*"))  # no temporary files left
    meta = pngmeta.read_png_options(reference / "image_3.png")
    assert meta["options"]["prompt"] == PROMPTS[3] and meta["command"] == "generate"
    assert meta["options"]["seed"] == derive_seed(0, 3) and meta["batch"] == {"index": 3, "size": 2}


def test_an_item_alone_is_kandi_generate(singles, k22_repos, capsys, tmp_path):
    seed = derive_seed(0, 1)
    code, _, err = run(
        capsys, "generate", PROMPTS[1], "-s", seed, "-o", tmp_path / "g.png", *models(k22_repos), *TINY
    )
    assert code == 0, err
    np.testing.assert_array_equal(pixels(singles / "image_1.png"), pixels(tmp_path / "g.png"))
    meta = pngmeta.read_png_options(singles / "image_1.png")
    code, _, err = run(
        capsys, "generate", "--from-png", singles / "image_1.png", "-o", tmp_path / "again.png"
    )
    assert code == 0, err
    np.testing.assert_array_equal(pixels(singles / "image_1.png"), pixels(tmp_path / "again.png"))
    assert meta["batch"] == {"index": 1, "size": 1}


def test_decoder_batches_equal_one_at_a_time_up_to_rounding(reference, singles):
    for i in range(5):
        a, b = pixels(reference / f"image_{i}.png").astype(int), pixels(singles / f"image_{i}.png")
        assert np.abs(a - b).max() <= 4 and np.abs(a - b).mean() < 0.5, i


def test_batched_stages_keep_each_images_generator(k22_repos):
    """Prior per image, one decoder run: negative prompts, several images per request, every seed kept."""
    from kandi.configs import GenerationOptions
    from kandi.pipelines import k22_batch, k22_tasks

    m = k22_tasks.K22Models.load(str(k22_repos["decoder"]), str(k22_repos["prior"]))
    base = dict(width=32, height=32, steps=3, prior_steps=2)
    requests = [GenerationOptions("a red cat", seed=5, num_images=2, **base),
                GenerationOptions("a dog", negative_prompt="blurry", seed=9, **base)]  # fmt: skip
    *_, batched = k22_batch.text_to_image_batch(m, requests)
    alone = [im for r in requests for im in list(k22_tasks.text_to_image(m, r))[-1].images]
    assert batched.seeds == [5, 6, 9] and len(batched.images) == 3
    for a, b in zip(batched.images, alone):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b)).max() <= 4
    with pytest.raises(ValueError, match="decoder batch needs one"):
        list(k22_batch.text_to_image_batch(m, [requests[0], GenerationOptions("x", seed=1, steps=4)]))


def test_rerun_skips_everything_and_keeps_the_job_seed(text_job, k22_repos, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "batch", text_job, "-o", out, "-s", "7", *models(k22_repos), *TINY)
    assert code == 0, err
    before = pngs(out)
    code, stdout, err = run(capsys, "batch", text_job, "-o", out, *models(k22_repos), *TINY)  # no -s: 7 again
    assert code == 0 and stdout.startswith("0 succeeded, 0 failed, 5 skipped"), err
    assert pngs(out) == before and len(done(out)) == 5
    assert [r["seeds"] for r in done(out)] == [[derive_seed(7, i)] for i in range(5)]


def test_an_edited_line_is_redone(k22_repos, capsys, tmp_path):
    job = write(tmp_path / "job.txt", "a red cat\na blue dog\n")
    out = tmp_path / "out"
    assert run(capsys, "batch", job, "-o", out, *models(k22_repos), *TINY)[0] == 0
    first = pngs(out)
    write(job, "a red cat\na blue bird\n")
    code, stdout, _ = run(capsys, "batch", job, "-o", out, *models(k22_repos), *TINY)
    assert code == 0 and stdout.startswith("1 succeeded, 0 failed, 1 skipped")
    now = pngs(out)
    assert now["image_0.png"] == first["image_0.png"] and now["image_1.png"] != first["image_1.png"]
    assert pngmeta.read_png_options(out / "image_1.png")["options"]["prompt"] == "a blue bird"
    # a changed default (here --steps) changes every request
    code, stdout, _ = run(capsys, "batch", job, "-o", out, *models(k22_repos), *TINY, "--steps", "2")
    assert code == 0 and stdout.startswith("2 succeeded, 0 failed, 0 skipped")


def test_progress_bar_with_eta_on_a_terminal_only(k22_repos, capsys, tmp_path, monkeypatch):
    from test_cli import _Terminal

    job = write(tmp_path / "job.txt", "a red cat\na dog\n")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert cli.main(["batch", str(job), "-o", str(tmp_path / "a"), *models(k22_repos), *TINY]) == 0
    assert (
        "kandi batch: 100%" in term.getvalue() and "2/2" in term.getvalue() and "<" in term.getvalue()
    )  # ETA
    term.seek(0), term.truncate()
    assert cli.main(["batch", str(job), "-o", str(tmp_path / "b"), "-q", *models(k22_repos), *TINY]) == 0
    assert term.getvalue() == ""


# ----------------------------------------------------------------------------------- kill and resume

KILL_JOB = [
    {"prompt": "a red cat"},
    {"prompt": "a blue dog", "negative_prompt": "blurry", "seed": 11},
    {"prompt": "a house", "num_images": 2},
    {"prompt": "a tall tower", "size": "32x64"},  # another size: another decoder batch
    {"prompt": "a boat"},
    {"prompt": "a green frog", "output": "named/frog"},
    {"prompt": "a red fox"},
    {"prompt": "a yellow bird", "cfg": 2.5},
    {"prompt": "a mountain lake"},
    {"prompt": "a castle"},
]


def _count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_killed_and_resumed_run_equals_an_uninterrupted_one(k22_repos, capsys, tmp_path):
    job = write(tmp_path / "job.jsonl", "".join(json.dumps(r) + "\n" for r in KILL_JOB))
    args = ["batch", str(job), "--batch-size", "2", "-q", *models(k22_repos), *TINY, "--steps", "12"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(capsys, *args, "-o", whole)[0] == 0
    # a real process, killed (SIGKILL: no cleanup at all) once a few items are in the manifest
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kandi", *args, "-o", str(cut)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count(cut / "manifest.jsonl") < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    finished = {r["index"] for r in done(cut)}
    assert 3 <= len(finished) < len(KILL_JOB), "the kill should land part-way through the job"
    # what else a crash may leave: a temporary file, a torn manifest line, an image of an unrecorded item
    pending = max(set(range(len(KILL_JOB))) - finished)
    name = "named/frog.png" if pending == 5 else f"image_{pending}.png" if pending != 2 else "image_2_0.png"
    (cut / name).parent.mkdir(exist_ok=True)
    (cut / name).write_bytes(b"half an image")
    (cut / ".image_9.png.0badf00d.tmp").write_bytes(b"partial")
    with open(cut / "manifest.jsonl", "a") as f:
        f.write('{"id": "9-0123456789abcdef", "status": "do')
    code, stdout, err = run(capsys, *args, "-o", cut)  # resumed (here in-process: one torch thread too)
    assert code == 0, err
    n = len(finished)
    assert stdout.startswith(f"{len(KILL_JOB) - n} succeeded, 0 failed, {n} skipped"), stdout
    ids = [r["id"] for r in done(cut)]
    assert sorted(ids) == sorted(r["id"] for r in done(whole)) and len(set(ids)) == len(ids)  # each once
    assert pngs(cut) == pngs(whole)  # the same bytes, pixels and metadata
    assert sorted(pngs(cut)) == sorted(
        ["image_0.png", "image_1.png", "image_2_0.png", "image_2_1.png", "image_3.png", "image_4.png",
         "named/frog.png", "image_6.png", "image_7.png", "image_8.png", "image_9.png"]
    )  # fmt: skip
    assert not [p for p in cut.rglob(".*") if p.is_file()]


def test_ctrl_c_exits_130_and_a_rerun_goes_on(k22_repos, capsys, tmp_path, monkeypatch):
    job = write(tmp_path / "job.txt", "a red cat\na dog\na frog\n")
    real = batch.Driver.take

    def take_then_interrupt(self, req, outcome):
        real(self, req, outcome)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(batch.Driver, "take", take_then_interrupt)
        code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out", *models(k22_repos), *TINY)
    assert code == 130 and out == ""
    assert err == (
        "interrupted after 1 succeeded, 0 failed, 0 skipped: run the same command again to go on\n"
        "kandi: error: interrupted\n"
    )
    code, out, _ = run(capsys, "batch", job, "-o", tmp_path / "out", *models(k22_repos), *TINY)
    assert code == 0 and out.startswith("2 succeeded, 0 failed, 1 skipped")


# ------------------------------------------------------------------------------------------- failures

FAILING_JOB = [
    '{"prompt": "a red cat"}',
    "not json at all",
    '{"prompt": "a cat", "stpes": 3}',
    '{"prompt": "a cat", "steps": 0}',
    '{"task": "img2img", "prompt": "a cat", "image": "missing.png"}',
    '{"task": "controlnet", "prompt": "a robot", "hint": "depth.png"}',  # the plain decoder is no ControlNet
    "[1, 2]",
    '{"prompt": "a dog", "output": "image_0"}',
    '{"prompt": "a blue dog"}',
]


def test_malformed_lines_and_failing_items_are_recorded_and_the_job_goes_on(k22_repos, capsys, tmp_path):
    job = write(tmp_path / "job.jsonl", "\n".join(FAILING_JOB) + "\n")
    Image.new("L", (32, 32), 128).save(tmp_path / "depth.png")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "batch", job, "-o", out, *models(k22_repos), *TINY)
    assert code == 1
    assert stdout.startswith("2 succeeded, 7 failed, 0 skipped")
    assert "Traceback" not in err
    errors = {r["index"]: r["error"] for r in manifest(out) if r["status"] == "failed"}
    assert errors.keys() == {1, 2, 3, 4, 5, 6, 7}
    assert errors[1].startswith("not JSON")
    assert "unknown field 'stpes'" in errors[2]
    assert errors[3] == "steps: expected a positive integer, got '0'"
    assert "missing.png" in errors[4] and "image file not found" in errors[4]
    assert "needs a ControlNet decoder" in errors[5]
    assert errors[6] == "expected a JSON object {...}"
    assert errors[7] == "output image_0.png is taken by item 0 (line 1)"
    for index, error in errors.items():
        assert f"item {index} (line {index + 1}) failed: {error}\n" in err
    assert sorted(pngs(out)) == ["image_0.png", "image_8.png"]
    # a rerun tries the failed items again and skips the done ones
    code, stdout, _ = run(capsys, "batch", job, "-o", out, *models(k22_repos), *TINY)
    assert code == 1 and stdout.startswith("0 succeeded, 7 failed, 2 skipped")
    assert len(done(out)) == 2


def test_a_model_that_cannot_load_fails_its_items_only(k22_repos, capsys, tmp_path):
    job = write(
        tmp_path / "job.jsonl", '{"prompt": "a cat", "model": "nobody/no-such-model"}\n{"prompt": "a dog"}\n'
    )
    code, stdout, err = run(
        capsys, "batch", job, "-o", tmp_path / "out", "--offline", *models(k22_repos), *TINY
    )
    assert code == 1 and stdout.startswith("1 succeeded, 1 failed, 0 skipped")
    assert "item 0 (line 1) failed: " in err and "nobody/no-such-model" in err


# --------------------------------------------------------------------------------- every kandi command


@pytest.fixture
def inputs(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "picture.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    Image.fromarray((rng.random((64, 64)) * 65535).astype(np.uint16)).save(tmp_path / "depth.png")
    return tmp_path


EDIT_JOB = [
    {"task": "img2img", "prompt": "a cat", "image": "picture.png", "strength": 0.5, "seed": 3},
    {"prompt": "a golden crown", "image": "picture.png", "mask": "mask.png", "paste_back": True, "seed": 4},
    {"task": "outpaint", "prompt": "a wide beach", "image": "picture.png", "outpaint": [8, 0, 8, 2]},
    {"items": ["a red cat", 0.6, "picture.png", 0.4], "seed": 5},
    {"task": "controlnet", "prompt": "a robot", "hint": "depth.png", "size": 64, "seed": 6},
]


def test_every_editing_command_in_one_job_equals_the_command(offline_hub, inputs, capsys, monkeypatch):
    job = write(inputs / "job.jsonl", "".join(json.dumps(r) + "\n" for r in EDIT_JOB))
    out = inputs / "out"
    monkeypatch.chdir(inputs.parent)  # input paths are read from the job's folder, not the working one
    code, stdout, err = run(capsys, "batch", job, "-o", out, *TINY)
    assert code == 0 and stdout.startswith("5 succeeded, 0 failed, 0 skipped"), err
    sizes = {i: Image.open(out / f"image_{i}.png").size for i in range(5)}
    assert sizes == {0: (32, 32), 1: (32, 32), 2: (48, 34), 3: (32, 32), 4: (64, 64)}
    meta = pngmeta.read_png_options(out / "image_0.png")
    assert meta["command"] == "img2img" and meta["inputs"]["image"]["path"] == str(inputs / "picture.png")
    p = str(inputs / "picture.png")
    for i, command in ((0, ["img2img", p, "a cat", "--strength", "0.5", "-s", "3"]),
                       (1, ["inpaint", p, "a golden crown", "--mask", str(inputs / "mask.png"), "--paste-back", "-s", "4"]),
                       (3, ["mix", "a red cat", "0.6", p, "0.4", "-s", "5"])):  # fmt: skip
        code, _, err = run(capsys, *command, "-o", inputs / f"cli{i}.png", *TINY)
        assert code == 0, err
        np.testing.assert_array_equal(pixels(out / f"image_{i}.png"), pixels(inputs / f"cli{i}.png"))
    code, _, err = run(capsys, "img2img", "--from-png", out / "image_0.png", "-o", inputs / "again.png")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(out / "image_0.png"), pixels(inputs / "again.png"))


def test_each_model_is_loaded_once(offline_hub, k22_repos, capsys, tmp_path, monkeypatch):
    loads = []
    from kandi.engine import engine as engine_module

    real = engine_module.load
    monkeypatch.setattr(engine_module, "load",
                        lambda model, *a, **kw: loads.append(model.decoder) or real(model, *a, **kw))  # fmt: skip
    folder = json.dumps(str(k22_repos["decoder"]))
    lines = [
        f'{{"prompt": "cat {i}", "model": {folder if i % 2 else json.dumps("kandinsky-2.2")}}}'
        for i in range(6)
    ]
    job = write(tmp_path / "job.jsonl", "\n".join(lines) + "\n")
    code, stdout, err = run(capsys, "batch", job, "-o", tmp_path / "out", "--batch-size", "2", *TINY)
    assert code == 0, err
    assert loads == ["kandinsky-community/kandinsky-2-2-decoder", str(k22_repos["decoder"])]
    assert [r["index"] for r in manifest(tmp_path / "out")] == [0, 2, 4, 1, 3, 5]  # grouped by model


# ---------------------------------------------------------------------------------------- job files


def test_csv_and_tsv_jobs(tmp_path):
    write(tmp_path / "a.png", "x")
    csv_job = write(tmp_path / "job.csv", 'prompt,Negative,seed,size,cfg,name,image\n'
                    '"a cat, oil painting",blurry,5,96x64,3.5,cats/one,\n'
                    ',,,,,,\n'
                    'a dog,,,,,,a.png\n'
                    'too,many,cells,,,,,,\n')  # fmt: skip
    items = read_job(csv_job)
    assert [(i.index, i.line, i.error) for i in items] == [
        (0, 2, None),
        (1, 4, None),
        (2, 5, "2 more cells than the header has"),
    ]
    assert items[0].fields == {"prompt": "a cat, oil painting", "negative_prompt": "blurry", "seed": 5, "width": 96,
                               "height": 64, "guidance_scale": 3.5, "output": "cats/one"}  # fmt: skip
    reqs = batch_job.plan(items, {"steps": 9}, tmp_path, 0)
    assert reqs[0].names == ["cats/one.png"] and reqs[0].args["steps"] == 9 and reqs[0].args["seed"] == 5
    assert reqs[1].command == "img2img" and reqs[1].args["image"] == str(tmp_path / "a.png")
    assert reqs[1].args["seed"] == derive_seed(0, 1) and reqs[1].names == ["image_1.png"]
    tsv = write(tmp_path / "job.tsv", "prompt\tsteps\na cat\t4\n")
    assert read_job(tsv)[0].fields == {"prompt": "a cat", "steps": 4}


def test_jsonl_fields_aliases_and_errors(tmp_path):
    lines = [
        '"a bare string is a prompt"',
        "# a comment",
        '{"prompt": "x", "num_images": 3, "name": "many.png", "Guidance": 2, "prior-steps": 4}',
        '{"prompt": "x", "task": "outpaint"}',
        '{"prompt": "x", "task": "img2img", "image": "a.png", "mask": "m.png", "outpaint": "1,1,1,1"}',
        '{"prompt": "x", "task": "sketch"}',
        '{"prompt": "x", "output": "../up"}',
        '{"prompt": "x", "output": "x.jpg"}',
        '{"negative_prompt": "only"}',
        '{"prompt": 5}',
        '{"prompt": "x", "seed": -1, "paste_back": "yes"}',
        '{"prompt": "x", "image": "gone.png"}',
        '{"prompt": "x", "seed": 18446744073709551615, "num_images": 2}',
        '{"prompt": "x", "image": "a.png", "mask": "m.png", "outpaint": "1,1,1,1"}',
    ]
    items = read_job(write(tmp_path / "job.jsonl", "\n".join(lines)))
    assert [i.line for i in items] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert items[1].fields == {"prompt": "x", "num_images": 3, "output": "many.png", "guidance_scale": 2.0,
                               "prior_steps": 4}  # fmt: skip
    assert items[8].error == "prompt: expected text, got 5"
    reqs = batch_job.plan(items, {}, tmp_path, 3)
    assert reqs[0].args["prompt"] == "a bare string is a prompt" and reqs[0].error is None
    assert reqs[1].names == ["many_0.png", "many_1.png", "many_2.png"]
    assert [r.error for r in reqs[2:8]] == [
        "outpaint needs outpaint margins: LEFT,TOP,RIGHT,BOTTOM",
        "mask does not apply to img2img",  # the first field the task does not take
        "unknown task 'sketch' (one of " + ", ".join(sorted(batch_job.TASKS)) + ")",
        "output '../up': a name inside the output folder, such as cats/red.png",
        "output 'x.jpg': kandi writes PNG files (the parameters live in PNG chunks)",
        "no prompt",
    ]
    assert reqs[9].error == "paste_back does not apply to generate"
    assert "gone.png" in reqs[10].error and reqs[10].id == "10-invalid"
    assert reqs[11].error == f"seeds {2**64 - 1} to {2**64} pass the largest seed {2**64 - 1}"
    assert reqs[12].error == "give a mask (inpaint) or outpaint margins, not both"


def test_the_id_follows_the_input_files_bytes(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "in.png")
    job = write(tmp_path / "job.jsonl", '{"prompt": "x", "image": "in.png"}\n')
    first = batch_job.plan(read_job(job), {}, tmp_path, 0)[0].id
    assert batch_job.plan(read_job(job), {}, tmp_path, 0)[0].id == first
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "in.png")
    assert batch_job.plan(read_job(job), {}, tmp_path, 0)[0].id != first
    assert batch_job.plan(read_job(job), {}, tmp_path, 1)[0].id != first  # another job seed: another seed


# ------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (["batch", "no-such-job.txt"], 2, "no such job file: no-such-job.txt"),
        (["batch", "{job}", "--workers", "2"], 2, "--workers is the number of Ray workers: add --ray"),
        (["batch", "{empty}"], 2, "holds no requests"),
        (["batch", "{json}"], 2, "write one JSON object a line in a .jsonl file"),
        (["batch", "{job}", "-o", "{job}"], 1, "cannot write to the output folder"),
        (["batch", "{job}", "--batch-size", "0"], 2, "expected a positive integer"),
    ],
)
def test_usage_errors_are_one_line(args, status, fragment, capsys, tmp_path):
    files = {"job": write(tmp_path / "job.txt", "a cat\n"), "empty": write(tmp_path / "e.txt", "# nothing\n\n"),
             "json": write(tmp_path / "j.json", "[]")}  # fmt: skip
    code, out, err = run(capsys, *[a.format(**files) for a in args])
    assert_one_line_error(code, out, err, status, fragment)


def test_ray_not_installed(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    job = write(tmp_path / "job.txt", "a cat\n")
    code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out", "--ray")
    assert_one_line_error(code, out, err, 2, "--ray needs Ray: pip install 'kandi[ray]'")


def test_one_run_per_output_folder(capsys, tmp_path):
    job = write(tmp_path / "job.txt", "a cat\n")
    held = batch.OutputFolder(tmp_path / "out")
    try:
        code, out, err = run(capsys, "batch", job, "-o", tmp_path / "out")
    finally:
        held.close()
    assert_one_line_error(code, out, err, 1, "another kandi batch is writing to")
