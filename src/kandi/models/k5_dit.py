"""The Kandinsky 5 diffusion transformer (diffusers' `Kandinsky5Transformer3DModel`), image path only.

A flow-matching DiT (Kandinsky 5.0 report, 2025): Qwen2.5-VL token states pass `num_text_blocks`
self-attention blocks; latent patches (1x2x2) pass `num_visual_blocks` blocks of self-attention with
3-D RoPE, cross-attention to the text and an MLP, each modulated (shift, scale, gate) by the timestep
embedding plus the pooled CLIP text. Dense attention only: the sparse "nabla" mode of the video
checkpoints is refused. Attribute names follow the diffusers checkpoint keys.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import KandiModel, ModelOutput, config_int, config_ints


@dataclass(frozen=True)
class K5DiTConfig:
    """The diffusers `Kandinsky5Transformer3DModel` config (the keys the image checkpoints use)."""

    in_visual_dim: int = 4
    in_text_dim: int = 3584
    in_text_dim2: int = 768
    time_dim: int = 512
    out_visual_dim: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    model_dim: int = 2048
    ff_dim: int = 5120
    num_text_blocks: int = 2
    num_visual_blocks: int = 32
    axes_dims: tuple[int, int, int] = (16, 24, 24)
    visual_cond: bool = False
    attention_type: str = "regular"

    def __post_init__(self) -> None:
        if self.attention_type != "regular":
            raise ValueError(
                f"Kandinsky5Transformer3DModel config attention_type={self.attention_type!r} is not supported "
                "by kandi (image checkpoints use dense attention); accepted: 'regular'"
            )
        if self.model_dim % self.head_dim:
            raise ValueError(f"model_dim {self.model_dim} must be divisible by head_dim {self.head_dim}")
        if len(self.patch_size) != 3 or len(self.axes_dims) != 3:
            raise ValueError(
                f"patch_size {self.patch_size} and axes_dims {self.axes_dims} need 3 entries each"
            )

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dims)

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> K5DiTConfig:
        n = "Kandinsky5Transformer3DModel"
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        base = cls()
        ints = (
            "in_visual_dim",
            "in_text_dim",
            "in_text_dim2",
            "time_dim",
            "out_visual_dim",
            "model_dim",
            "ff_dim",
        )
        kw: dict[str, Any] = {k: config_int(n, k, d.get(k, getattr(base, k))) for k in ints}
        kw["num_text_blocks"] = config_int(
            n, "num_text_blocks", d.get("num_text_blocks", base.num_text_blocks)
        )
        kw["num_visual_blocks"] = config_int(
            n, "num_visual_blocks", d.get("num_visual_blocks", base.num_visual_blocks)
        )
        kw["patch_size"] = config_ints(n, "patch_size", d.get("patch_size", base.patch_size))
        kw["axes_dims"] = config_ints(n, "axes_dims", d.get("axes_dims", base.axes_dims))
        kw["visual_cond"] = bool(d.get("visual_cond", False))
        kw["attention_type"] = d.get("attention_type", "regular")
        return cls(**kw)

    def to_diffusers(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"], d["axes_dims"] = list(self.patch_size), list(self.axes_dims)
        return {"_class_name": "Kandinsky5Transformer3DModel", **d}


def freqs(dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """exp(-ln(P) k / dim), k = 0..dim-1: the sinusoid frequencies of the time embedding and RoPE."""
    return torch.exp(-math.log(max_period) * torch.arange(dim, dtype=torch.float32) / dim)


def rope_matrix(args: torch.Tensor) -> torch.Tensor:
    """Angles (..., d) -> 2x2 rotations (..., 1, d, 2, 2), the head axis left for broadcasting."""
    cos, sin = torch.cos(args), torch.sin(args)
    return torch.stack([cos, -sin, sin, cos], dim=-1).view(*args.shape, 2, 2).unsqueeze(-4)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (..., H, D) by rope (..., 1, D/2, 2, 2).

    The rotated q/k are rounded to bfloat16, as the released Kandinsky 5 code does (the checkpoints were
    trained that way), then cast back to x's dtype.
    """
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2).float()  # (..., H, D/2, 1, 2)
    return (rope * pairs).sum(-1).reshape(x.shape).to(torch.bfloat16).to(x.dtype)


def modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: norm(x) * (1 + scale) + shift in float32."""
    return (norm(x.float()) * (scale.float() + 1.0) + shift.float()).type_as(x)


def gated(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (x.float() + gate.float() * out.float()).type_as(x)


class TimeEmbeddings(nn.Module):
    def __init__(self, model_dim: int, time_dim: int):
        super().__init__()
        self.register_buffer("freqs", freqs(model_dim // 2), persistent=False)
        self.in_layer = nn.Linear(model_dim, time_dim)
        self.out_layer = nn.Linear(time_dim, time_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = torch.outer(t.float(), self.freqs.to(t.device))
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.in_layer.weight.dtype)
        return self.out_layer(F.silu(self.in_layer(emb)))


class TextEmbeddings(nn.Module):
    def __init__(self, text_dim: int, model_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(text_dim, model_dim)
        self.norm = nn.LayerNorm(model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_layer(x)
        return self.norm(x).type_as(x)


class VisualEmbeddings(nn.Module):
    def __init__(self, visual_dim: int, model_dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.patch = patch
        self.in_layer = nn.Linear(math.prod(patch) * visual_dim, model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        pt, ph, pw = self.patch
        # (B, T, H, W, C) -> (B, T/pt, H/ph, W/pw, pt*ph*pw*C)
        x = x.view(b, t // pt, pt, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 5, 2, 4, 6, 7).flatten(4, 7)
        return self.in_layer(x)


class Modulation(nn.Module):
    def __init__(self, time_dim: int, model_dim: int, n: int):
        super().__init__()
        self.out_layer = nn.Linear(time_dim, n * model_dim)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        # a float32 module (to_dtype) takes the float32 embedding; a bf16 one (plain .to) its own dtype
        return self.out_layer(F.silu(emb.to(self.out_layer.weight.dtype)))


class Attention(nn.Module):
    """Multi-head attention with per-head RMSNorm on q and k and optional RoPE."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.to_query = nn.Linear(dim, dim)
        self.to_key = nn.Linear(dim, dim)
        self.to_value = nn.Linear(dim, dim)
        self.query_norm = nn.RMSNorm(head_dim)
        self.key_norm = nn.RMSNorm(head_dim)
        self.out_layer = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        src = x if context is None else context
        q = self.to_query(x).unflatten(-1, (self.heads, -1))  # (B, S, H, D)
        k = self.to_key(src).unflatten(-1, (self.heads, -1))
        v = self.to_value(src).unflatten(-1, (self.heads, -1))
        q = self.query_norm(q.float()).type_as(q)
        k = self.key_norm(k.float()).type_as(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out_layer(y.transpose(1, 2).flatten(-2))  # (B, H, S, D) -> (B, S, H*D)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(dim, ff_dim, bias=False)
        self.out_layer = nn.Linear(ff_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.gelu(self.in_layer(x)))


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False)


