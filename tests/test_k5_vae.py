"""FLUX AutoencoderKL (Kandinsky 5's VAE): kandi against diffusers 0.42.1 on tiny random configs."""

from __future__ import annotations

import pytest
import torch

from kandi.models.vae_flux import AutoencoderKL, VAEConfig

diffusers = pytest.importorskip("diffusers")
from tiny_k5 import VAE_TINY  # noqa: E402

T2I_TEST = VAE_TINY


def _pair(**overrides):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**{**T2I_TEST, **overrides}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = AutoencoderKL.from_config(dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"mid_block_add_attention": True, "layers_per_block": 2},
        {"use_quant_conv": True, "use_post_quant_conv": True},
    ],
)
def test_encode_decode_match_diffusers(overrides) -> None:
    ref, ours = _pair(**overrides)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d_ref, d_ours = ref.encode(x).latent_dist, ours.encode(x).latent_dist
        torch.testing.assert_close(d_ours.mean, d_ref.mean, rtol=1e-5, atol=1e-5)
        s_ref = d_ref.sample(generator=torch.Generator().manual_seed(3))
        s_ours = d_ours.sample(generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(s_ours, s_ref, rtol=1e-5, atol=1e-5)
        z = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(ours.decode(z).sample, ref.decode(z).sample, rtol=1e-5, atol=1e-5)


def test_tiled_decode() -> None:
    _, ours = _pair()
    z = torch.randn(1, 16, 20, 28)
    with torch.no_grad():
        full = ours.decode(z).sample
        ours.enable_tiling(tile_size=32, overlap=4)
        assert torch.equal(ours.decode(z).sample, full)  # fits in one tile: the plain path
        ours.enable_tiling(tile_size=12, overlap=4)
        tiled = ours.decode(z).sample
    assert tiled.shape == full.shape
    # GroupNorm statistics are per tile, so tiles differ from the whole; where only the first tile
    # covers the image (latent rows/cols 0..7, the next tile starts at 8), the output is that tile's decode
    with torch.no_grad():
        first = ours._decode(z[..., :12, :12])
    torch.testing.assert_close(tiled[..., :16, :16], first[..., :16, :16], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(tiled).all()
    with pytest.raises(ValueError, match="overlap"):
        ours.enable_tiling(tile_size=8, overlap=4)


def test_refuses_other_configs() -> None:
    with pytest.raises(ValueError, match="act_fn"):
        VAEConfig.from_diffusers({**T2I_TEST, "act_fn": "gelu"})
    with pytest.raises(ValueError, match="down_block_types"):
        VAEConfig.from_diffusers({**T2I_TEST, "down_block_types": ["DownEncoderBlock2D"]})
