"""Tiled MoVQ decode and encode (kandi.models.tiling): blended seams, exact tiles, automatic tiling, and
the pipelines' enable_vae_tiling(). Tiny random models built here; no diffusers needed."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

import kandi
from kandi.models import movq as movq_module
from kandi.models.movq import MoVQ
from kandi.models.tiling import run_tiled, spans

CONFIGS = Path(__file__).parent / "data" / "configs"
TINY_MOVQ = json.loads((CONFIGS / "tiny-k22-decoder.json").read_text())["components"]["movq"]["kwargs"]


def tiny_movq(seed: int = 0) -> MoVQ:
    """The tiny 2.2 MoVQ (factor 2), every parameter perturbed so norms and biases matter."""
    torch.manual_seed(seed)
    m = MoVQ.from_config(TINY_MOVQ).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


class DecoderCalls:
    """Counts the decoder's (or encoder's) forward calls: one per tile."""

    def __init__(self, module: nn.Module):
        self.n = 0
        self._h = module.register_forward_pre_hook(self._count)

    def _count(self, *_: object) -> None:
        self.n += 1

    def __enter__(self) -> DecoderCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self._h.remove()


# ------------------------------------------------------------------------------- the tiling itself


def local_net(scale: int | Fraction) -> nn.Module:
    """Two 3x3 convs around a resampler: sees 2 px (decoder-like) or 3 px (encoder-like) of input."""
    torch.manual_seed(0)
    resample = nn.Upsample(scale_factor=2) if scale == 2 else nn.Conv2d(6, 6, 2, stride=2)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), resample, nn.Conv2d(6, 5, 3, padding=1)).eval()


@pytest.mark.parametrize("scale", [2, Fraction(1, 2)])
def test_a_local_network_tiles_to_its_untiled_result(scale) -> None:
    # the network sees no further than overlap // 3 input px, so blending identical values everywhere
    net = local_net(scale)
    x = torch.randn(2, 3, 60, 92)
    with torch.no_grad():
        whole = net(x)
        tiled = run_tiled(net, x, scale, tile=24, overlap=12)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_tiles_are_evenly_spread_and_downscales_need_aligned_sizes() -> None:
    assert spans(40, 64, 16) == [(0, 40)]
    assert spans(100, 40, 8) == [(0, 39), (30, 39), (61, 39)]  # shrunk to share about 8 px each
    with pytest.raises(ValueError, match="multiples of 2"):
        run_tiled(local_net(Fraction(1, 2)), torch.randn(1, 3, 61, 64), Fraction(1, 2), tile=24, overlap=12)


# ------------------------------------------------------------------------------------- MoVQ decode


def test_decode_within_one_tile_is_the_untiled_decode() -> None:
    m = tiny_movq()
    z = torch.randn(1, 4, 20, 24)
    with torch.no_grad():
        whole = m.decode(z).sample
        m.enable_tiling(tile_size=24, overlap=8)
        assert torch.equal(m.decode(z).sample, whole)


def test_tiled_decode_is_each_tiles_decode_away_from_seams_and_blends_across_them() -> None:
    m = tiny_movq()
    z = torch.randn(1, 4, 24, 40)  # one row of tiles: width spans (0, 24), (16, 24)
    m.enable_tiling(tile_size=24, overlap=8)
    with torch.no_grad():
        zq = m.quantize(z)
        left = m.decode(zq[..., :24], force_not_quantize=True).sample  # each tile decoded as a whole image
        right = m.decode(zq[..., 16:], force_not_quantize=True).sample
        tiled = m.decode(z).sample
        m.disable_tiling()
        whole = m.decode(z).sample
    assert spans(40, 24, 8) == [(0, 24), (16, 24)]
    # factor 2: the overlap is output columns 32..47; its outer thirds (5 px each side) are one tile's only
    torch.testing.assert_close(tiled[..., :37], left[..., :37], rtol=0, atol=1e-5)
    torch.testing.assert_close(tiled[..., 43:], right[..., 11:], rtol=0, atol=1e-5)
    # across the seam every pixel lies between the two tiles' own values (a cross-fade, no jump)
    a, b, seam = left[..., 37:43], right[..., 5:11], tiled[..., 37:43]
    assert (seam >= torch.minimum(a, b) - 1e-5).all() and (seam <= torch.maximum(a, b) + 1e-5).all()
    assert not torch.allclose(seam, a) and not torch.allclose(seam, b)
    # and close to one whole pass: tiles normalise with their own statistics (about 10% here)
    assert (tiled - whole).abs().mean() < 0.2 * whole.abs().mean()


def test_tiled_decode_conditions_each_tile_on_its_own_latent_crop() -> None:
    # SpatialNorm modulates by the quantised latent: a tile given the whole latent (resized) would differ
    m = tiny_movq()
    z = torch.randn(1, 4, 24, 40)
    m.enable_tiling(tile_size=24, overlap=8)
    with torch.no_grad():
        zq = m.quantize(z)
        tiled = m.decode(z).sample
        h = m.post_quant_conv(zq[..., :24])
        wrong = m.decoder(h, zq)  # every norm resizes the whole latent to the tile
    assert not torch.allclose(tiled[..., :37], wrong[..., :37], atol=1e-3)


# ------------------------------------------------------------------------------------- MoVQ encode


def test_tiled_encode_is_each_tiles_encode_away_from_seams_and_close_overall() -> None:
    m = tiny_movq()
    x = torch.randn(1, 3, 48, 80)  # latents 24 x 40: the decode test's tiles, in pixels (x2)
    with torch.no_grad():
        whole = m.encode(x).latents
        m.enable_tiling(tile_size=24, overlap=8)
        with DecoderCalls(m.encoder) as calls:
            tiled = m.encode(x).latents
        left = m._encode(x[..., :48])
        right = m._encode(x[..., 32:])
    assert calls.n == 2 and tiled.shape == whole.shape
    # latent overlap columns 16..23; outer thirds (2 latent px each side) belong to one tile only
    torch.testing.assert_close(tiled[..., :18], left[..., :18], rtol=0, atol=1e-5)
    torch.testing.assert_close(tiled[..., 22:], right[..., 6:], rtol=0, atol=1e-5)
    a, b, seam = left[..., 18:22], right[..., 2:6], tiled[..., 18:22]
    assert (seam >= torch.minimum(a, b) - 1e-5).all() and (seam <= torch.maximum(a, b) + 1e-5).all()
    assert (tiled - whole).abs().mean() < 0.3 * whole.abs().mean()


def test_encode_of_sizes_off_the_factor_runs_whole() -> None:
    m = tiny_movq()
    m.enable_tiling(tile_size=8, overlap=2)
    x = torch.randn(1, 3, 33, 40)
    with torch.no_grad(), DecoderCalls(m.encoder) as calls:
        m.encode(x)
    assert calls.n == 1


# ------------------------------------------------------------------------------ automatic, switches


def test_auto_tiling_starts_above_the_threshold_and_an_explicit_disable_wins(monkeypatch) -> None:
    m = tiny_movq()
    assert m.use_tiling is None and m.auto_tile_pixels == movq_module.AUTO_TILE_PIXELS
    monkeypatch.setattr(m, "auto_tile_pixels", 140 * 140)  # latents 70 x 70 at factor 2; the real one is slow
    # default tiles: 64 latent px sharing 16, so one px over the area gives 2 x 2 tiles
    for (h, w), expected in [((70, 70), 1), ((70, 71), 4), ((80, 80), 4)]:
        with torch.no_grad(), DecoderCalls(m.decoder) as calls:
            m.decode(torch.randn(1, 4, h, w))
        assert calls.n == expected, ((h, w), calls.n)
    m.disable_tiling()
    with torch.no_grad(), DecoderCalls(m.decoder) as calls:
        m.decode(torch.randn(1, 4, 80, 80))
    assert calls.n == 1


def test_the_default_threshold_leaves_1280_px_whole_and_tiles_above() -> None:
    m = tiny_movq()  # factor 2: latents of 640 x 640 make 1280 x 1280 images
    assert not m.tiles_latent(640, 640) and m.tiles_latent(641, 640)
    assert not m.tiles_latent(512, 768)  # 1024 x 1536
    m.enable_tiling()
    assert m.tiles_latent(65, 64) and not m.tiles_latent(64, 64)  # one tile: the plain path


@pytest.mark.parametrize("tile, overlap", [(8, 4), (1, 0), (16, -1), (16.0, 2)])
def test_enable_tiling_refuses_bad_sizes(tile, overlap) -> None:
    with pytest.raises(ValueError, match="overlap >= 0 under half the tile size"):
        tiny_movq().enable_tiling(tile_size=tile, overlap=overlap)


def test_pipelines_enable_and_disable_vae_tiling(k22_repos) -> None:
    pipe = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_vae_tiling()
    assert pipe.movq.use_tiling is True
    pipe.movq.enable_tiling(tile_size=8, overlap=2)  # small tiles so the tiny image really tiles
    emb = torch.randn(1, pipe.unet.config.encoder_hid_dim, generator=torch.Generator().manual_seed(0))
    kw = {"image_embeds": emb, "negative_image_embeds": -emb, "height": 64, "width": 64,
          "num_inference_steps": 2, "output_type": "np"}  # fmt: skip
    with DecoderCalls(pipe.movq.decoder) as calls:
        tiled = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert calls.n > 1
    pipe.disable_vae_tiling()
    assert pipe.movq.use_tiling is False
    with DecoderCalls(pipe.movq.decoder) as calls:
        whole = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert calls.n == 1 and tiled.shape == whole.shape
    prior = kandi.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
    combined = kandi.KandinskyV22CombinedPipeline(
        **pipe.components, **{"prior_" + k: v for k, v in prior.components.items()}
    )
    combined.enable_vae_tiling()
    assert combined.movq.use_tiling is True
    with pytest.raises(ValueError, match="no MoVQ or VAE"):
        prior.enable_vae_tiling()


def test_kandinsky3_pipeline_takes_enable_vae_tiling(k3_repo) -> None:
    pipe = kandi.Kandinsky3Pipeline.from_pretrained(k3_repo)
    pipe.enable_vae_tiling()
    assert pipe.movq.use_tiling is True
    pipe.disable_vae_tiling()
    assert pipe.movq.use_tiling is False
