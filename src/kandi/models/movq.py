"""MoVQ, the image autoencoder of Kandinsky 2.1 / 2.2 / 3 (diffusers' `VQModel` with `norm_type="spatial"`).

Zheng et al. 2022, "MoVQ: Modulating Quantized Vectors for High-Fidelity Image Generation": a VQ-GAN
whose decoder normalisations are modulated by the quantised latent (SpatialNorm). The plain VQ-GAN
decoder (`norm_type="group"`) differs only in those norms, so it comes for free. Attribute names follow
the diffusers checkpoint keys, so the official weights load with strict checking.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    KandiModel,
    ModelOutput,
    attention,
    config_int,
    config_ints,
    follow_input_layouts,
    merge_heads,
    split_heads,
)
from .tiling import TiledAutoencoder

# block type -> whether it carries attention (the only difference between the two types of each side)
ENCODER_BLOCKS = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
DECODER_BLOCKS = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
NORM_TYPES = ("spatial", "group")
ACTIVATIONS = ("silu", "swish")  # diffusers maps both names to SiLU
SPATIAL_NORM_GROUPS = 32  # SpatialNorm's GroupNorm ignores norm_num_groups: MoVQ hard-codes 32
EPS = 1e-6
# Images (latent size times the MoVQ's factor) with more pixels than this are decoded / encoded in
# tiles unless tiling is disabled: above 1280x1280. Measured (BENCHMARKS.md, "MoVQ tiling"): an
# untiled 2.2 decode needs about 4 GB of RSS per megapixel (2.4 GB at 768², 4.2 GB at 1024²; more for
# Kandinsky 3's twice as wide MoVQ), a tiled one about 1 GB at any size, at 1.5-2x the time and within
# ~2e-4 mean abs of the whole decode. Up to 1280² (every model's native size, 1024x1536) it stays one
# pass, as diffusers decodes it (one pass, whole-image norms).
AUTO_TILE_PIXELS = 1280 * 1280


def _refuse(field: str, value: Any, accepted: str) -> ValueError:
    return ValueError(
        f"VQModel config {field}={value!r} is not supported by kandi's MoVQ; accepted: {accepted}"
    )


@dataclass(frozen=True)
class MoVQConfig:
    """The diffusers `VQModel` config; field names are its config keys."""

    in_channels: int
    out_channels: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    act_fn: str
    latent_channels: int
    sample_size: int  # metadata: not used by the network
    num_vq_embeddings: int
    norm_num_groups: int
    vq_embed_dim: int | None  # None: latent_channels
    scaling_factor: float  # metadata: pipelines scale latents with it
    norm_type: str
    mid_block_add_attention: bool
    lookup_from_codebook: bool
    force_upcast: bool  # metadata: a pipeline hint that VQModel itself ignores

    def __post_init__(self) -> None:
        self._check_blocks()
        if self.norm_type not in NORM_TYPES:
            raise _refuse("norm_type", self.norm_type, f"{NORM_TYPES}")
        if self.act_fn not in ACTIVATIONS:
            raise _refuse("act_fn", self.act_fn, f"{ACTIVATIONS}")
        if self.layers_per_block < 1:
            raise _refuse("layers_per_block", self.layers_per_block, "an int >= 1")
        if self.mid_block_add_attention is not True:
            raise _refuse("mid_block_add_attention", self.mid_block_add_attention, "True")
        if self.lookup_from_codebook is not False:
            raise _refuse(
                "lookup_from_codebook", self.lookup_from_codebook, "False (decode takes latents, not indices)"
            )
        # The spatial decoder conditions on the quantised latent through convs built for latent_channels.
        if self.norm_type == "spatial" and self.embed_dim != self.latent_channels:
            raise _refuse(
                "vq_embed_dim", self.vq_embed_dim, f"None or latent_channels={self.latent_channels}"
            )
        self._check_groups()

    def _check_blocks(self) -> None:
        if not self.block_out_channels:
            raise _refuse("block_out_channels", self.block_out_channels, "at least one level")
        for field, types, known in (
            ("down_block_types", self.down_block_types, ENCODER_BLOCKS),
            ("up_block_types", self.up_block_types, DECODER_BLOCKS),
        ):
            for t in types:
                if t not in known:
                    raise _refuse(field, t, f"{tuple(known)}")
            if len(types) != len(self.block_out_channels):
                raise _refuse(
                    field, types, f"one type per block_out_channels entry ({len(self.block_out_channels)})"
                )

    def _check_groups(self) -> None:
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise _refuse(
                    "norm_num_groups", self.norm_num_groups, f"a divisor of every block_out_channels ({ch})"
                )
            if self.norm_type == "spatial" and ch % SPATIAL_NORM_GROUPS:
                raise _refuse(
                    "block_out_channels", self.block_out_channels, "multiples of 32 with norm_type='spatial'"
                )

    @property
    def embed_dim(self) -> int:
        """Width of the codebook vectors."""
        return self.latent_channels if self.vq_embed_dim is None else self.vq_embed_dim

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> MoVQConfig:
        """Read a diffusers `VQModel` config dict; missing keys take diffusers' constructor defaults."""
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # `_class_name`, `_diffusers_version`, ...
        # Unknown keys (newer diffusers versions) are ignored as diffusers ignores them: an architecture
        # change shows up as missing or mis-shaped weights at the strict load. These two would not.
        n = "VQModel"
        for key in ("use_quant_conv", "use_post_quant_conv"):
            if d.get(key, True) is not True:
                raise _refuse(key, d[key], "True (MoVQ always has quant_conv and post_quant_conv)")
        return cls(
            in_channels=config_int(n, "in_channels", d.get("in_channels", 3)),
            out_channels=config_int(n, "out_channels", d.get("out_channels", 3)),
            down_block_types=tuple(d.get("down_block_types", ("DownEncoderBlock2D",))),
            up_block_types=tuple(d.get("up_block_types", ("UpDecoderBlock2D",))),
            block_out_channels=config_ints(n, "block_out_channels", d.get("block_out_channels", (64,))),
            layers_per_block=config_int(n, "layers_per_block", d.get("layers_per_block", 1)),
            act_fn=d.get("act_fn", "silu"),
            latent_channels=config_int(n, "latent_channels", d.get("latent_channels", 3)),
            sample_size=config_int(n, "sample_size", d.get("sample_size", 32)),
            num_vq_embeddings=config_int(n, "num_vq_embeddings", d.get("num_vq_embeddings", 256)),
            norm_num_groups=config_int(n, "norm_num_groups", d.get("norm_num_groups", 32)),
            vq_embed_dim=config_int(n, "vq_embed_dim", d.get("vq_embed_dim"), optional=True),
            scaling_factor=d.get("scaling_factor", 0.18215),
            norm_type=d.get("norm_type", "group"),
            mid_block_add_attention=d.get("mid_block_add_attention", True),
            lookup_from_codebook=d.get("lookup_from_codebook", False),
            force_upcast=d.get("force_upcast", False),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The `config.json` dict that diffusers' `VQModel` rebuilds this architecture from."""
        d = asdict(self)
        for key in ("down_block_types", "up_block_types", "block_out_channels"):
            d[key] = list(d[key])  # JSON has no tuples
        return {"_class_name": "VQModel", **d}


# ---------------------------------------------------------------------------------------------- layers


def _fit(zq: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The latent nearest-resized to x's spatial size (as MoVQ conditions every decoder norm on it)."""
    if zq is None or zq.shape[-2:] == x.shape[-2:]:
        return zq
    return F.interpolate(zq, size=x.shape[-2:], mode="nearest")


class GroupNorm(nn.GroupNorm):
    """GroupNorm that takes (and ignores) the latent, so blocks call every norm as `norm(x, zq)`."""

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class SpatialNorm(nn.Module):
    """MoVQ's spatially conditional norm: GroupNorm(x) scaled and shifted per pixel by 1x1 convs of zq."""

    def __init__(self, ch: int, zq_ch: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(SPATIAL_NORM_GROUPS, ch, eps=EPS)
        self.conv_y = PixelConv(zq_ch, ch)
        self.conv_b = PixelConv(zq_ch, ch)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        # MoVQ nearest-resizes zq to x's size, then runs the 1x1 convs there. A 1x1 conv acts on each
        # pixel alone, so it commutes with nearest resizing (which only copies pixels): run the convs at
        # the latent's size (4^level times fewer pixels) and broadcast each result over its block.
        return _modulate(self.norm_layer(x), self.conv_y(zq), self.conv_b(zq))


class PixelConv(nn.Conv2d):
    """A 1x1 conv run as one matmul over pixels, (B h w, in) @ (in, out) + bias, returned channels-last.

    For SpatialNorm's 4-channel convs: torch sends a 4-channel input to its slow im2col kernel (plus a
    bias copy), about 3% of a 512x512 decode; and channels-last is the layout of the maps the result
    multiplies, so the broadcast in _modulate runs along contiguous channels.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)
        w = self.weight.flatten(1)  # (out, in)
        out = torch.addmm(self.bias, pixels.reshape(-1, x.shape[1]), w.t())  # (B h w, out)
        return out.view(*pixels.shape[:3], -1).permute(0, 3, 1, 2)  # (B, out, h, w), channels-last


def _modulate(n: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """n * nearest(y) + nearest(b), with y and b (B, C, h, w) nearest-resized to n's (H, W).

    Two elementwise ops as MoVQ runs them (a multiply, then an add: each rounds once), so the result
    equals resizing first to the bit. In place on `n` (the norm's fresh output): no new full-size map
    to allocate and fault in, and the result keeps n's memory layout, as the out-of-place ops do.
    """
    (hn, wn), (hy, wy) = n.shape[-2:], y.shape[-2:]
    if n.is_contiguous():  # y and b in n's layout, so the broadcast runs along n's inner dimension
        y, b = y.contiguous(), b.contiguous()  # (3x faster than striding; they are latent-sized)
    if (hn, wn) == (hy, wy):
        return n.mul_(y).add_(b)
    if hn % hy or wn % wy:  # not whole multiples: resize the two maps (nearest copies pixels: exact)
        return n.mul_(_fit(y, n)).add_(_fit(b, n))
    # (B, C, H, W) -> (B, C, hy, H/hy, wy, W/wy), a view: every latent pixel's block shares one y and b
    blocks = n.unflatten(3, (wy, wn // wy)).unflatten(2, (hy, hn // hy))
    blocks.mul_(y[:, :, :, None, :, None]).add_(b[:, :, :, None, :, None])
    return n


def make_norm(ch: int, groups: int, zq_ch: int | None) -> nn.Module:
    """The decoder's norms condition on the latent (zq_ch given, MoVQ); the encoder's never do."""
    return GroupNorm(groups, ch, eps=EPS) if zq_ch is None else SpatialNorm(ch, zq_ch)


class ResnetBlock(nn.Module):
    """Pre-norm residual block: norm -> SiLU -> conv, twice, plus a 1x1 shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, zq_ch: int | None):
        super().__init__()
        self.norm1 = make_norm(in_ch, groups, zq_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(out_ch, groups, zq_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq), inplace=True))
        h = self.conv2(F.silu(self.norm2(h, zq), inplace=True))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(skip)  # = skip + h to the bit, in place on the conv's fresh output


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a residual (diffusers' VAE attention)."""

    def __init__(self, ch: int, groups: int, zq_ch: int | None):
        super().__init__()
        # Exactly one of the two norms exists; their names are the checkpoint keys.
        self.group_norm = GroupNorm(groups, ch, eps=EPS) if zq_ch is None else None
        self.spatial_norm = SpatialNorm(ch, zq_ch) if zq_ch is not None else None
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])
        self.slice_size: int | None = None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.spatial_norm is None:
            y = self.group_norm(x.flatten(2))  # (B, C, H, W) -> (B, C, HW); GroupNorm is blind to the split
        else:
            y = self.spatial_norm(x, zq).flatten(2)  # (B, C, H, W) -> (B, C, HW)
        y = y.transpose(1, 2)  # (B, C, HW) -> (B, HW, C)
        q, k, v = (split_heads(proj(y), 1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        y = merge_heads(attention(q, k, v, slice_size=self.slice_size))  # (B, 1, HW, C) -> (B, HW, C)
        y = self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)  # (B, HW, C) -> (B, C, H, W)
        # y first: the sum keeps y's (channels-last) strides, as in diffusers, so the convs that follow
        # pick the same kernels and match it to the last bit.
        return y + x


class Downsample(nn.Module):
    """Stride-2 3x3 conv with the VQ-GAN's asymmetric padding (one row/column, bottom and right)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Nearest 2x upsampling repeats each pixel in a 2x2 block, so a 3x3 conv over the upsampled map sees, at
# an output pixel of row parity a, only two source rows: taps (0 | 1+2) for a = 0 and (0+1 | 2) for
# a = 1; likewise for columns. _FOLD[a] sums the 3 taps into those 2.
_FOLD = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])  # (parity, 2 taps, 3 taps)


class UpsampleConv(nn.Conv2d):
    """A 3x3 'same' conv of the nearest 2x upsampled input, called with the input at its own size.

    conv(nearest_2x(x)) is four 2x2 convs of x with folded weights, one per output parity (row,
    column), run as one conv with 4x the output channels and interleaved into the output: 16 instead
    of 36 multiply-adds a pixel (the conv runs 1.8x faster) and the upsampled map (4x the pixels) is
    never made. Equal to the two-step form up to float rounding (the folded taps are summed before
    multiplying): on the tiny MoVQ test models as close to the float64 result as diffusers' fp32 is.
    The parameters are the conv's, under its checkpoint keys.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        acc = torch.promote_types(w.dtype, torch.float32)  # half-precision weights are folded in fp32
        fold = _FOLD.to(w.device, acc)
        # (O, I, 3, 3) -> (a, c, O, I, 2, 2) -> (4O, I, 2, 2)
        w4 = torch.einsum("apk,oikl,cql->acoipq", fold, w.to(acc), fold).flatten(0, 2).to(w.dtype)
        nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        bias = None if self.bias is None else self.bias.repeat(4)
        # padding 1 on a 2x2 kernel: y[p, q] sees source rows p-1, p and columns q-1, q, so parity (a, c)
        # of output pixel (2i + a, 2j + c) is y[i + a, j + c]
        y = F.conv2d(x, w4.contiguous(memory_format=fmt), bias, padding=1)  # (B, 4O, h + 1, w + 1)
        b, o, (h, wd) = x.shape[0], w.shape[0], x.shape[-2:]
        out = torch.empty((b, o, 2 * h, 2 * wd), dtype=y.dtype, device=y.device, memory_format=fmt)
        blocks = out.unflatten(3, (wd, 2)).unflatten(2, (h, 2))  # (B, O, h, 2, w, 2), a view
        for k, (a, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            blocks[:, :, :, a, :, c] = y[:, k * o : (k + 1) * o, a : a + h, c : c + wd]
        return out


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv, run as one conv at the input's size (see `UpsampleConv`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = UpsampleConv(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResAttnStack(nn.Module):
    """`layers` ResNets, each optionally followed by attention, then an optional resampler.

    Both sides' blocks: diffusers' (Attn)DownEncoderBlock2D with `downsamplers`, and
    (Attn)UpDecoderBlock2D with `upsamplers`.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        layers: int,
        attn: bool,
        groups: int,
        zq_ch: int | None = None,
        down: bool = False,
        up: bool = False,
    ):
        super().__init__()
        # attentions before resnets: the order diffusers registers them in, so state dicts list alike
        self.attentions = nn.ModuleList(
            [AttnBlock(out_ch, groups, zq_ch) for _ in range(layers)] if attn else []
        )
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups, zq_ch) for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if down else None
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if up else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if self.attentions:
                x = self.attentions[i](x, zq)
        for resample in self.downsamplers or self.upsamplers or ():
            x = resample(x)
        return x


class MidBlock(nn.Module):
    """ResNet -> attention -> ResNet at the lowest resolution (the FLUX VAE may leave out the attention)."""

    def __init__(self, ch: int, groups: int, zq_ch: int | None = None, attn: bool = True):
        super().__init__()
        self.attentions = nn.ModuleList([AttnBlock(ch, groups, zq_ch)]) if attn else None
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups, zq_ch) for _ in range(2)])

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        x = self.resnets[0](x, zq)
        if self.attentions is not None:
            x = self.attentions[0](x, zq)
        return self.resnets[1](x, zq)


# ---------------------------------------------------------------------------------------------- model


class Encoder(nn.Module):
    """Image (B, in, H, W) -> pre-quantisation latent (B, latent, H / 2^(levels-1), W / 2^(levels-1))."""

    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        chs, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            ResAttnStack(
                chs[max(i - 1, 0)],
                ch,
                cfg.layers_per_block,
                ENCODER_BLOCKS[t],
                groups,
                down=i < len(chs) - 1,
            )
            for i, (t, ch) in enumerate(zip(cfg.down_block_types, chs))
        )
        self.mid_block = MidBlock(chs[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))


class Decoder(nn.Module):
    """Latent (B, latent, h, w) -> image; with spatial norms every norm is modulated by `zq`."""

    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        chs, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
        zq_ch = cfg.latent_channels if cfg.norm_type == "spatial" else None
        self.conv_in = nn.Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.up_blocks = nn.ModuleList(
            ResAttnStack(
                chs[max(i - 1, 0)],
                ch,
                cfg.layers_per_block + 1,
                DECODER_BLOCKS[t],
                groups,
                zq_ch,
                up=i < len(chs) - 1,
            )
            for i, (t, ch) in enumerate(zip(cfg.up_block_types, chs))
        )
        self.mid_block = MidBlock(chs[0], groups, zq_ch)
        self.conv_norm_out = make_norm(chs[-1], groups, zq_ch)
        self.conv_out = nn.Conv2d(chs[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        # every spatial norm takes the latent-sized zq and broadcasts its 1x1 convs (see SpatialNorm)
        x = self.conv_in(z)
        x = self.mid_block(x, zq)
        for block in self.up_blocks:
            x = block(x, zq)
        return self.conv_out(F.silu(self.conv_norm_out(x, zq), inplace=True))


class VectorQuantizer(nn.Module):
    """Replace each latent pixel by its nearest codebook vector (van den Oord et al. 2017)."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n, 1.0 / n)  # diffusers' init, for untrained models

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B, C, H, W) -> (BHW, C)
        idx = torch.cdist(flat, self.embedding.weight).argmin(dim=1)  # (BHW,)
        # Straight-through estimator (codebook values forward, identity gradient back), written as diffusers
        # writes it so that the rounding of z + (e - z) matches it to the bit.
        e = flat + (self.embedding(idx) - flat).detach()  # (BHW, C)
        return e.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()  # (BHW, C) -> (B, C, H, W)


# Attention keys of diffusers checkpoints saved before the attention refactor (older hub uploads).
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_ATTN = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)(\.(?:weight|bias))$")


def _rename_legacy(m: re.Match[str]) -> str:
    return m.group(1) + _LEGACY_NAMES[m.group(2)] + m.group(3)


@dataclass
class EncoderOutput(ModelOutput):
    latents: torch.Tensor  # (B, latent_channels, h, w), before quantisation


@dataclass
class DecoderOutput(ModelOutput):
    sample: torch.Tensor  # (B, out_channels, H, W)


class MoVQ(TiledAutoencoder, KandiModel):
    """The MoVQ autoencoder with diffusers' `VQModel` interface (`encode`, `decode`).

    Images above AUTO_TILE_PIXELS pixels are encoded and decoded in blended tiles (see
    `kandi.models.tiling`); `enable_tiling()` tiles any size above one tile, `disable_tiling()` none.
    """

    config_class = MoVQConfig
    diffusers_name = "VQModel"
    channels_last_convs = True
    auto_tile_pixels = AUTO_TILE_PIXELS

    def __init__(self, config: MoVQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, 1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config)
        follow_input_layouts(self)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Image (B, C, H, W) in [-1, 1] -> unquantised latents (`.latents`)."""
        return EncoderOutput(latents=self.tiled_encode(self._encode, x))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> DecoderOutput:
        """Latents -> image (`.sample`); snaps z to the codebook first unless `force_not_quantize`."""
        zq = z if force_not_quantize else self.quantize(z)  # per pixel: the same whole or in tiles
        return DecoderOutput(sample=self.tiled_decode(self._decode_quantized, zq))

    def _decode_quantized(self, zq: torch.Tensor) -> torch.Tensor:
        # a tile's norms are conditioned on its own crop of zq: the tile is decoded as a whole image
        cond = zq if self.config.norm_type == "spatial" else None
        return self.decoder(self.post_quant_conv(zq), cond)

    def forward(self, sample: torch.Tensor) -> DecoderOutput:
        """Round trip: encode, quantise, decode."""
        return self.decode(self.encode(sample).latents)

    @classmethod
    def convert_state_dict(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the attention keys of older diffusers checkpoints (`query`, `key`, `value`, `proj_attn`)."""
        return {_LEGACY_ATTN.sub(_rename_legacy, k): v for k, v in sd.items()}
