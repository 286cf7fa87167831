"""M-CLIP, the Kandinsky 2.1 decoder's multilingual text encoder: XLM-Roberta, masked mean pooling, a Linear.

The prompt reaches the 2.1 UNet twice: the pooled, projected vector joins the timestep embedding and the
per-token hidden states become context tokens. XLM-R (from transformers) reads 100 languages, which is
why Russian, Chinese or Arabic prompts work with 2.1. Attribute names follow the checkpoint keys
(`transformer.*`, `LinearTransformation.*`) so the official `text_encoder/` folder loads unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import KandiModel, config_int

# keys of a transformers config.json that describe the file, not the network
_META_KEYS = {"architectures", "model_type", "transformers_version", "_name_or_path", "auto_map", "dtype",
              "torch_dtype", "_commit_hash"}  # fmt: skip


@dataclass
class MCLIPConfig:
    """The XLM-R settings plus M-CLIP's two widths (`transformerDimensions` -> `numDims`)."""

    xlmr: dict[str, Any]
    transformer_dim: int
    out_dim: int

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> MCLIPConfig:
        xlmr = {
            k: v
            for k, v in d.items()
            if k not in _META_KEYS and k not in ("numDims", "transformerDimensions")
        }
        # MCLIPConfig in diffusers defaults the widths to 1024 -> 768 (the released model)
        tdim = config_int("M-CLIP", "transformerDimensions", d.get("transformerDimensions", 1024))
        odim = config_int("M-CLIP", "numDims", d.get("numDims", 768))
        hidden = config_int("M-CLIP", "hidden_size", xlmr.get("hidden_size", 768))
        if tdim != hidden:
            raise ValueError(
                f"M-CLIP config transformerDimensions={tdim} must equal hidden_size={hidden} (the pooled XLM-R width)"
            )
        return cls(xlmr, tdim, odim)

    def to_diffusers(self) -> dict[str, Any]:
        return {**self.xlmr, "numDims": self.out_dim, "transformerDimensions": self.transformer_dim}


class MCLIP(KandiModel):
    """diffusers' `MultilingualCLIP`: `forward(input_ids, attention_mask) -> (text_embeds, hidden_states)`."""

    config_class = MCLIPConfig
    diffusers_name = "MultilingualCLIP"
    weights_stem = "model"  # a transformers-style folder: model.safetensors, config.json without _class_name

    def __init__(self, config: MCLIPConfig):
        super().__init__()
        from transformers import XLMRobertaConfig, XLMRobertaModel

        self.config = config
        xcfg = XLMRobertaConfig(**config.xlmr)
        # diffusers' MultilingualCLIP runs eager attention; so does kandi, to give its images bit for bit.
        # The encoder runs once per call on 77 tokens, so SDPA would save nothing measurable here.
        xcfg._attn_implementation = "eager"
        self.transformer = XLMRobertaModel(xcfg)  # with its pooler: the checkpoint holds it (unused)
        self.LinearTransformation = nn.Linear(config.transformer_dim, config.out_dim)

    def init_buffers(self, device: torch.device) -> None:
        """Position and token-type ids: non-persistent buffers, rebuilt after a meta-device load."""
        emb = self.transformer.embeddings
        n = emb.position_embeddings.num_embeddings
        emb.position_ids = torch.arange(n, device=device).expand(1, -1)
        emb.token_type_ids = torch.zeros(1, n, dtype=torch.long, device=device)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled projected embedding (B, numDims), hidden states (B, L, hidden)), as diffusers returns."""
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(2).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1)
        return self.LinearTransformation(pooled), states

    def saved_config(self) -> dict[str, Any]:
        """config.json as diffusers' MultilingualCLIP writes it (transformers format)."""
        return {**self.config.to_diffusers(), "architectures": ["MultilingualCLIP"], "model_type": "M-CLIP"}
