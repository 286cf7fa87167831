"""Pins what every shell writes across the move to `kandi.engine`: for the same request, the CLI, the
server and the batch runner write the same PNG as before the move.

The golden files (tests/data/pin/) were recorded by `python tests/test_engine_pin.py --record` on the
code before the engine layer existed. They hold each PNG's text chunks exactly (temporary paths and
the version replaced by placeholders) and its pixels; pixels are compared with a tolerance of one
level, since CPU kernels may round differently on another processor. Within one run the three shells
must agree byte for byte.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny
from PIL import Image

import kandi
from kandi import cli

DATA = Path(__file__).parent / "data" / "pin"
SIZE = ["-W", "32", "-H", "32"]
TINY = ["--steps", "3", "--prior-steps", "2", "--offline", "-q"]


def picture(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def mask_image(w: int, h: int) -> Image.Image:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    return Image.fromarray(m)


def _inputs(folder: Path) -> dict[str, Path]:
    files = {
        "photo": picture(40, 40, 1),
        "depth": picture(32, 32, 2).convert("L"),
        "mask": mask_image(40, 40),
    }
    out = {}
    for name, im in files.items():
        out[name] = folder / f"{name}.png"
        im.save(out[name])
    return out


CLI_CASES = {
    "generate": lambda f: ["generate", "a red cat", "-n", "blurry", "-s", "7"],
    "img2img": lambda f: ["img2img", f["photo"], "a blue cat", "-s", "3", "--strength", "0.5"],
    "inpaint": lambda f: [
        "inpaint",
        f["photo"],
        "a hat",
        "--mask",
        f["mask"],
        "-s",
        "4",
        "--paste-back",
        "--feather",
        "2",
    ],  # fmt: skip
    "outpaint": lambda f: ["inpaint", f["photo"], "a beach", "--outpaint", "8,0,16,0", "-s", "5"],
    "mix": lambda f: ["mix", "a cat", "0.6", f["photo"], "0.4", "-s", "6"],
    "controlnet": lambda f: ["controlnet", f["depth"], "a robot", "--image", f["photo"], "-s", "8"],
}


def _normal(text: str, folder: Path) -> str:
    return text.replace(str(folder), "<tmp>").replace(kandi.__version__, "<version>")


def _record(png: bytes, folder: Path) -> dict:
    im = Image.open(io.BytesIO(png))
    im.load()
    return {
        "text": {k: _normal(v, folder) for k, v in im.text.items()},
        "pixels": np.asarray(im.convert("RGB")),
    }


def cli_pngs(folder: Path) -> dict[str, bytes]:
    f = _inputs(folder)
    out = {}
    for name, case in CLI_CASES.items():
        target = folder / f"cli-{name}.png"
        size = [] if name == "outpaint" else SIZE  # the margins set an outpainting's size
        code = cli.main([str(a) for a in case(f)] + size + TINY + ["-o", str(target)])
        assert code == 0, name
        out[name] = target.read_bytes()
    return out


def server_pngs(folder: Path) -> dict[str, bytes]:
    from fastapi.testclient import TestClient

    from kandi.engine import Engine
    from kandi.server.api import create_app

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    f = _inputs(folder)
    small = {"width": 32, "height": 32, "steps": 3, "prior_steps": 2}
    bodies = {
        "generate": ("txt2img", {"prompt": "a red cat", "negative_prompt": "blurry", "seed": 7, **small}),
        "img2img": (
            "img2img",
            {"prompt": "a blue cat", "image": b64(f["photo"]), "seed": 3, "strength": 0.5, **small},
        ),  # fmt: skip
        "inpaint": (
            "inpaint",
            {
                "prompt": "a hat",
                "image": b64(f["photo"]),
                "mask": b64(f["mask"]),
                "seed": 4,
                "paste_back": True,
                "feather": 2,
                **small,
            },
        ),  # fmt: skip
    }
    app = create_app(Engine(["kandinsky-2.2"], offline=True), workers=1, max_waiting=4, ui=False)
    out = {}
    with TestClient(app) as client:
        for name, (task, body) in bodies.items():
            r = client.post(f"/v1/{task}?format=png", json=body)
            assert r.status_code == 200, r.text
            out[name] = r.content
    return out


def batch_pngs(folder: Path) -> dict[str, bytes]:
    f = _inputs(folder)
    lines = [
        {"prompt": "a red cat", "negative_prompt": "blurry", "seed": 7, "output": "generate"},
        {
            "task": "img2img",
            "image": str(f["photo"]),
            "prompt": "a blue cat",
            "seed": 3,
            "strength": 0.5,
            "output": "img2img",
        },  # fmt: skip
        {
            "task": "inpaint",
            "image": str(f["photo"]),
            "mask": str(f["mask"]),
            "prompt": "a hat",
            "seed": 4,
            "paste_back": True,
            "feather": 2,
            "output": "inpaint",
        },  # fmt: skip
    ]
    job = folder / "job.jsonl"
    job.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out_dir = folder / "batch-out"
    code = cli.main(["batch", str(job), "-o", str(out_dir), "-q", "--offline", "-W", "32", "-H", "32",
                     "--steps", "3", "--prior-steps", "2"])  # fmt: skip
    assert code == 0
    return {p.stem: p.read_bytes() for p in out_dir.glob("*.png")}


SHELLS = {"cli": cli_pngs, "server": server_pngs, "batch": batch_pngs}


def _golden(shell: str, name: str) -> dict:
    meta = json.loads((DATA / f"{shell}-{name}.json").read_text(encoding="utf-8"))
    meta["pixels"] = np.load(DATA / f"{shell}-{name}.npy")
    return meta


def _same(got: dict, want: dict) -> None:
    assert got["text"] == want["text"]
    assert got["pixels"].shape == want["pixels"].shape
    assert np.abs(got["pixels"].astype(int) - want["pixels"].astype(int)).max() <= 1


@pytest.mark.parametrize("shell", list(SHELLS))
def test_shell_writes_what_it_wrote_before_the_engine_layer(shell, offline_hub, tmp_path, capsys):
    pngs = SHELLS[shell](tmp_path)
    capsys.readouterr()
    assert set(pngs) == {p.stem.split("-", 1)[1] for p in DATA.glob(f"{shell}-*.json")}
    for name, png in pngs.items():
        _same(_record(png, tmp_path), _golden(shell, name))


def test_the_shells_agree_byte_for_byte(offline_hub, tmp_path, capsys):
    """The same request through the CLI, the server and a batch job: one PNG (paths aside, none differ)."""
    made = {shell: fn(tmp_path / shell) for shell, fn in SHELLS.items() if (tmp_path / shell).mkdir() is None}
    capsys.readouterr()
    for name in ("generate", "img2img", "inpaint"):
        cli_im, server_im, batch_im = (
            _record(made[s][name], tmp_path / s) for s in ("cli", "server", "batch")
        )
        assert np.array_equal(cli_im["pixels"], server_im["pixels"]), name
        assert np.array_equal(cli_im["pixels"], batch_im["pixels"]), name
        assert (
            cli_im["text"]["parameters"] == server_im["text"]["parameters"] == batch_im["text"]["parameters"]
        )


def _record_golden() -> None:  # pragma: no cover (run by hand before a change to the shells)
    import tempfile

    import pytest as _pytest

    with tempfile.TemporaryDirectory() as tmp, _pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        repos = {**tiny.save_k22_repos(root / "k22"), **tiny.save_k22_edit_repos(root / "edit")}
        cache = root / "hf" / "hub"
        from conftest import OFFICIAL

        for key, repo_id in OFFICIAL.items():
            tiny.install_in_cache(cache, repo_id, repos[key])
        tiny.diffusers_to_kandi_env(mp, cache)
        DATA.mkdir(parents=True, exist_ok=True)
        for shell, fn in SHELLS.items():
            folder = root / shell
            folder.mkdir()
            for name, png in fn(folder).items():
                rec = _record(png, folder)
                np.save(DATA / f"{shell}-{name}.npy", rec["pixels"])
                (DATA / f"{shell}-{name}.json").write_text(json.dumps({"text": rec["text"]}, indent=1,
                                                                      ensure_ascii=False))  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if "--record" in sys.argv:
        import torch

        torch.set_num_threads(1)
        _record_golden()
