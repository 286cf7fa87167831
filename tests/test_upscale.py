"""Upscaling: Lanczos, and tiny random learned upscalers written by the tests with spandrel's own
architecture classes (Real-ESRGAN Compact, ESRGAN), tiled against untiled."""

from __future__ import annotations

import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

from kandi import upscale


def _image(w: int, h: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_lanczos_is_pils():
    im = _image(40, 24)
    out = upscale.upscale(im, 3)
    assert out.size == (120, 72)
    assert list(out.getdata()) == list(im.resize((120, 72), PIL.Image.LANCZOS).getdata())
    assert upscale.upscale(im, 2, "Nearest").getpixel((1, 1)) == im.getpixel((0, 0))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((2.5,), "whole number"),
        ((9,), "out of range"),
        ((2, "4x-UltraSharp"), "unknown upscaler"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        upscale.upscale(_image(8, 8), *args)
    with pytest.raises(ValueError, match="PIL image"):
        upscale.upscale(np.zeros((8, 8, 3)), 2)


def test_list_upscalers(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "RealESRGAN_x4plus.pth").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("x")
    names = [i["name"] for i in upscale.list_upscalers(tmp_path)]
    assert names == ["Lanczos", "Nearest", "RealESRGAN_x4plus"]
    assert [i["name"] for i in upscale.list_upscalers(None)] == ["Lanczos", "Nearest"]


# ---------------------------------------------------------------------------- learned (spandrel)


@pytest.fixture(scope="module")
def sp():
    try:
        return upscale.spandrel()
    except ImportError:
        pytest.skip("spandrel is not installed (pip install 'kandi[upscale]')")


def _random(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def compact_file(sp, tmp_path_factory):
    """Real-ESRGAN's Compact net (x2, 2 body convs: it sees 4 px around a pixel) as .safetensors."""
    from spandrel.architectures.Compact import Compact

    path = tmp_path_factory.mktemp("up") / "compact_x2.safetensors"
    save_file(_random(Compact(num_feat=8, num_conv=2, upscale=2), 0), path)
    return path


@pytest.fixture(scope="module")
def esrgan_file(sp, tmp_path_factory):
    """An ESRGAN (RRDB, x2) as Real-ESRGAN ships it: a .pth holding {"params_ema": state dict}."""
    from spandrel.architectures.ESRGAN import ESRGAN

    path = tmp_path_factory.mktemp("up") / "esrgan_x2.pth"
    torch.save({"params_ema": _random(ESRGAN(num_filters=8, num_blocks=1, scale=2), 1)}, path)
    return path


def _whole(path, image: PIL.Image.Image) -> np.ndarray:
    model = upscale.load_upscaler(path)
    with torch.no_grad():
        return model(upscale._to_tensor(image))[0].permute(1, 2, 0).numpy()


def _tiled(path, image, tile, overlap) -> np.ndarray:
    model = upscale.load_upscaler(path)
    with torch.no_grad():
        out = upscale.run_tiled(model, upscale._to_tensor(image), 2, tile, overlap)
    return out[0].permute(1, 2, 0).numpy()


def test_tiles_equal_one_pass_where_the_net_sees_inside_the_overlap(compact_file):
    im = _image(150, 100, 1)
    whole = _whole(compact_file, im)
    tiled = _tiled(compact_file, im, 64, 16)  # overlap // 3 = 5 px >= the 4 px the net sees
    assert tiled.shape == whole.shape == (200, 300, 3)
    assert upscale.spans(150, 64, 16) == [(0, 61), (44, 61), (89, 61)]
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    seams = _tiled(compact_file, im, 64, 0)  # no overlap: tiles meet edge to edge
    assert np.abs(seams - whole).max() > 1e-3


def test_tiles_equal_one_pass_away_from_seams(esrgan_file):
    im = _image(160, 96, 2)
    whole, tiled = _whole(esrgan_file, im), _tiled(esrgan_file, im, 96, 48)
    tiles = upscale.spans(160, 96, 48)
    assert len(tiles) == 3 and all(a[0] + a[1] - b[0] >= 48 for a, b in zip(tiles, tiles[1:]))
    edges = [e for s, n in tiles for e in (s, s + n) if 0 < e < 160]  # inner tile edges
    far = np.ones(160, dtype=bool)
    for edge in edges:  # the net sees ~19 px
        far[max(0, edge - 24) : edge + 24] = False
    assert far.sum() > 20
    cols = np.repeat(far, 2)
    np.testing.assert_allclose(tiled[:, cols], whole[:, cols], atol=1e-5)
    assert np.abs(tiled - whole).max() < 0.05  # the blend hides what differs near the seams


def test_upscale_with_a_model_file(esrgan_file):
    im = _image(30, 20, 3)
    out = upscale.upscale(im, 2, "esrgan_x2", model_path=esrgan_file, tile=0)
    ref = (np.clip(_whole(esrgan_file, im), 0, 1) * 255).round().astype(np.uint8)
    assert out.size == (60, 40) and np.array_equal(np.asarray(out), ref)
    four = upscale.upscale(im, 4, "esrgan_x2", model_path=esrgan_file, tile=0)  # the 2x model run twice
    again = upscale.upscale(out, 2, "esrgan_x2", model_path=esrgan_file, tile=0)
    assert four.size == (120, 80) and np.array_equal(np.asarray(four), np.asarray(again))
    three = upscale.upscale(im, 3, "esrgan_x2", model_path=esrgan_file, tile=0)  # twice, then Lanczos down
    assert three.size == (90, 60)
    assert list(three.getdata()) == list(four.resize((90, 60), PIL.Image.LANCZOS).getdata())


def test_resize_cover_crops_the_centre(compact_file):
    im = _image(40, 20, 4)
    out = upscale.resize_cover(im, (60, 60), "model", compact_file, tile=0)
    assert out.size == (60, 60)
    full = upscale.resize_to(im, (120, 60), "model", compact_file, tile=0)
    assert list(out.getdata()) == list(full.crop((30, 0, 90, 60)).getdata())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_and_foreign_files_are_refused(sp, tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ValueError, match="cannot be read safely"):
        upscale.load_upscaler(tmp_path / "evil.pth")
    save_file({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no upscaler architecture"):
        upscale.load_upscaler(tmp_path / "other.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="accepted: .safetensors"):
        upscale.read_weights(tmp_path / "model.onnx")
