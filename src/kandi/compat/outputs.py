"""Pipeline outputs shaped like diffusers' (attribute, key and index access, `to_tuple()`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import PIL.Image
import torch


class BaseOutput:
    """Dataclass mixin: `out.images`, `out["images"]`, `out[0]`, `out.to_tuple()`, dict-style iteration."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def values(self) -> list[Any]:
        return list(self.to_tuple())

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(self.keys(), self.values()))

    def __getitem__(self, k: str | int | slice) -> Any:
        if isinstance(k, str):
            return getattr(self, k)
        return self.to_tuple()[k]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class ImagePipelineOutput(BaseOutput):
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class KandinskyPriorPipelineOutput(BaseOutput):
    """`image_embeds, negative_image_embeds = prior(...)` unpacks the embeddings: iteration yields values.

    diffusers' output iterates its keys, so the docs' `image_emb, zero_image_emb = pipe_prior.interpolate(...)`
    gives two strings there and the decoder then fails; in kandi the docs' line works as written.
    """

    image_embeds: torch.Tensor | np.ndarray
    negative_image_embeds: torch.Tensor | np.ndarray

    def __iter__(self):
        return iter(self.to_tuple())
