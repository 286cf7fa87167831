"""The Kandinsky 2.1 / 2.2 diffusion prior (diffusers' `PriorTransformer`).

The unCLIP prior of Ramesh et al. 2022 (Sec. 2.1, decoder-only Transformer variant): a causal
Transformer over [text tokens, text embedding, timestep, noisy image embedding, learned `prd` query]
whose output at the last token predicts the clean CLIP image embedding. Only the options the official
checkpoints use are implemented; attribute names follow the checkpoint keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    KandiModel,
    ModelOutput,
    TimestepEmbedding,
    attention,
    config_int,
    merge_heads,
    split_heads,
    timestep_embedding,
)

# Config keys whose value must be the one both official priors use; any other value selects a
# PriorTransformer path (extra norms, other widths, no prd token) that kandi does not implement.
_FIXED: dict[str, Any] = {
    "dropout": 0.0,
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
    "time_embed_dim": None,
    "embedding_proj_dim": None,
    "clip_embed_dim": None,
    # The extra tokens: text embedding, timestep, noisy image embedding and the prd query.
    "additional_embeddings": 4,
}
MASK_VALUE = -10000.0  # the prior's additive mask value (not -inf), kept for identical numbers


@dataclass(frozen=True)
class PriorConfig:
    """The diffusers `PriorTransformer` config; field names are its config keys."""

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    embedding_dim: int  # CLIP width: 768 (2.1, ViT-L/14), 1280 (2.2, ViT-bigG/14)
    num_embeddings: int  # text tokens
    additional_embeddings: int
    dropout: float
    time_embed_act_fn: str
    norm_in_type: str | None
    embedding_proj_norm_type: str | None
    encoder_hid_proj_type: str | None
    added_emb_type: str | None
    time_embed_dim: int | None
    embedding_proj_dim: int | None
    clip_embed_dim: int | None

    def __post_init__(self) -> None:
        for key, want in _FIXED.items():
            if getattr(self, key) != want:
                raise ValueError(
                    f"PriorTransformer config {key}={getattr(self, key)!r} is not supported by kandi's prior; "
                    f"accepted: {want!r} (the official Kandinsky 2.x value)"
                )
        for key in ("num_attention_heads", "attention_head_dim", "num_layers", "num_embeddings"):
            if getattr(self, key) < 1:
                raise ValueError(f"PriorTransformer config {key}={getattr(self, key)!r} must be >= 1")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def seq_len(self) -> int:
        return self.num_embeddings + self.additional_embeddings

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> PriorConfig:
        """Read a diffusers `PriorTransformer` config dict; missing keys take diffusers' constructor defaults."""
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # `_class_name`, `_diffusers_version`, ...
        # keys of newer diffusers versions that do not change this architecture are ignored, as diffusers does
        n = "PriorTransformer"
        return cls(
            num_attention_heads=config_int(n, "num_attention_heads", d.get("num_attention_heads", 32)),
            attention_head_dim=config_int(n, "attention_head_dim", d.get("attention_head_dim", 64)),
            num_layers=config_int(n, "num_layers", d.get("num_layers", 20)),
            embedding_dim=config_int(n, "embedding_dim", d.get("embedding_dim", 768)),
            num_embeddings=config_int(n, "num_embeddings", d.get("num_embeddings", 77)),
            additional_embeddings=config_int(n, "additional_embeddings", d.get("additional_embeddings", 4)),
            dropout=d.get("dropout", 0.0),
            time_embed_act_fn=d.get("time_embed_act_fn", "silu"),
            norm_in_type=d.get("norm_in_type"),
            embedding_proj_norm_type=d.get("embedding_proj_norm_type"),
            encoder_hid_proj_type=d.get("encoder_hid_proj_type", "linear"),
            added_emb_type=d.get("added_emb_type", "prd"),
            time_embed_dim=config_int(n, "time_embed_dim", d.get("time_embed_dim"), optional=True),
            embedding_proj_dim=config_int(
                n, "embedding_proj_dim", d.get("embedding_proj_dim"), optional=True
            ),
            clip_embed_dim=config_int(n, "clip_embed_dim", d.get("clip_embed_dim"), optional=True),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The `config.json` dict that diffusers' `PriorTransformer` rebuilds this architecture from."""
        return {"_class_name": "PriorTransformer", **asdict(self)}


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased projections and an optional additive mask."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        self.slice_size: int | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # (B, L, H*D) -> (B, H, L, D)
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.to_q, self.to_k, self.to_v))
        y = attention(q, k, v, mask, slice_size=self.slice_size)
        return self.to_out[0](merge_heads(y))  # (B, H, L, D) -> (B, L, H*D) -> (B, L, dim)


