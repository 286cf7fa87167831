"""The FLUX.1 autoencoder of Kandinsky 5 (diffusers' `AutoencoderKL`, 16 latent channels, 8x down).

Kingma & Welling 2014 VAE in the Rombach et al. 2022 layout: the encoder outputs a diagonal Gaussian
(mean, log-variance), the decoder maps a latent back to pixels. The building blocks are MoVQ's with plain
GroupNorms; FLUX drops the 1x1 quant convs. Attribute names follow the diffusers checkpoint keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..schedulers.noise import randn
from .layers import KandiModel, ModelOutput, config_int, config_ints
from .movq import ACTIVATIONS, DECODER_BLOCKS, ENCODER_BLOCKS, EPS, MidBlock, ResAttnStack
from .tiling import TiledAutoencoder


def _refuse(field: str, value: Any, accepted: str) -> ValueError:
    return ValueError(
        f"AutoencoderKL config {field}={value!r} is not supported by kandi; accepted: {accepted}"
    )


@dataclass(frozen=True)
class VAEConfig:
    """The diffusers `AutoencoderKL` config; field names are its config keys."""

    in_channels: int
    out_channels: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    act_fn: str
    latent_channels: int
    norm_num_groups: int
    sample_size: int  # metadata
    scaling_factor: float  # metadata: pipelines scale latents with it
    shift_factor: float | None  # metadata: FLUX's latent mean (Kandinsky 5's pipelines do not use it)
    force_upcast: bool  # metadata
    use_quant_conv: bool
    use_post_quant_conv: bool
    mid_block_add_attention: bool

    def __post_init__(self) -> None:
        if not self.block_out_channels:
            raise _refuse("block_out_channels", self.block_out_channels, "at least one level")
        for field, types, known in (
            ("down_block_types", self.down_block_types, ENCODER_BLOCKS),
            ("up_block_types", self.up_block_types, DECODER_BLOCKS),
        ):
            if len(types) != len(self.block_out_channels) or any(t not in known for t in types):
                raise _refuse(field, types, f"one of {tuple(known)} per block_out_channels entry")
        if self.act_fn not in ACTIVATIONS:
            raise _refuse("act_fn", self.act_fn, f"{ACTIVATIONS}")
        if self.layers_per_block < 1:
            raise _refuse("layers_per_block", self.layers_per_block, "an int >= 1")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise _refuse("norm_num_groups", self.norm_num_groups, f"a divisor of every width ({ch})")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> VAEConfig:
        """Read an `AutoencoderKL` config dict; missing keys take diffusers' constructor defaults."""
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        n = "AutoencoderKL"
        for key in ("latents_mean", "latents_std"):
            if d.get(key) is not None:
                raise _refuse(key, d[key], "None")
        return cls(
            in_channels=config_int(n, "in_channels", d.get("in_channels", 3)),
            out_channels=config_int(n, "out_channels", d.get("out_channels", 3)),
            down_block_types=tuple(d.get("down_block_types", ("DownEncoderBlock2D",))),
            up_block_types=tuple(d.get("up_block_types", ("UpDecoderBlock2D",))),
            block_out_channels=config_ints(n, "block_out_channels", d.get("block_out_channels", (64,))),
            layers_per_block=config_int(n, "layers_per_block", d.get("layers_per_block", 1)),
            act_fn=d.get("act_fn", "silu"),
            latent_channels=config_int(n, "latent_channels", d.get("latent_channels", 4)),
            norm_num_groups=config_int(n, "norm_num_groups", d.get("norm_num_groups", 32)),
            sample_size=config_int(n, "sample_size", d.get("sample_size", 32)),
            scaling_factor=float(d.get("scaling_factor", 0.18215)),
            shift_factor=d.get("shift_factor"),
            force_upcast=bool(d.get("force_upcast", True)),
            use_quant_conv=bool(d.get("use_quant_conv", True)),
            use_post_quant_conv=bool(d.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(d.get("mid_block_add_attention", True)),
        )

    def to_diffusers(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("down_block_types", "up_block_types", "block_out_channels"):
            d[key] = list(d[key])
        return {"_class_name": "AutoencoderKL", **d}


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> (B, 2 * latent, H / f, W / f): Gaussian mean and log-variance."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            ResAttnStack(
                chs[max(i - 1, 0)], ch, cfg.layers_per_block, ENCODER_BLOCKS[t], groups, down=i < len(chs) - 1
            )
            for i, (t, ch) in enumerate(zip(cfg.down_block_types, chs))
        )
        self.mid_block = MidBlock(chs[-1], groups, attn=cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    """Latent (B, latent, h, w) -> image (B, 3, h * f, w * f)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.mid_block = MidBlock(chs[0], groups, attn=cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            ResAttnStack(
                chs[max(i - 1, 0)],
                ch,
                cfg.layers_per_block + 1,
                DECODER_BLOCKS[t],
                groups,
                up=i < len(chs) - 1,
            )
            for i, (t, ch) in enumerate(zip(cfg.up_block_types, chs))
        )
        self.conv_norm_out = nn.GroupNorm(groups, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) (diffusers' `latent_dist`)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std * eps, eps drawn as diffusers' randn_tensor draws it (CPU generators, then moved)."""
        eps = randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class EncoderOutput(ModelOutput):
    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput(ModelOutput):
    sample: torch.Tensor


class AutoencoderKL(TiledAutoencoder, KandiModel):
    """The FLUX VAE with diffusers' `AutoencoderKL` interface (`encode().latent_dist`, `decode().sample`).

    `enable_tiling(tile_size=64, overlap=8)` (latent pixels) encodes and decodes large images in
    overlapping tiles blended linearly (`kandi.models.tiling`), so the activations stay bounded at any
    image size; off unless enabled.
    """

    config_class = VAEConfig
    diffusers_name = "AutoencoderKL"
    tile_latent_overlap = 8

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        lat = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if config.use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(latent_dist=DiagonalGaussian(self.tiled_encode(self._encode, x)))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return h if self.quant_conv is None else self.quant_conv(h)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """Latents (B, latent, h, w) -> images (B, 3, h * f, w * f) in about [-1, 1]."""
        return DecoderOutput(sample=self.tiled_decode(self._decode, z))

    def forward(self, sample: torch.Tensor) -> DecoderOutput:
        return self.decode(self.encode(sample).latent_dist.mode())
