"""The Kandinsky 3 UNet (diffusers `Kandinsky3UNet`, the layout of the official checkpoint).

Bottleneck ResNets whose group norms are scaled and shifted by the timestep embedding, attention blocks
(self-attention, then cross-attention to the projected T5 states), and a timestep embedding to which the
text, attention-pooled, is added. Attribute names follow the checkpoint keys, so the official weights
load with strict checking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    KandiModel,
    TimestepEmbedding,
    attention,
    config_int,
    config_ints,
    follow_input_layouts,
    merge_heads,
    split_heads,
    timestep_embedding,
)

NAME = "Kandinsky3UNet"
MAX_LEVELS = 4
# diffusers hard-codes attention per level as a 4-tuple and zips it with the levels: the down blocks take it
# shallowest first, the up blocks (built deepest first) take it *reversed*. With fewer than 4 levels the
# two disagree (2 levels: attention in down block 1 and in both up blocks); the weights follow suit.
DOWN_ATTENTION = (False, True, True, True)
UP_ATTENTION = (True, True, True, False)
EXPANSION = 4  # feed-forward width / channels in the attention blocks
COMPRESSION = 2  # ResNet width / bottleneck width
TEXT_MASK_BIAS = -10000.0  # diffusers' additive bias on padded text tokens (not -inf: mirrored for parity)


@dataclass(frozen=True)
class UNet3Config:
    in_channels: int = 4
    time_embedding_dim: int = 1536
    groups: int = 32
    attention_head_dim: int = 64
    layers_per_block: int = 3
    block_out_channels: tuple[int, ...] = (384, 768, 1536, 3072)
    cross_attention_dim: int = 4096
    encoder_hid_dim: int = 4096
    # None: in_channels. Kandinsky 3.1 inpainting takes 9 channels (latents, mask, masked image), outputs 4;
    # diffusers' Kandinsky3UNet has no such option, so it is left out of its config when None
    out_channels: int | None = None

    @property
    def init_channels(self) -> int:
        """Width of conv_in / conv_out and of the timestep features."""
        return self.block_out_channels[0] // 2

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> UNet3Config:
        """Read a diffusers `Kandinsky3UNet` config (missing keys: diffusers' defaults; unknown: ignored)."""
        default = cls()
        ints = {
            k: config_int(NAME, k, d.get(k, getattr(default, k)))
            for k in (
                "in_channels",
                "time_embedding_dim",
                "groups",
                "attention_head_dim",
                "layers_per_block",
                "cross_attention_dim",
                "encoder_hid_dim",
            )
        }
        blocks = config_ints(
            NAME, "block_out_channels", d.get("block_out_channels", default.block_out_channels)
        )
        cfg = cls(block_out_channels=blocks, **ints)  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    @property
    def latent_channels(self) -> int:
        """Channels of the predicted noise (conv_out)."""
        return self.in_channels if self.out_channels is None else self.out_channels

    def to_diffusers(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not (k == "out_channels" and v is None)}
        return {"_class_name": NAME, **d, "block_out_channels": list(self.block_out_channels)}

    def levels(self) -> tuple[list[Level], list[Level]]:
        """(down levels shallowest first, up levels deepest first), as diffusers wires them."""
        hid = (self.init_channels, *self.block_out_channels)
        n = len(self.block_out_channels)
        down = [Level(hid[i], hid[i + 1], 0, DOWN_ATTENTION[i], i < n - 1) for i in range(n)]
        up = [
            Level(hid[i + 1], hid[i], hid[i + 1] if i < n - 1 else 0, UP_ATTENTION[j], j > 0)
            for j, i in enumerate(reversed(range(n)))
        ]
        return down, up

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if not 1 <= n <= MAX_LEVELS:
            raise ValueError(
                f"{NAME} config block_out_channels={list(self.block_out_channels)} is not supported: "
                f"Kandinsky 3 has 1 to {MAX_LEVELS} levels, got {n}"
            )
        for key, value in asdict(self).items():
            values = () if value is None else value if isinstance(value, tuple) else (value,)
            if any(v < 1 for v in values):
                raise ValueError(f"{NAME} config {key}={value!r} is not supported: expected positive numbers")
        if self.layers_per_block < 2:
            raise ValueError(
                f"{NAME} config layers_per_block={self.layers_per_block} is not supported: diffusers' "
                "Kandinsky3UNet needs at least 2 (with 1 its up blocks end at the wrong width)"
            )
        if self.block_out_channels[0] % 2 or self.block_out_channels[0] < 4:
            raise ValueError(
                f"{NAME} config block_out_channels[0]={self.block_out_channels[0]} is not supported: it must "
                "be even and at least 4 (conv_in has half of it, and that many sinusoidal timestep features)"
            )
        if self.time_embedding_dim % self.attention_head_dim:
            raise ValueError(
                f"{NAME} config time_embedding_dim={self.time_embedding_dim} must be divisible by "
                f"attention_head_dim={self.attention_head_dim} (the heads of the text pooling attention)"
            )
        norms, attns = _widths(self)
        for c in sorted(norms):
            if c % self.groups:
                raise ValueError(
                    f"{NAME} config groups={self.groups} does not divide the {c} channels of a group norm "
                    f"that block_out_channels={list(self.block_out_channels)} builds"
                )
        for c in sorted(attns):
            if c % self.attention_head_dim:
                raise ValueError(
                    f"{NAME} config attention_head_dim={self.attention_head_dim} does not divide the {c} "
                    f"channels of an attention that block_out_channels={list(self.block_out_channels)} builds"
                )


class Level(NamedTuple):
    cin: int
    cout: int
    skip: int  # channels of the skip connection concatenated before an up block (0: none)
    attention: bool
    resample: bool  # down blocks: halve the size at the end; up blocks: double it at the start


def _down_pairs(lv: Level, n: int) -> list[tuple[int, int]]:
    """(in, out) of the resnets_in of a down block; each resnets_out keeps `out`."""
    return [(lv.cin, lv.cout)] + [(lv.cout, lv.cout)] * (n - 1)


def _up_pairs(lv: Level, n: int) -> list[tuple[int, int]]:
    """(in, out) of the resnets_out of an up block; each resnets_in keeps `in`."""
    return [(lv.cin + lv.skip, lv.cin)] + [(lv.cin, lv.cin)] * (n - 2) + [(lv.cin, lv.cout)]


def _widths(cfg: UNet3Config) -> tuple[set[int], set[int]]:
    """Channels of every group norm and every attention the config builds (to check groups and heads)."""
    down, up = cfg.levels()
    resnets: list[tuple[int, int]] = []
    norms, attns = {cfg.init_channels}, set()
    for lv in down:
        pairs = _down_pairs(lv, cfg.layers_per_block)
        resnets += pairs + [(b, b) for _, b in pairs]
        if lv.attention:
            attns |= {lv.cin, lv.cout}
    for lv in up:
        pairs = _up_pairs(lv, cfg.layers_per_block)
        resnets += pairs + [(a, a) for a, _ in pairs]
        if lv.attention:
            attns |= {lv.cout} | {a for a, _ in pairs}
    for a, b in resnets:
        norms |= {a, max(a, b) // COMPRESSION}
    return norms | attns, attns


# --------------------------------------------------------------------------------------------- blocks


class ConditionalGroupNorm(nn.Module):
    """GroupNorm without affine parameters, scaled and shifted by the timestep embedding."""

    def __init__(self, groups: int, channels: int, emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.context_mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # emb arrives SiLU-activated (once per step for every norm, see UNet3.denoise): only the Linear runs
        scale, shift = self.context_mlp[1](emb)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x).mul_(scale + 1.0).add_(shift)  # in place on the fresh norm: same bits


class Block(nn.Module):
    """Conditional norm, SiLU, [2x transposed-conv upsampling], conv, [2x strided-conv downsampling]."""

    def __init__(self, cin: int, cout: int, emb_dim: int, kernel: int, groups: int, resample: str | None):
        super().__init__()
        self.group_norm = ConditionalGroupNorm(groups, cin, emb_dim)
        self.up_sample = nn.ConvTranspose2d(cin, cin, 2, stride=2) if resample == "up" else None
        self.projection = nn.Conv2d(cin, cout, kernel, padding=int(kernel > 1))
        self.down_sample = nn.Conv2d(cout, cout, 2, stride=2) if resample == "down" else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.group_norm(x, emb), inplace=True)
        if self.up_sample is not None:
            x = self.up_sample(x)
        x = self.projection(x)
        if self.down_sample is not None:
            x = self.down_sample(x)
        return x


class ResNetBlock(nn.Module):
    """Bottleneck ResNet, 1x1 -> 3x3 -> 3x3 -> 1x1 convs at half width; resampling around the second."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, resample: str | None = None):
        super().__init__()
        hidden = max(cin, cout) // COMPRESSION
        chans = (cin, hidden, hidden, hidden, cout)
        # upsampling before the first 3x3 conv, downsampling after the second (diffusers' up_resolutions)
        where = {"up": 1, "down": 2}.get(resample or "")
        self.resnet_blocks = nn.ModuleList(
            Block(chans[i], chans[i + 1], emb_dim, k, groups, resample if i == where else None)
            for i, k in enumerate((1, 3, 3, 1))
        )
        self.shortcut_up_sample = nn.ConvTranspose2d(cin, cin, 2, stride=2) if resample == "up" else None
        self.shortcut_projection = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.shortcut_down_sample = nn.Conv2d(cout, cout, 2, stride=2) if resample == "down" else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.resnet_blocks:
            h = block(h, emb)
        for shortcut in (self.shortcut_up_sample, self.shortcut_projection, self.shortcut_down_sample):
            if shortcut is not None:
                x = shortcut(x)
        return x + h


class Attention(nn.Module):
    """Multi-head attention without biases, as Kandinsky 3 configures diffusers' `Attention`."""

    def __init__(self, query_dim: int, context_dim: int, dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.slice_size: int | None = None
        self.to_q = nn.Linear(query_dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, L, C) -> (B, heads, L, D) keys and values
        return split_heads(self.to_k(context), self.heads), split_heads(self.to_v(context), self.heads)

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = split_heads(self.to_q(x), self.heads)
        return self.to_out[0](merge_heads(attention(q, *kv, mask=mask, slice_size=self.slice_size)))


class AttentionBlock(nn.Module):
    """Pre-norm attention (self, or cross to the text) then a 1x1-conv feed-forward, both residual."""

    def __init__(self, channels: int, emb_dim: int, context_dim: int | None, groups: int, head_dim: int):
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, emb_dim)
        self.attention = Attention(channels, context_dim or channels, channels, head_dim)
        self.out_norm = ConditionalGroupNorm(groups, channels, emb_dim)
        hidden = EXPANSION * channels
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.SiLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.in_norm(x, emb).reshape(b, c, hgt * wid).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        if kv is None:  # self-attention over the pixels
            kv = self.attention.kv(h)
        h = self.attention(h, kv, mask)
        # (B, HW, C) -> (B, C, H, W) as a channels-last view; x first keeps x's layout (and diffusers' bits)
        x = x + h.transpose(1, 2).reshape(b, c, hgt, wid)
        return x + self.feed_forward(self.out_norm(x, emb))


class DownBlock(nn.Module):
    """[self-attention], then per layer: ResNet, [cross-attention], ResNet (the last one halving the size)."""

    def __init__(self, cfg: UNet3Config, lv: Level):
        super().__init__()
        emb, g, hd, n = cfg.time_embedding_dim, cfg.groups, cfg.attention_head_dim, cfg.layers_per_block
        pairs = _down_pairs(lv, n)
        self.resnets_in = nn.ModuleList(ResNetBlock(a, b, emb, g) for a, b in pairs)
        self.resnets_out = nn.ModuleList(
            ResNetBlock(b, b, emb, g, "down" if lv.resample and j == n - 1 else None)
            for j, (_, b) in enumerate(pairs)
        )
        self.attentions = None
        if lv.attention:  # attentions.0 is the self-attention, attentions.1.. the cross-attentions
            self.attentions = nn.ModuleList(
                [AttentionBlock(lv.cin, emb, None, g, hd)]
                + [AttentionBlock(b, emb, cfg.cross_attention_dim, g, hd) for _, b in pairs]
            )

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, kv: tuple, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.attentions is not None:
            x = self.attentions[0](x, emb)
        for j, (res_in, res_out) in enumerate(zip(self.resnets_in, self.resnets_out)):
            x = res_in(x, emb)
            if self.attentions is not None:
                x = self.attentions[j + 1](x, emb, kv[j], mask)
            x = res_out(x, emb)
        return x


class UpBlock(nn.Module):
    """Per layer: ResNet (the first doubling the size), [cross-attention], ResNet; then [self-attention]."""

    def __init__(self, cfg: UNet3Config, lv: Level):
        super().__init__()
        emb, g, hd = cfg.time_embedding_dim, cfg.groups, cfg.attention_head_dim
        pairs = _up_pairs(lv, cfg.layers_per_block)
        self.resnets_in = nn.ModuleList(
            ResNetBlock(a, a, emb, g, "up" if lv.resample and j == 0 else None)
            for j, (a, _) in enumerate(pairs)
        )
        self.resnets_out = nn.ModuleList(ResNetBlock(a, b, emb, g) for a, b in pairs)
        self.attentions = None
        if lv.attention:  # attentions.0 is the self-attention (run last), attentions.1.. the cross-attentions
            self.attentions = nn.ModuleList(
                [AttentionBlock(lv.cout, emb, None, g, hd)]
                + [AttentionBlock(a, emb, cfg.cross_attention_dim, g, hd) for a, _ in pairs]
            )

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, kv: tuple, mask: torch.Tensor | None
    ) -> torch.Tensor:
        for j, (res_in, res_out) in enumerate(zip(self.resnets_in, self.resnets_out)):
            x = res_in(x, emb)
            if self.attentions is not None:
                x = self.attentions[j + 1](x, emb, kv[j], mask)
            x = res_out(x, emb)
        if self.attentions is not None:
            x = self.attentions[0](x, emb)
        return x