class GELUProj(nn.Module):
    """Linear then exact (erf) GELU; its own module because the checkpoint key is `ff.net.0.proj`."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """The 4x GELU MLP."""

    def __init__(self, dim: int):
        super().__init__()
        # net.1 is diffusers' parameter-free dropout; an Identity keeps the checkpoint indices net.0 / net.2.
        self.net = nn.Sequential(GELUProj(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(norm1(x)), then x + ff(norm3(x))."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)  # "norm3": the name diffusers gives the norm before the MLP
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), mask) + x
        return self.ff(self.norm3(x)) + x


@dataclass
class PriorOutput(ModelOutput):
    predicted_image_embedding: torch.Tensor  # (B, embedding_dim)


class Prior(KandiModel):
    """Predicts the clean CLIP image embedding from a noisy one, the timestep and the text."""

    config_class = PriorConfig
    diffusers_name = "PriorTransformer"

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        dim, emb = config.inner_dim, config.embedding_dim
        # Learned parameters that are not layers; zeros as in diffusers (checkpoints overwrite them).
        self.positional_embedding = nn.Parameter(torch.zeros(1, config.seq_len, dim))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.clip_mean = nn.Parameter(torch.zeros(1, emb))  # CLIP image-embedding statistics
        self.clip_std = nn.Parameter(torch.zeros(1, emb))
        self.time_embedding = TimestepEmbedding(dim, dim, dim)
        self.proj_in = nn.Linear(emb, dim)
        self.embedding_proj = nn.Linear(emb, dim)
        self.encoder_hidden_states_proj = nn.Linear(emb, dim)
        self.transformer_blocks = nn.ModuleList(
            Block(dim, config.num_attention_heads, config.attention_head_dim)
            for _ in range(config.num_layers)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.proj_to_clip_embeddings = nn.Linear(dim, emb)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int,
        proj_embedding: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> PriorOutput:
        """Denoise CLIP image embeddings.

        Args:
            hidden_states: (B, embedding_dim) noisy image embeddings.
            timestep: a number, or a tensor of shape () / (1,) / (B,).
            proj_embedding: (B, embedding_dim) CLIP text embeddings (pooled).
            encoder_hidden_states: (B, num_embeddings, embedding_dim) CLIP text token states.
            attention_mask: (B, num_embeddings) bool, False on padding tokens. Without it no mask at all is
                applied, not even the causal one (diffusers' behaviour; its pipelines always pass one).
        """
        if encoder_hidden_states.shape[1] != self.config.num_embeddings:
            raise ValueError(
                f"encoder_hidden_states has {encoder_hidden_states.shape[1]} tokens; "
                f"this prior takes num_embeddings={self.config.num_embeddings}"
            )
        b = hidden_states.shape[0]
        temb = self.time_embedding(self._timestep_features(timestep, b, hidden_states.device))  # (B, D)
        tokens = [
            self.encoder_hidden_states_proj(encoder_hidden_states),  # (B, L_text, D)
            self.embedding_proj(proj_embedding)[:, None],  # (B, E) -> (B, 1, D)
            temb[:, None],  # (B, D) -> (B, 1, D)
            self.proj_in(hidden_states)[:, None],  # (B, E) -> (B, 1, D)
            self.prd_embedding.to(temb.dtype).expand(b, -1, -1),  # (1, 1, D) -> (B, 1, D)
        ]
        x = torch.cat(tokens, dim=1)  # (B, L, D), L = num_embeddings + 4
        x = x + self.positional_embedding.to(x.dtype)
        mask = None if attention_mask is None else self._attention_bias(attention_mask, x.dtype)
        for block in self.transformer_blocks:
            x = block(x, mask)
        # Only the prd token is read out; LayerNorm is per token, so normalise just that one.
        return PriorOutput(predicted_image_embedding=self.proj_to_clip_embeddings(self.norm_out(x[:, -1])))

    def _timestep_features(
        self, timestep: torch.Tensor | float | int, b: int, device: torch.device
    ) -> torch.Tensor:
        """Sinusoidal features (B, D) of the timestep(s), in the model dtype."""
        if not torch.is_tensor(timestep):  # a long tensor, as diffusers makes it (so floats truncate alike)
            timestep = torch.tensor([timestep], dtype=torch.long, device=device)
        t = timestep.to(device).reshape(-1).expand(b)  # () / (1,) / (B,) -> (B,)
        return timestep_embedding(t, self.config.inner_dim).to(self.dtype)

    def _attention_bias(self, text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (B, 1, L, L): MASK_VALUE on padded text keys and on future positions.

        Built op for op as diffusers builds it, in the activation dtype, so the numbers agree even in
        bf16 (where -10000 rounds to -9984). Built per call rather than held in a buffer: non-persistent
        buffers stay unmaterialised when a model is built on the meta device and then loaded.
        """
        n = self.config.seq_len
        pad = (1 - text_mask.to(dtype)) * MASK_VALUE  # (B, L_text): 0 keep, MASK_VALUE drop
        # (B, L_text) -> (B, L): the extra tokens are always visible
        pad = F.pad(pad, (0, self.config.additional_embeddings), value=0.0)
        causal = torch.full((n, n), MASK_VALUE, device=text_mask.device).triu_(1).to(dtype)  # (L, L)
        return (pad[:, None, :] + causal)[:, None]  # (B, 1, L) + (L, L) -> (B, L, L) -> (B, 1, L, L)

    def post_process_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the CLIP-embedding normalisation the prior was trained in: x * clip_std + clip_mean."""
        return x * self.clip_std.to(x.device) + self.clip_mean.to(x.device)