class TextBlock(nn.Module):
    """Self-attention + MLP over the text tokens, adaLN-modulated by the time embedding."""

    def __init__(self, dim: int, time_dim: int, ff_dim: int, head_dim: int):
        super().__init__()
        self.text_modulation = Modulation(time_dim, dim, 6)
        self.self_attention_norm = _norm(dim)
        self.self_attention = Attention(dim, head_dim)
        self.feed_forward_norm = _norm(dim)
        self.feed_forward = FeedForward(dim, ff_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        shift, scale, gate, ff_shift, ff_scale, ff_gate = (
            self.text_modulation(emb).unsqueeze(1).chunk(6, dim=-1)
        )
        x = gated(
            x, gate, self.self_attention(modulate(self.self_attention_norm, x, shift, scale), rope=rope)
        )
        return gated(x, ff_gate, self.feed_forward(modulate(self.feed_forward_norm, x, ff_shift, ff_scale)))


class VisualBlock(nn.Module):
    """Self-attention (3-D RoPE), cross-attention to the text, MLP: nine modulation vectors."""

    def __init__(self, dim: int, time_dim: int, ff_dim: int, head_dim: int):
        super().__init__()
        self.visual_modulation = Modulation(time_dim, dim, 9)
        self.self_attention_norm = _norm(dim)
        self.self_attention = Attention(dim, head_dim)
        self.cross_attention_norm = _norm(dim)
        self.cross_attention = Attention(dim, head_dim)
        self.feed_forward_norm = _norm(dim)
        self.feed_forward = FeedForward(dim, ff_dim)

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, emb: torch.Tensor, rope: torch.Tensor
    ) -> torch.Tensor:
        p = self.visual_modulation(emb).unsqueeze(1).chunk(9, dim=-1)
        x = gated(x, p[2], self.self_attention(modulate(self.self_attention_norm, x, p[0], p[1]), rope=rope))
        x = gated(
            x, p[5], self.cross_attention(modulate(self.cross_attention_norm, x, p[3], p[4]), context=text)
        )
        return gated(x, p[8], self.feed_forward(modulate(self.feed_forward_norm, x, p[6], p[7])))


