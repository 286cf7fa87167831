"""The Kandinsky 2.1 / 2.2 decoder UNet: only the path the official checkpoints use.

Scale-shift ResNets, added-KV cross attention (the image/text context tokens are prepended to the keys
and values of self-attention), and the `image` / `text_image` / `image_hint` addition embeddings of
diffusers' `UNet2DConditionModel`. Attribute names follow the checkpoint keys, so the official weights
load with strict checking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    KandiModel,
    TimestepEmbedding,
    attention,
    follow_input_layouts,
    merge_heads,
    split_heads,
    timestep_embedding,
)

DOWN_TYPES = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
UP_TYPES = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
MID_TYPE = "UNetMidBlock2DSimpleCrossAttn"
ADDITION_TYPES = ("image", "text_image", "image_hint")
HID_TYPES = ("image_proj", "text_image_proj")

# Config keys whose value must be the one the Kandinsky checkpoints use; any other value selects a
# code path of diffusers' general UNet that kandi deliberately does not implement.
_FIXED: dict[str, Any] = {
    "center_input_sample": False,
    "resnet_time_scale_shift": "scale_shift",
    "act_fn": "silu",
    "class_embed_type": None,
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "dual_cross_attention": False,
    "only_cross_attention": False,
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "mid_block_scale_factor": 1,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "upcast_attention": False,
    "projection_class_embeddings_input_dim": None,
    "num_attention_heads": None,
    "transformer_layers_per_block": 1,
    "attention_type": "default",
    "dropout": 0.0,
    "reverse_transformer_layers_per_block": None,
    "addition_time_embed_dim": None,
}
# Accepted and kept for the saved config, but they do not change the Kandinsky path.
_IGNORED = ("use_linear_projection", "addition_embed_type_num_heads", "downsample_padding")


@dataclass(frozen=True)
class UNet2Config:
    in_channels: int = 4
    out_channels: int = 8
    block_out_channels: tuple[int, ...] = (384, 768, 1152, 1536)
    layers_per_block: int = 3
    down_block_types: tuple[str, ...] = (
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    )
    mid_block_type: str = MID_TYPE
    attention_head_dim: tuple[int, ...] = (64, 64, 64, 64)
    cross_attention_dim: int = 768
    encoder_hid_dim: int = 1280
    encoder_hid_dim_type: str = "image_proj"
    addition_embed_type: str = "image"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    time_embedding_dim: int | None = None
    mid_block_only_cross_attention: bool = False
    sample_size: int | None = 64
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> UNet2Config:
        """Read a diffusers `UNet2DConditionModel` config, refusing anything outside the Kandinsky path."""
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        for key, want in _FIXED.items():
            got = d.get(key, want)
            if isinstance(want, int | float) and not isinstance(want, bool) and isinstance(got, int | float):
                ok = float(got) == float(want)
            else:
                # null and false mean the same to diffusers for its boolean switches (k21-inpaint has nulls)
                ok = got == want or (want is False and got is None)
                ok = ok or (key == "transformer_layers_per_block" and got in ([1], (1,)))
            if not ok:
                raise ValueError(
                    f"unsupported UNet config {key}={got!r}: kandi implements the Kandinsky 2.x path, "
                    f"which needs {key}={want!r}"
                )
        raw_blocks = _req(d, "block_out_channels")
        if not isinstance(raw_blocks, list | tuple) or not raw_blocks:
            raise ValueError(
                f"unsupported UNet config block_out_channels={raw_blocks!r}: expected a list of widths"
            )
        blocks = tuple(_as_int("block_out_channels", c) for c in raw_blocks)
        n = len(blocks)
        time_dim = d.get("time_embedding_dim")
        cfg = cls(
            in_channels=_as_int("in_channels", _req(d, "in_channels")),
            out_channels=_as_int("out_channels", _req(d, "out_channels")),
            block_out_channels=blocks,
            layers_per_block=_int_field(d, "layers_per_block", 2),
            down_block_types=tuple(_req(d, "down_block_types")),
            up_block_types=tuple(_req(d, "up_block_types")),
            mid_block_type=d.get("mid_block_type", MID_TYPE),
            attention_head_dim=_per_block(d.get("attention_head_dim", 8), n, "attention_head_dim"),
            cross_attention_dim=_int_field(d, "cross_attention_dim", 1280),
            encoder_hid_dim=_as_int("encoder_hid_dim", _req(d, "encoder_hid_dim")),
            encoder_hid_dim_type=_req(d, "encoder_hid_dim_type"),
            addition_embed_type=_req(d, "addition_embed_type"),
            norm_num_groups=_as_int("norm_num_groups", d.get("norm_num_groups", 32)),
            norm_eps=_as_float("norm_eps", d.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(d.get("flip_sin_to_cos", True)),
            freq_shift=_as_float("freq_shift", d.get("freq_shift", 0)),
            time_embedding_dim=None if time_dim is None else _as_int("time_embedding_dim", time_dim),
            mid_block_only_cross_attention=bool(d.get("mid_block_only_cross_attention") or False),
            sample_size=d.get("sample_size"),
            extra={k: d[k] for k in _IGNORED if k in d},
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        n = len(self.block_out_channels)
        _check_types("down_block_types", self.down_block_types, DOWN_TYPES, n)
        _check_types("up_block_types", self.up_block_types, UP_TYPES, n)
        if self.mid_block_type != MID_TYPE:
            raise ValueError(
                f"unsupported UNet config mid_block_type={self.mid_block_type!r}; accepted: {MID_TYPE!r}"
            )
        if self.addition_embed_type not in ADDITION_TYPES:
            raise ValueError(
                f"unsupported UNet config addition_embed_type={self.addition_embed_type!r}; accepted: {ADDITION_TYPES}"
            )
        if self.encoder_hid_dim_type not in HID_TYPES:
            raise ValueError(
                f"unsupported UNet config encoder_hid_dim_type={self.encoder_hid_dim_type!r}; accepted: {HID_TYPES}"
            )
        if (self.addition_embed_type == "text_image") != (self.encoder_hid_dim_type == "text_image_proj"):
            raise ValueError(
                "UNet config mixes Kandinsky 2.1 and 2.2 conditioning: addition_embed_type="
                f"{self.addition_embed_type!r} needs encoder_hid_dim_type="
                f"{'text_image_proj' if self.addition_embed_type == 'text_image' else 'image_proj'!r}"
            )
        for c, h in zip(self.block_out_channels, self.attention_head_dim):
            if c % h or c % self.norm_num_groups:
                raise ValueError(
                    f"UNet block width {c} must be divisible by attention_head_dim {h} and norm_num_groups "
                    f"{self.norm_num_groups}"
                )
        hint_in = self.addition_embed_type == "image_hint"
        if hint_in and self.in_channels != 8:
            raise ValueError(
                f"UNet config with addition_embed_type='image_hint' needs in_channels=8, got {self.in_channels}"
            )

    @property
    def latent_channels(self) -> int:
        """Channels of the noisy latents (the rest of `in_channels` is hint features or inpaint inputs)."""
        return 4 if self.in_channels in (8, 9) else self.in_channels

    def to_diffusers(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["block_out_channels"] = list(self.block_out_channels)
        d["down_block_types"] = list(self.down_block_types)
        d["up_block_types"] = list(self.up_block_types)
        d["attention_head_dim"] = (
            self.attention_head_dim[0]
            if len(set(self.attention_head_dim)) == 1
            else list(self.attention_head_dim)
        )
        fixed = {k: v for k, v in _FIXED.items() if k != "reverse_transformer_layers_per_block"}
        return {"_class_name": "UNet2DConditionModel", **fixed, **extra, **d}


def _req(d: dict[str, Any], key: str) -> Any:
    if d.get(key) is None:
        raise ValueError(f"UNet config is missing {key!r}, which the Kandinsky 2.x UNet needs")
    return d[key]


def _as_int(key: str, v: Any) -> int:
    # config.json is data: a null, string or list where a number belongs is a config error naming the
    # field, not a TypeError from deep inside the model constructor
    whole = (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if not whole:
        raise ValueError(f"unsupported UNet config {key}={v!r}: expected a whole number")
    return int(v)


def _as_float(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"unsupported UNet config {key}={v!r}: expected a number")
    return float(v)


def _int_field(d: dict[str, Any], key: str, default: int) -> int:
    v = d.get(key, default)
    if isinstance(v, list | tuple):
        if len(set(v)) != 1:
            raise ValueError(f"unsupported UNet config {key}={v!r}: kandi needs one value for every block")
        v = v[0]
    return _as_int(key, v)


def _per_block(v: Any, n: int, key: str) -> tuple[int, ...]:
    vals = tuple(_as_int(key, x) for x in v) if isinstance(v, list | tuple) else (_as_int(key, v),) * n
    if len(vals) != n:
        raise ValueError(f"UNet config {key} has {len(vals)} entries for {n} blocks")
    return vals


def _check_types(key: str, got: tuple[str, ...], accepted: tuple[str, ...], n: int) -> None:
    if len(got) != n:
        raise ValueError(f"UNet config {key} has {len(got)} entries but block_out_channels has {n}")
    for t in got:
        if t not in accepted:
            raise ValueError(f"unsupported UNet config {key} entry {t!r}; accepted: {accepted}")


# --------------------------------------------------------------------------------------------- blocks


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, timestep as scale and shift of the second norm; optional 2x resampling."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, resample: str | None = None):
        super().__init__()
        self.resample = resample
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # in place on each norm's fresh output: the same ops and bits, fewer full-size maps to allocate
        h = F.silu(self.norm1(x), inplace=True)
        h = self.conv1(self._resample(h))
        x = self._resample(x)
        # temb arrives already SiLU-activated (once per step for all blocks, see UNet2.denoise)
        scale, shift = self.time_emb_proj(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h).mul_(1 + scale).add_(shift)
        h = self.conv2(F.silu(h, inplace=True))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AddedKVAttention(nn.Module):
    """Self-attention over the feature map whose keys/values are prefixed with projected context tokens."""

    def __init__(self, dim: int, head_dim: int, context_dim: int, groups: int, only_cross: bool = False):
        super().__init__()
        self.heads = dim // head_dim
        self.only_cross = only_cross
        self.slice_size: int | None = None
        self.group_norm = nn.GroupNorm(groups, dim, eps=1e-5)
        self.to_q = nn.Linear(dim, dim)
        if not only_cross:
            self.to_k = nn.Linear(dim, dim)
            self.to_v = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(context_dim, dim)
        self.add_v_proj = nn.Linear(context_dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        # norm over the (B, C, HW) view, whatever x's memory layout (the layout picks the kernel, hence the bits)
        h = self.group_norm(x.view(b, c, hgt * wid)).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        q = split_heads(self.to_q(h), self.heads)
        k = split_heads(self.add_k_proj(context), self.heads)
        v = split_heads(self.add_v_proj(context), self.heads)
        if not self.only_cross:
            # (B, heads, T + HW, D): context tokens first, as the checkpoints were trained
            k = torch.cat([k, split_heads(self.to_k(h), self.heads)], dim=2)
            v = torch.cat([v, split_heads(self.to_v(h), self.heads)], dim=2)
        out = self.to_out[0](merge_heads(attention(q, k, v, slice_size=self.slice_size)))
        # (B, HW, C) -> (B, C, H, W) as a channels-last view; adding x second keeps that memory layout, so
        # the following convolutions choose the same kernels (and give the same bits) as diffusers
        return out.transpose(1, 2).reshape(b, c, hgt, wid) + x


class DownBlock(nn.Module):
    def __init__(self, cfg: UNet2Config, i: int, cin: int, cout: int, attn: bool, last: bool):
        super().__init__()
        g, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(
            [ResBlock(cin if j == 0 else cout, cout, temb, g, eps) for j in range(n)]
        )
        if attn:
            hd, ctx = cfg.attention_head_dim[i], cfg.cross_attention_dim
            self.attentions = nn.ModuleList([AddedKVAttention(cout, hd, ctx, g) for _ in range(n)])
        else:
            self.attentions = None
        self.downsamplers = None if last else nn.ModuleList([ResBlock(cout, cout, temb, g, eps, "down")])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, list]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x, ctx)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, temb)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, cfg: UNet2Config, i: int, cin: int, cprev: int, cout: int, attn: bool, last: bool):
        super().__init__()
        g, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        n = cfg.layers_per_block + 1
        # each resnet eats one skip: the deepest n-1 skips have `cout` channels, the last one `cin`
        chans = [((cprev if j == 0 else cout) + (cin if j == n - 1 else cout)) for j in range(n)]
        self.resnets = nn.ModuleList([ResBlock(c, cout, temb, g, eps) for c in chans])
        if attn:
            hd, ctx = cfg.attention_head_dim[::-1][i], cfg.cross_attention_dim
            self.attentions = nn.ModuleList([AddedKVAttention(cout, hd, ctx, g) for _ in range(n)])
        else:
            self.attentions = None
        self.upsamplers = None if last else nn.ModuleList([ResBlock(cout, cout, temb, g, eps, "up")])

    def forward(self, x: torch.Tensor, skips: list, temb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x, ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, temb)
        return x


class MidBlock(nn.Module):
    def __init__(self, cfg: UNet2Config):
        super().__init__()
        c, g, eps, temb = cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        self.resnets = nn.ModuleList([ResBlock(c, c, temb, g, eps), ResBlock(c, c, temb, g, eps)])
        only_cross = cfg.mid_block_only_cross_attention
        hd = cfg.attention_head_dim[-1]
        self.attentions = nn.ModuleList([AddedKVAttention(c, hd, cfg.cross_attention_dim, g, only_cross)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, ctx)
        return self.resnets[1](x, temb)


# ------------------------------------------------------------------------------------- conditioning


class ImageProjection(nn.Module):
    """2.2 context: the image embedding becomes `num_tokens` LayerNormed tokens (`encoder_hid_proj`)."""

    def __init__(self, image_dim: int, dim: int, num_tokens: int = 32):
        super().__init__()
        self.num_tokens = num_tokens
        self.image_embeds = nn.Linear(image_dim, num_tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(x.view(x.shape[0], self.num_tokens, -1))  # (B, T*C) -> (B, T, C)


class TextImageProjection(nn.Module):
    """2.1 context: 10 tokens from the image embedding followed by the projected text hidden states."""

    def __init__(self, text_dim: int, image_dim: int, dim: int, num_tokens: int = 10):
        super().__init__()
        self.num_tokens = num_tokens
        self.image_embeds = nn.Linear(image_dim, num_tokens * dim)
        self.text_proj = nn.Linear(text_dim, dim)

    def forward(self, text_states: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        img = self.image_embeds(image_embeds)
        img = img.view(img.shape[0], self.num_tokens, -1)  # (B, T*C) -> (B, T, C)
        return torch.cat([img, self.text_proj(text_states)], dim=1)


class AddEmbedding(nn.Module):
    """Embedding added to the timestep embedding: image (2.2), text + image (2.1), image + hint (ControlNet)."""

    def __init__(self, kind: str, image_dim: int, temb: int, text_dim: int = 0):
        super().__init__()
        self.kind = kind
        self.image_proj = nn.Linear(image_dim, temb)
        if kind == "text_image":
            self.text_proj = nn.Linear(text_dim, temb)
            self.text_norm = nn.LayerNorm(temb)
        else:
            self.image_norm = nn.LayerNorm(temb)
        if kind == "image_hint":
            # 3 -> 4 channels at 1/8 resolution, concatenated to the latents (`in_channels` 8)
            chans = [
                (3, 16, 1),
                (16, 16, 1),
                (16, 32, 2),
                (32, 32, 1),
                (32, 96, 2),
                (96, 96, 1),
                (96, 256, 2),
                (256, 4, 1),
            ]
            layers: list[nn.Module] = []
            for cin, cout, stride in chans:
                layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=stride), nn.SiLU()]
            self.input_hint_block = nn.Sequential(*layers[:-1])

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "text_image":
            return self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))
        return self.image_norm(self.image_proj(image_embeds))


class UNetCond(NamedTuple):
    """Everything the UNet needs besides (x, t); constant over the denoising loop, so built once."""

    aug_emb: torch.Tensor  # (B, time_embed_dim) added to the timestep embedding
    context: torch.Tensor  # (B, T, cross_attention_dim) tokens for the added K/V
    hint: torch.Tensor | None  # (B, 4, h, w) ControlNet features concatenated to x


class UNetOutput(NamedTuple):
    sample: torch.Tensor


# ----------------------------------------------------------------------------------------------- model


class UNet2(KandiModel):
    """Kandinsky 2.x decoder UNet (diffusers `UNet2DConditionModel` with the Kandinsky options)."""

    config_class = UNet2Config
    diffusers_name = "UNet2DConditionModel"
    channels_last_convs = True

    def __init__(self, config: UNet2Config):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        temb = cfg.time_embed_dim
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        if cfg.encoder_hid_dim_type == "image_proj":
            self.encoder_hid_proj = ImageProjection(cfg.encoder_hid_dim, cfg.cross_attention_dim)
            self.add_embedding = AddEmbedding(cfg.addition_embed_type, cfg.encoder_hid_dim, temb)
        else:
            dim = cfg.cross_attention_dim
            self.encoder_hid_proj = TextImageProjection(cfg.encoder_hid_dim, dim, dim)
            self.add_embedding = AddEmbedding("text_image", dim, temb, text_dim=dim)
        n = len(ch)
        self.down_blocks = nn.ModuleList(
            DownBlock(cfg, i, ch[max(i - 1, 0)], ch[i], t == DOWN_TYPES[1], i == n - 1)
            for i, t in enumerate(cfg.down_block_types)
        )
        self.mid_block = MidBlock(cfg)
        rev = ch[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock(cfg, i, rev[min(i + 1, n - 1)], rev[max(i - 1, 0)], rev[i], t == UP_TYPES[1], i == n - 1)
            for i, t in enumerate(cfg.up_block_types)
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        follow_input_layouts(self)  # channels-last weights where the maps are (same bits)

    def condition(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        text_states: torch.Tensor | None = None,
        hint: torch.Tensor | None = None,
    ) -> UNetCond:
        """Project the conditioning once per generation (it does not depend on x or t).

        image_embeds (B, D) for every variant; 2.1 adds the pooled text `text_embeds` (B, D) and the text
        encoder's `text_states` (B, L, encoder_hid_dim); the ControlNet variant adds `hint` (B, 3, H, W).
        """
        kind = self.config.addition_embed_type
        if kind == "text_image":
            if text_embeds is None or text_states is None:
                raise ValueError(
                    "this Kandinsky 2.1 UNet needs text_embeds and text_states besides image_embeds"
                )
            context = self.encoder_hid_proj(text_states, image_embeds)
            aug = self.add_embedding(image_embeds, text_embeds)
        else:
            context = self.encoder_hid_proj(image_embeds)
            aug = self.add_embedding(image_embeds)
        feats = None
        if kind == "image_hint":
            if hint is None:
                raise ValueError("this ControlNet UNet needs a `hint` image tensor of shape (B, 3, H, W)")
            feats = self.add_embedding.input_hint_block(hint.to(self.conv_in.weight.dtype))
        return UNetCond(aug, context, feats)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | int | float, cond: UNetCond) -> torch.Tensor:
        """Predict (eps, variance) for latents `x` (B, C, h, w) at timestep(s) `t`."""
        if not torch.is_tensor(t):
            t = torch.tensor(
                [t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=x.device
            )
        t = t.reshape(-1).to(x.device).expand(x.shape[0])
        tfeat = timestep_embedding(
            t, self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift
        )
        temb = F.silu(self.time_embedding(tfeat.to(x.dtype)) + cond.aug_emb)
        if cond.hint is not None:
            x = torch.cat([x, cond.hint], dim=1)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, s = block(h, temb, cond.context)
            skips += s
        h = self.mid_block(h, temb, cond.context)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], temb, cond.context)
            del skips[-n:]
        return self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """diffusers-compatible call: `unet(sample, t, encoder_hidden_states, added_cond_kwargs={...})`."""
        kw = added_cond_kwargs or {}
        if "image_embeds" not in kw:
            raise ValueError("the Kandinsky UNet needs added_cond_kwargs={'image_embeds': ...}")
        text_embeds = kw.get("text_embeds", encoder_hidden_states)
        cond = self.condition(kw["image_embeds"], text_embeds, encoder_hidden_states, kw.get("hint"))
        out = self.denoise(sample, timestep, cond)
        return UNetOutput(out) if return_dict else (out,)
