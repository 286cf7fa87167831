"""The Qwen2.5-VL processor of Kandinsky 5 image editing, in PIL and numpy (no torchvision).

transformers 5's `Qwen2VLProcessor` will not build without torchvision (its video processor needs it),
and PyPI's torchvision does not import beside every torch build. Editing needs only the text tokenizer
and the image side: `QwenImageProcessor` is transformers' `Qwen2VLImageProcessorPil` value for value
(resize to a multiple of 28 within the pixel budget, bicubic; CLIP mean/std; 14-pixel patches, each
repeated over the 2-frame temporal patch), and `QwenVLProcessor` is what the Kandinsky 5 pipelines call
on `Qwen2VLProcessor`: `<|image_pad|>` widened to one token per merged 2x2 patch group, then tokenized.
The tests check both against transformers' own classes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) nearest the input whose sides are multiples of `factor`, area within bounds."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"the image's aspect ratio {max(height, width) / min(height, width):.0f}:1 is over the 200:1 "
            "Qwen2.5-VL takes"
        )
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


class QwenImageProcessor:
    """Images -> flat patches (N, 3*2*14*14) and grids (B, 3) [t, h, w], as Qwen2VLImageProcessorPil."""

    def __init__(self, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280, patch_size: int = 14,
                 temporal_patch_size: int = 2, merge_size: int = 2, image_mean: Any = CLIP_MEAN,
                 image_std: Any = CLIP_STD) -> None:  # fmt: skip
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.patch_size, self.temporal_patch_size = int(patch_size), int(temporal_patch_size)
        self.merge_size = int(merge_size)
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QwenImageProcessor:
        """From a preprocessor_config.json: `min_pixels`/`max_pixels`, or `size` {shortest_edge, longest_edge}."""
        size = d.get("size") or {}
        kw = {
            "min_pixels": d.get("min_pixels", size.get("shortest_edge", 56 * 56)),
            "max_pixels": d.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)),
        }
        for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
            if d.get(key) is not None:
                kw[key] = d[key]
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {"image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
                "do_normalize": True, "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                "merge_size": self.merge_size, "image_mean": self.image_mean, "image_std": self.image_std}  # fmt: skip

    def _pixels(self, image: PIL.Image.Image) -> np.ndarray:
        """(3, H', W') float32: resized bicubic to the budget's size, scaled to [0, 1], normalised."""
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(image.height, image.width, factor, self.min_pixels, self.max_pixels)
        arr = np.asarray(image.convert("RGB").resize((w, h), resample=PIL.Image.BICUBIC))
        # transformers rescales in float64, then normalises in float32 (the order matters for the bits)
        x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return x.transpose(2, 0, 1)

    def _patches(self, x: np.ndarray) -> tuple[np.ndarray, int, int]:
        c, h, w = x.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        # (C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, p, p): merged 2x2 groups stay adjacent
        x = x.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))  # a still image: t equal frames
        return x.reshape(gh * gw, c * t * p * p), gh, gw

    def __call__(self, images: list[PIL.Image.Image]) -> dict[str, torch.Tensor]:
        patches, grids = [], []
        for image in images:
            flat, gh, gw = self._patches(self._pixels(image))
            patches.append(flat)
            grids.append([1, gh, gw])
        return {
            "pixel_values": torch.from_numpy(np.concatenate(patches)),
            "image_grid_thw": torch.tensor(grids, dtype=torch.int64),
        }


class Encoded(dict):
    """The processor's output: a dict of tensors that moves as one (`.to(device)`), like BatchFeature."""

    def to(self, device: Any) -> Encoded:
        return Encoded({k: v.to(device) for k, v in self.items()})


class QwenVLProcessor:
    """What the Kandinsky 5 pipelines use of `Qwen2VLProcessor`: a text tokenizer and an image processor."""

    image_token = "<|image_pad|>"
    saved_as = ("transformers", "Qwen2VLProcessor")  # model_index.json names the class it stands for

    def __init__(self, tokenizer: Any, image_processor: QwenImageProcessor | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor or QwenImageProcessor()
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    @staticmethod
    def image_processor_of(folder: str | os.PathLike) -> QwenImageProcessor:
        """The image processor `folder`'s preprocessor_config.json describes (defaults if it has none)."""
        config = Path(folder) / CONFIG_NAME
        return QwenImageProcessor.from_dict(json.loads(config.read_text()) if config.is_file() else {})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> QwenVLProcessor:
        """The tokenizer of `folder` (AutoTokenizer) and its image processor."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(folder), **kwargs), cls.image_processor_of(folder))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(folder))
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(self.image_processor.to_dict(), indent=2))

    def _expand(self, texts: list[str], grids: torch.Tensor) -> list[str]:
        """Each `<|image_pad|>` in reading order becomes its image's token count (one per merged group)."""
        counts = (grids.prod(-1) // self.image_processor.merge_size**2).tolist()
        pads = sum(text.count(self.image_token) for text in texts)
        if pads != len(counts):
            raise ValueError(
                f"the prompts hold {pads} <|image_pad|> tokens for {len(counts)} images: one image per token"
            )
        out, k = [], 0
        for text in texts:
            parts = text.split(self.image_token)
            widened = [self.image_token * counts[k + i] + s for i, s in enumerate(parts[1:])]
            out.append(parts[0] + "".join(widened))
            k += len(parts) - 1
        return out

    def __call__(self, text: str | list[str], images: Any = None, videos: Any = None, **kw: Any) -> Encoded:
        if videos is not None:
            raise ValueError("kandi's Qwen2.5-VL processor takes images, not videos")
        texts = [text] if isinstance(text, str) else list(text)
        vision: dict[str, torch.Tensor] = {}
        if images is not None:
            vision = self.image_processor(images if isinstance(images, list | tuple) else [images])
            texts = self._expand(texts, vision["image_grid_thw"])
        kw.setdefault("return_tensors", "pt")
        enc = dict(self.tokenizer(texts, **kw))
        enc["mm_token_type_ids"] = (torch.as_tensor(enc["input_ids"]) == self.image_token_id).long()
        return Encoded({**enc, **vision})

    def decode(self, ids: Any, **kw: Any) -> str:
        return self.tokenizer.decode(ids, **kw)

    def batch_decode(self, ids: Any, **kw: Any) -> list[str]:
        return self.tokenizer.batch_decode(ids, **kw)