class OutLayer(nn.Module):
    def __init__(self, dim: int, time_dim: int, visual_dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.patch = patch
        self.modulation = Modulation(time_dim, dim, 2)
        self.norm = _norm(dim)
        self.out_layer = nn.Linear(dim, math.prod(patch) * visual_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(emb).chunk(2, dim=-1)  # (B, D) each
        y = (
            self.norm(x.float()) * (scale.float()[:, None, None, None] + 1.0)
            + shift.float()[:, None, None, None]
        )
        x = self.out_layer(y.type_as(x))
        b, t, h, w, _ = x.shape
        pt, ph, pw = self.patch
        # (B, T', H', W', C*pt*ph*pw) -> (B, T'pt, H'ph, W'pw, C)
        x = x.view(b, t, h, w, -1, pt, ph, pw).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.flatten(1, 2).flatten(2, 3).flatten(3, 4)


@dataclass
class TransformerOutput(ModelOutput):
    sample: torch.Tensor


class K5DiT(KandiModel):
    """Velocity prediction v(x_t, t, text) for latents (B, T, H, W, C) (channels last, T = 1 for images)."""

    config_class = K5DiTConfig
    diffusers_name = "Kandinsky5Transformer3DModel"
    # diffusers' _keep_in_fp32_modules: the timestep path stays float32 when the rest is bf16
    keep_fp32 = ("time_embeddings", "modulation", "visual_modulation", "text_modulation")

    @property
    def dtype(self) -> torch.dtype:
        """The bulk's dtype, not the float32-kept timestep path's (as diffusers' get_parameter_dtype)."""
        for name, p in self.named_parameters():
            if not set(self.keep_fp32) & set(name.split(".")):
                return p.dtype
        return super().dtype

    def to_dtype(self, dtype: torch.dtype) -> K5DiT:
        """Cast to `dtype`, keeping the time embedding and every modulation in float32 (as diffusers loads)."""
        self.to(dtype)
        for name, m in self.named_modules():
            if name.split(".")[-1] in self.keep_fp32:
                m.float()
        return self

    def __init__(self, config: K5DiTConfig):
        super().__init__()
        self.config = config
        c = config
        visual_in = 2 * c.in_visual_dim + 1 if c.visual_cond else c.in_visual_dim
        self.time_embeddings = TimeEmbeddings(c.model_dim, c.time_dim)
        self.text_embeddings = TextEmbeddings(c.in_text_dim, c.model_dim)
        self.pooled_text_embeddings = TextEmbeddings(c.in_text_dim2, c.time_dim)
        self.visual_embeddings = VisualEmbeddings(visual_in, c.model_dim, c.patch_size)
        self.text_transformer_blocks = nn.ModuleList(
            TextBlock(c.model_dim, c.time_dim, c.ff_dim, c.head_dim) for _ in range(c.num_text_blocks)
        )
        self.visual_transformer_blocks = nn.ModuleList(
            VisualBlock(c.model_dim, c.time_dim, c.ff_dim, c.head_dim) for _ in range(c.num_visual_blocks)
        )
        self.out_layer = OutLayer(c.model_dim, c.time_dim, c.out_visual_dim, c.patch_size)
        # RoPE angle tables (not in the checkpoints): 1-D for text, one per axis for the latent grid
        for name, table in self._tables(torch.device("cpu")).items():
            if "." not in name:  # the time embedding registers its own
                self.register_buffer(name, table, persistent=False)

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        c = self.config
        with torch.device(device):
            out = {"text_rope": torch.outer(torch.arange(1024.0), freqs(c.head_dim // 2))}
            for i, d in enumerate(c.axes_dims):
                out[f"rope_{i}"] = torch.outer(torch.arange(128.0), freqs(d // 2))
            out["time_embeddings.freqs"] = freqs(c.model_dim // 2)
        return out

    def init_buffers(self, device: torch.device) -> None:
        """Rebuild the non-persistent tables after a meta-device load."""
        for name, table in self._tables(device).items():
            owner, _, leaf = name.rpartition(".")
            setattr(self.get_submodule(owner) if owner else self, leaf, table)

    def visual_rope(self, t: int, h: int, w: int, scale: tuple[float, float, float]) -> torch.Tensor:
        """3-D RoPE for a (t, h, w) patch grid, flattened to (t*h*w, 1, D/2, 2, 2)."""
        at = self.rope_0[:t] / scale[0]
        ah = self.rope_1[:h] / scale[1]
        aw = self.rope_2[:w] / scale[2]
        args = torch.cat(
            [
                at[:, None, None].expand(t, h, w, -1),
                ah[None, :, None].expand(t, h, w, -1),
                aw[None, None, :].expand(t, h, w, -1),
            ],
            dim=-1,
        )
        return rope_matrix(args.reshape(t * h * w, -1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        pooled_projections: torch.Tensor,
        visual_rope_pos: Any = None,
        text_rope_pos: torch.Tensor | None = None,
        scale_factor: tuple[float, float, float] = (1.0, 1.0, 1.0),
        sparse_params: Any = None,
        return_dict: bool = True,
    ) -> TransformerOutput | torch.Tensor:
        """Latents (B, T, H, W, C), text (B, L, in_text_dim), t (B,), pooled (B, in_text_dim2) -> velocity.

        `visual_rope_pos` / `text_rope_pos` are accepted for diffusers' signature; positions are always
        0..n-1 along each axis (what the pipelines pass).
        """
        if sparse_params is not None:
            raise ValueError("sparse_params (nabla attention) is not supported: kandi runs dense attention")
        text = self.text_embeddings(encoder_hidden_states)
        emb = self.time_embeddings(timestep) + self.pooled_text_embeddings(pooled_projections)
        x = self.visual_embeddings(hidden_states)  # (B, T', H', W', D)
        n_text = text.shape[1] if text_rope_pos is None else int(text_rope_pos.shape[0])
        rope_text = rope_matrix(self.text_rope[:n_text])[None]  # (1, L, 1, D/2, 2, 2)
        for block in self.text_transformer_blocks:
            text = block(text, emb, rope_text)
        shape = x.shape[:-1]
        rope = self.visual_rope(shape[1], shape[2], shape[3], tuple(scale_factor))[None]
        x = x.flatten(1, 3)  # (B, T', H', W', D) -> (B, S, D)
        for block in self.visual_transformer_blocks:
            x = block(x, text, emb, rope)
        out = self.out_layer(x.reshape(*shape, -1), emb)
        return TransformerOutput(sample=out) if return_dict else out