def _cross_kv(block: DownBlock | UpBlock, context: torch.Tensor) -> tuple:
    """Keys and values of the text for each cross-attention of a block: they depend on neither x nor t."""
    if block.attentions is None:
        return ()
    return tuple(att.attention.kv(context) for att in block.attentions[1:])


# ------------------------------------------------------------------------------------- conditioning


class EncoderProj(nn.Module):
    """T5 hidden states -> cross-attention width (bias-free Linear, then LayerNorm)."""

    def __init__(self, encoder_hid_dim: int, dim: int):
        super().__init__()
        self.projection_linear = nn.Linear(encoder_hid_dim, dim, bias=False)
        self.projection_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_norm(self.projection_linear(x))


class AttentionPooling(nn.Module):
    """The text as one vector: attention whose query is the mean of all tokens (padding included)."""

    def __init__(self, emb_dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.attention = Attention(context_dim, context_dim, emb_dim, head_dim)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # diffusers takes the plain mean over L, padded tokens too; only the keys are masked
        pooled = self.attention(context.mean(dim=1, keepdim=True), self.attention.kv(context), mask)
        return pooled.squeeze(1)  # (B, 1, E) -> (B, E)


class UNet3Cond(NamedTuple):
    """Everything the UNet needs besides (x, t); constant over the denoising loop, so built once."""

    text_emb: torch.Tensor  # (B, time_embedding_dim) pooled text, added to the timestep embedding
    kv: tuple  # per down block then up block, per cross-attention: (K, V), each (B, heads, L, D)
    mask: torch.Tensor | None  # (B, 1, 1, L) additive key mask: 0 for tokens, -10000 for padding


class UNet3Output(NamedTuple):
    sample: torch.Tensor


# ----------------------------------------------------------------------------------------------- model


class UNet3(KandiModel):
    """Kandinsky 3 UNet (diffusers `Kandinsky3UNet`): predicts the noise of 4-channel MoVQ latents."""

    config_class = UNet3Config
    diffusers_name = NAME
    channels_last_convs = True

    def __init__(self, config: UNet3Config):
        super().__init__()
        config.validate()
        self.config = cfg = config
        init, emb = cfg.init_channels, cfg.time_embedding_dim
        self.time_embedding = TimestepEmbedding(init, emb)
        self.add_time_condition = AttentionPooling(emb, cfg.cross_attention_dim, cfg.attention_head_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, init, 3, padding=1)
        self.encoder_hid_proj = EncoderProj(cfg.encoder_hid_dim, cfg.cross_attention_dim)
        down, up = cfg.levels()
        self.down_blocks = nn.ModuleList(DownBlock(cfg, lv) for lv in down)
        self.up_blocks = nn.ModuleList(UpBlock(cfg, lv) for lv in up)
        self.conv_norm_out = nn.GroupNorm(cfg.groups, init)
        self.conv_out = nn.Conv2d(init, cfg.latent_channels, 3, padding=1)
        follow_input_layouts(self)  # channels-last weights where the maps are (same bits)

    def condition(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> UNet3Cond:
        """Project the text once per generation: pooled text embedding, per-attention K/V and the mask.

        encoder_hidden_states (B, L, encoder_hid_dim) are the T5 states; encoder_attention_mask (B, L) is 1
        for tokens and 0 for padding (None: every token counts).
        """
        context = self.encoder_hid_proj(
            encoder_hidden_states.to(self.encoder_hid_proj.projection_norm.weight.dtype)
        )
        return self.condition_projected(context, encoder_attention_mask)

    def condition_projected(
        self, context: torch.Tensor, encoder_attention_mask: torch.Tensor | None
    ) -> UNet3Cond:
        """`condition` for text already through `encoder_hid_proj` (B, L, cross_attention_dim).

        Kandinsky 3.1 projects the T5 states, zeroes the padding *after* the projection and puts its learned
        null embedding in the unconditional row, so its pipelines project first and come in here.
        """
        mask = None
        if encoder_attention_mask is not None:
            bias = (1 - encoder_attention_mask.to(context.dtype)) * TEXT_MASK_BIAS
            mask = bias[:, None, None, :]  # (B, L) -> (B, 1, 1, L), broadcast over heads and queries
        text_emb = self.add_time_condition(context, mask)
        kv = tuple(_cross_kv(block, context) for block in (*self.down_blocks, *self.up_blocks))
        return UNet3Cond(text_emb, kv, mask)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | int | float, cond: UNet3Cond) -> torch.Tensor:
        """Predict the noise in latents `x` (B, C, h, w) at timestep(s) `t`; h and w divisible by 2**(n-1)."""
        if not torch.is_tensor(t):
            t = torch.tensor(
                [t], dtype=torch.float32 if isinstance(t, float) else torch.int64, device=x.device
            )
        t = t.reshape(-1).to(x.device).expand(x.shape[0])
        tfeat = timestep_embedding(t, self.config.init_channels, flip_sin_to_cos=False, shift=1.0)
        # every conditional norm starts with SiLU (context_mlp.0): apply it once here
        emb = F.silu(self.time_embedding(tfeat.to(x.dtype)) + cond.text_emb)
        n = len(self.down_blocks)
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, emb, cond.kv[i], cond.mask)
            if i < n - 1:
                skips.append(h)
        for j, block in enumerate(self.up_blocks):
            if j > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, cond.kv[n + j], cond.mask)
        return self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet3Output | tuple[torch.Tensor]:
        """diffusers-compatible call: `unet(sample, t, encoder_hidden_states, encoder_attention_mask)`."""
        if encoder_hidden_states is None:
            raise ValueError("the Kandinsky 3 UNet needs encoder_hidden_states (the T5 text states)")
        out = self.denoise(sample, timestep, self.condition(encoder_hidden_states, encoder_attention_mask))
        return UNet3Output(out) if return_dict else (out,)
