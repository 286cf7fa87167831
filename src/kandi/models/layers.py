"""Pieces shared by the kandi model files: timestep embeddings, attention, the model base class."""

from __future__ import annotations

import functools
import math
from dataclasses import fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal timestep features (Ho et al. 2020, from the Transformer positional encoding).

    Computed in fp32 whatever the model dtype: the caller casts, so fp16 models see the same frequencies.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift)
    )
    args = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Two-layer MLP over timestep features (`linear_1`, SiLU, `linear_2`)."""

    def __init__(self, in_dim: int, dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, L, H*D) -> (B, H, L, D)
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    # (B, H, L, D) -> (B, L, H*D)
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    slice_size: int | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, L, D) tensors.

    `slice_size` runs the batch*heads axis in chunks of that many, which bounds the peak memory of the
    attention matrix when SDPA falls back to the math kernel (the `enable_attention_slicing` option).
    """
    if slice_size is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, n, d = q.shape
    qf, kf, vf = (t.reshape(b * h, t.shape[2], t.shape[3]) for t in (q, k, v))
    mf = None if mask is None else mask.expand(b, h, n, k.shape[2]).reshape(b * h, n, k.shape[2])
    out = torch.empty(b * h, n, v.shape[3], dtype=q.dtype, device=q.device)
    for i in range(0, b * h, slice_size):
        s = slice(i, i + slice_size)
        m = None if mf is None else mf[s]
        out[s] = F.scaled_dot_product_attention(qf[s], kf[s], vf[s], attn_mask=m)
    return out.view(b, h, n, v.shape[3])


class KandiModel(nn.Module):
    """Base of every kandi network: a diffusers-style `config`, dtype/device and pretrained I/O.

    Subclasses set `config_class` (a dataclass with `from_diffusers(dict)` / `to_diffusers()`) and
    `diffusers_name`, the `_class_name` their `config.json` carries.
    """

    config_class: ClassVar[Any]
    diffusers_name: ClassVar[str]
    # models whose convs follow their inputs' layouts (follow_input_layouts): the loader reads their
    # spatial conv weights from the file straight into channels-last tensors (loading/checkpoints.py)
    channels_last_convs: ClassVar[bool] = False

    config: Any

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_config(cls, config: Any) -> KandiModel:
        """Build a randomly initialised model from a diffusers config dict or our config dataclass."""
        if not isinstance(config, cls.config_class):
            config = cls.config_class.from_diffusers(dict(config))
        return cls(config)

    @classmethod
    def convert_state_dict(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the keys of older checkpoints to ours; identity unless a model needs renames."""
        return sd

    def set_attention_slice(self, slice_size: int | None) -> None:
        """Run every attention of this model in chunks of `slice_size` batch*heads (None: all at once)."""
        for m in self.modules():
            if hasattr(m, "slice_size"):
                m.slice_size = slice_size

    def load_attn_procs(self, pretrained_model_name_or_path_or_dict: Any, weight_name: str | None = None,
                        adapter_name: str | None = None, **hub: Any) -> None:  # fmt: skip
        """Load a LoRA into this model, as the diffusers training scripts call it (see `kandi.lora`)."""
        from .. import lora

        source = pretrained_model_name_or_path_or_dict
        lora.load_into({"model": self}, source, weight_name, adapter_name, **hub)

    @classmethod
    def from_pretrained(cls, name_or_path: str, subfolder: str | None = None, **kwargs: Any) -> KandiModel:
        """Load from a diffusers-layout folder or hub id (see `kandi.loading.load_model`)."""
        from ..loading.checkpoints import load_model  # lazy: loading imports models

        return load_model(cls, name_or_path, subfolder=subfolder, **kwargs)

    def save_pretrained(
        self, save_directory: str, safe_serialization: bool = True, variant: str | None = None
    ) -> None:
        """Write `config.json` and weights in diffusers layout, loadable by kandi and diffusers."""
        from ..loading.checkpoints import save_model

        save_model(self, save_directory, safe_serialization=safe_serialization, variant=variant)


def follow_input_layouts(model: nn.Module) -> None:
    """Keep each conv's weight in the memory layout of the feature maps it is called with.

    An attention's output is a channels-last view, so the convs after it run channels-last (in
    diffusers too: that is where kandi's bits come from). With NCHW weights oneDNN then reorders the
    weights on every call (a fifth of a UNet step at 256x256). Holding those weights channels-last
    gives the same bits without the reorder, while convs fed NCHW maps keep NCHW weights (a
    channels-last weight would switch them to the channels-last kernel, which sums in another order).

    At the model's first conv call every spatial conv weight is laid out channels-last in one pass
    (most of them are fed channels-last maps); then each conv, before it runs, takes its input's
    layout (putting the few NCHW-fed ones back) and keeps it until its inputs change layout. One pass
    before any activation exists, rather than a copy per conv between the first step's activations,
    keeps the heap compact: the first full-size 2.2 UNet step at 512x512 took 5.9 s instead of 7.4 s.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pending = [True]  # the one-pass layout has not run yet (shared by this model's hooks)
    for m in convs:
        m.channels_last_only = False
        m.register_forward_pre_hook(functools.partial(_weight_like_input, convs=convs, pending=pending))


def _weight_like_input(
    conv: nn.Conv2d, args: tuple[Any, ...], convs: list[nn.Conv2d], pending: list[bool]
) -> None:
    if torch.compiler.is_compiling():  # a compiled graph picks its own layouts
        return
    if pending[0]:
        pending[0] = False
        _all_channels_last(convs)
    x, w = args[0], conv.weight
    # what the conv dispatcher reads as a channels-last input: NHWC strides, not also plain contiguous
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    # `channels_last_only`: the bf16 CPU path, where every conv runs NHWC (kandi.fast.use_bf16_layout)
    fmt = torch.channels_last if nhwc or conv.channels_last_only else torch.contiguous_format
    if not w.is_contiguous(memory_format=fmt):  # 1x1 weights are both: they never move
        with torch.no_grad():
            w.data = w.data.contiguous(memory_format=fmt)


@torch.no_grad()
def _all_channels_last(convs: list[nn.Conv2d]) -> None:
    for c in convs:
        w = c.weight
        if w.dim() == 4 and not w.is_meta and not w.is_contiguous(memory_format=torch.channels_last):
            w.data = w.data.contiguous(memory_format=torch.channels_last)


class ModelOutput:
    """Base of the output dataclasses: a field is read by name, key or position (`out.sample`,
    `out["sample"]`, `out[0]`), the three ways diffusers' `BaseOutput` is read by callers."""

    def __getitem__(self, key: int | str) -> Any:
        names = [f.name for f in fields(self)]  # type: ignore[arg-type]  # subclasses are dataclasses
        if isinstance(key, str):
            if key not in names:
                raise KeyError(key)
            return getattr(self, key)
        return getattr(self, names[key])


def config_int(model: str, key: str, value: Any, optional: bool = False) -> int | None:
    """A whole-number config value, or a ValueError naming the field (config.json is data, not code)."""
    if value is None and optional:
        return None
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )
    if not whole:
        raise ValueError(f"{model} config {key}={value!r} is not supported: expected a whole number")
    return int(value)


def config_ints(model: str, key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{model} config {key}={value!r} is not supported: expected a list of whole numbers")
    return tuple(config_int(model, key, v) for v in value)
