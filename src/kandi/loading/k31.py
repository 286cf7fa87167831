"""Kandinsky 3.1 from ai-forever's own checkpoints (hub `ai-forever/Kandinsky3.1`), onto kandi's models.

The repo holds no configs: `weights/kandinsky3*.pt` are pickles `{"unet": state dict, "null_embedding":
(4096,)}`, `weights/movq.pt` a taming-layout MoVQ state dict (no codebook), `weights/flan_ul2_encoder/` a
transformers T5 encoder with a sentencepiece `spiece.model` and the text projections
`projection*.pt` (Linear without bias, then LayerNorm). The architecture is read off the state dicts'
shapes and key names; what they cannot show (32 norm groups, 64-wide heads) are the original's constants.
Every file goes through `torch.load(weights_only=True)` and a strict, shape-checked load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ModelNotFoundError
from ..models.movq import MoVQ, MoVQConfig
from ..models.unet3 import DOWN_ATTENTION, UP_ATTENTION, UNet3, UNet3Config

REPO_ID = "ai-forever/Kandinsky3.1"
GROUPS = 32  # UNet(groups=32) and MoVQ's Normalize(num_groups=32) in kandinsky3/__init__.py, movq.py
HEAD_DIM = 64  # UNet(head_dim=64)
ENCODER_DIR = "weights/flan_ul2_encoder"
MOVQ_FILE = "weights/movq.pt"


@dataclass(frozen=True)
class Variant:
    """One of the three UNets of the release, with the text projection trained with it."""

    unet_file: str
    projection_file: str


VARIANTS = {
    "base": Variant("weights/kandinsky3.pt", f"{ENCODER_DIR}/projection.pt"),
    "flash": Variant("weights/kandinsky3_flash.pt", f"{ENCODER_DIR}/projection_flash.pt"),
    "inpainting": Variant("weights/kandinsky3_inpainting.pt", f"{ENCODER_DIR}/projection_inpainting.pt"),
}

# ----------------------------------------------------------------------------------------- key maps
# (pattern on the original key, replacement): applied in order, each at most once per key; `{n}` groups
# are plain regex groups. Table rows are whole-segment renames, so their order does not matter.

Rule = tuple[str, str | Callable[[re.Match[str]], str]]

UNET_RULES: list[Rule] = [
    (r"^to_time_embed\.1\.", "time_embedding.linear_1."),
    (r"^to_time_embed\.3\.", "time_embedding.linear_2."),
    (r"^in_layer\.", "conv_in."),
    (r"^out_layer\.0\.", "conv_norm_out."),
    (r"^out_layer\.2\.", "conv_out."),
    (r"^feature_pooling\.", "add_time_condition."),
    (r"^down_samples\.", "down_blocks."),
    (r"^up_samples\.", "up_blocks."),
    (r"\.self_attention_block\.", ".attentions.0."),
    (r"\.resnet_attn_blocks\.(\d+)\.0\.", lambda m: f".resnets_in.{m[1]}."),
    (r"\.resnet_attn_blocks\.(\d+)\.1\.", lambda m: f".attentions.{int(m[1]) + 1}."),
    (r"\.resnet_attn_blocks\.(\d+)\.2\.", lambda m: f".resnets_out.{m[1]}."),
    (r"\.to_query\.", ".to_q."),
    (r"\.to_key\.", ".to_k."),
    (r"\.to_value\.", ".to_v."),
    (r"\.output_layer\.", ".to_out.0."),
]
PROJECTION_RULES: list[Rule] = [
    (r"^0\.weight$", "encoder_hid_proj.projection_linear.weight"),
    (r"^1\.", "encoder_hid_proj.projection_norm."),
]


def _movq_rules(levels: int) -> list[Rule]:
    """taming VQGAN names -> diffusers VQModel names; the decoder's `up` list runs shallowest first."""
    return [
        (r"^(encoder|decoder)\.mid\.block_([12])\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", lambda m: f"{m[1]}.mid_block.attentions.0."),
        (r"^encoder\.down\.(\d+)\.block\.", lambda m: f"encoder.down_blocks.{m[1]}.resnets."),
        (r"^encoder\.down\.(\d+)\.attn\.", lambda m: f"encoder.down_blocks.{m[1]}.attentions."),
        (r"^encoder\.down\.(\d+)\.downsample\.", lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0."),
        (r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets."),
        (r"^decoder\.up\.(\d+)\.attn\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.attentions."),
        (
            r"^decoder\.up\.(\d+)\.upsample\.",
            lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.",
        ),
        (r"^(encoder|decoder)\.norm_out\.", lambda m: f"{m[1]}.conv_norm_out."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"(\.attentions\.\d+)\.q\.", lambda m: f"{m[1]}.to_q."),
        (r"(\.attentions\.\d+)\.k\.", lambda m: f"{m[1]}.to_k."),
        (r"(\.attentions\.\d+)\.v\.", lambda m: f"{m[1]}.to_v."),
        (r"(\.attentions\.\d+)\.proj_out\.", lambda m: f"{m[1]}.to_out.0."),
        # every taming norm is a SpatialNorm wrapper; without a latent (the encoder) it is a plain GroupNorm
        (r"^(encoder\..*)\.norm_layer\.", lambda m: f"{m[1]}."),
        (r"^(encoder\..*\.attentions\.\d+)\.norm\.", lambda m: f"{m[1]}.group_norm."),
        (r"^(decoder\..*\.attentions\.\d+)\.norm\.", lambda m: f"{m[1]}.spatial_norm."),
    ]


def rename(key: str, rules: list[Rule]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key, count=1)
    return key


def _is_attention_linear(key: str) -> bool:
    return bool(re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", key))


def convert_unet(sd: dict[str, torch.Tensor], projection: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original UNet state dict + its text projection -> kandi `UNet3` keys."""
    out = {rename(k, UNET_RULES): v for k, v in sd.items()}
    out.update({rename(k, PROJECTION_RULES): v for k, v in projection.items()})
    return out


def convert_movq(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """taming MoVQ state dict -> kandi `MoVQ` keys; 1x1-conv attention weights become Linear weights."""
    rules = _movq_rules(_count(sd, r"^encoder\.down\.(\d+)\."))
    out = {}
    for k, v in sd.items():
        name = rename(k, rules)
        out[name] = v.flatten(1) if _is_attention_linear(name) and v.ndim == 4 else v
    return out


# ------------------------------------------------------------------------------- architectures


def _count(sd: dict[str, Any], pattern: str) -> int:
    """How many distinct indices the first group of `pattern` takes over the keys."""
    found = {int(m[1]) for k in sd if (m := re.match(pattern, k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"the checkpoint's {pattern!r} indices {sorted(found)} are not 0..n-1")
    return len(found)


def _shape(sd: dict[str, torch.Tensor], key: str, what: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{what}: key {key!r} is missing, so this is not a Kandinsky 3.1 checkpoint")
    return sd[key].shape


def unet_config(sd: dict[str, torch.Tensor], projection: dict[str, torch.Tensor], what: str) -> UNet3Config:
    """The `UNet3Config` an original-layout UNet state dict (and its projection) was built with."""
    conv_in = _shape(sd, "in_layer.weight", what)
    levels = _count(sd, r"^down_samples\.(\d+)\.")
    if levels == 0 or _count(sd, r"^up_samples\.(\d+)\.") != levels:
        raise CheckpointError(f"{what}: expected as many up_samples as down_samples (1 to 4 levels)")
    widths = tuple(
        _shape(sd, f"down_samples.{i}.resnet_attn_blocks.0.2.resnet_blocks.3.projection.weight", what)[0]
        for i in range(levels)
    )
    blocks = {_count(sd, rf"^{side}\.{i}\.resnet_attn_blocks\.(\d+)\.") for side in ("down_samples", "up_samples")
              for i in range(levels)}  # fmt: skip
    if len(blocks) != 1:
        raise CheckpointError(
            f"{what}: levels with different block counts {sorted(blocks)} are not supported"
        )
    for side, pattern in (("down_samples", DOWN_ATTENTION), ("up_samples", UP_ATTENTION)):
        has = tuple(
            f"{side}.{i}.self_attention_block.in_norm.context_mlp.1.weight" in sd for i in range(levels)
        )
        if has != pattern[:levels]:
            raise CheckpointError(
                f"{what}: {side} attention per level {has} differs from Kandinsky 3's {pattern[:levels]}"
            )
    if conv_in[0] * 2 != widths[0]:
        raise CheckpointError(
            f"{what}: init channels {conv_in[0]} are not half of the first width {widths[0]}"
        )
    proj = _shape(projection, "0.weight", f"{what} (projection)")
    cfg = UNet3Config(
        in_channels=conv_in[1],
        out_channels=_shape(sd, "out_layer.2.weight", what)[0],
        time_embedding_dim=_shape(sd, "to_time_embed.1.weight", what)[0],
        groups=GROUPS,
        attention_head_dim=HEAD_DIM,
        layers_per_block=blocks.pop(),
        block_out_channels=widths,
        cross_attention_dim=proj[0],
        encoder_hid_dim=proj[1],
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None
    return cfg


def movq_config(sd: dict[str, torch.Tensor], what: str) -> MoVQConfig:
    """The diffusers-style `MoVQConfig` of a taming-layout MoVQ state dict (codebook: none, see load_movq)."""
    levels = _count(sd, r"^encoder\.down\.(\d+)\.")
    widths = tuple(_shape(sd, f"encoder.down.{i}.block.0.conv2.weight", what)[0] for i in range(levels))
    enc_attn = [f"encoder.down.{i}.attn.0.q.weight" in sd for i in range(levels)]
    dec_attn = [f"decoder.up.{levels - 1 - j}.attn.0.q.weight" in sd for j in range(levels)]
    latent = _shape(sd, "encoder.conv_out.weight", what)[0]
    try:
        return MoVQConfig(
            in_channels=_shape(sd, "encoder.conv_in.weight", what)[1],
            out_channels=_shape(sd, "decoder.conv_out.weight", what)[0],
            down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in enc_attn),
            up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in dec_attn),
            block_out_channels=widths,
            layers_per_block=_count(sd, r"^encoder\.down\.0\.block\.(\d+)\."),
            act_fn="silu",
            latent_channels=latent,
            sample_size=32,
            num_vq_embeddings=1,  # the file has no codebook; Kandinsky 3 decodes unquantised latents
            norm_num_groups=GROUPS,
            vq_embed_dim=_shape(sd, "quant_conv.weight", what)[0],
            scaling_factor=1.0,
            norm_type="spatial",
            mid_block_add_attention=True,
            lookup_from_codebook=False,
            force_upcast=False,
        )
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None


# -------------------------------------------------------------------------------------- loading


def read_pt(path: Path) -> Any:
    """A pickle of tensors (dicts, lists) read with `weights_only=True`: no code runs."""
    if not path.is_file():
        raise CheckpointError(f"missing Kandinsky 3.1 file {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be read as PyTorch weights ({type(e).__name__}: {e})"
        ) from None


def _state_dict(obj: Any, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise CheckpointError(
                f"{path} holds no {key!r} entry; expected {{'unet': ..., 'null_embedding': ...}}"
            )
        obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state dict of tensors")
    return obj


def assign_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str,
                  dtype: torch.dtype | None, allow_missing: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Strict, shape-checked assignment into a meta-built model (one readable error per mismatch)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd) - set(allow_missing))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [(k, list(sd[k].shape), list(s)) for k, s in expected.items() if k in sd and sd[k].shape != s]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"weights in {source}: {len(wrong)} tensor(s) have other shapes than the "
                              f"architecture read from them, e.g. {k} is {got}, expected {want}")  # fmt: skip
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"] if unexpected else []
        raise CheckpointError(f"weights in {source} do not fit kandi's model: " + "; ".join(parts))
    dtype = dtype or torch.float32
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)


def load_unet(root: Path, variant: str, dtype: torch.dtype | None = None) -> tuple[UNet3, torch.Tensor]:
    """(UNet with the variant's text projection, null embedding (cross_attention_dim,)) from a 3.1 folder."""
    v = _variant(variant)
    path, ppath = root / v.unet_file, root / v.projection_file
    raw = read_pt(path)
    sd = _state_dict(raw, path, "unet")
    null = raw.get("null_embedding")
    if not torch.is_tensor(null):
        raise CheckpointError(f"{path} holds no 'null_embedding' tensor")
    projection = _state_dict(read_pt(ppath), ppath)
    cfg = unet_config(sd, projection, str(path))
    with torch.device("meta"):
        unet = UNet3(cfg)
    assign_strict(unet, convert_unet(sd, projection), f"{path} + {ppath.name}", dtype)
    if null.shape != (cfg.cross_attention_dim,):
        raise CheckpointError(
            f"{path}: null_embedding is {list(null.shape)}, expected [{cfg.cross_attention_dim}]"
        )
    return unet.eval(), null.to(dtype or torch.float32)


def load_movq(root: Path, dtype: torch.dtype | None = None) -> MoVQ:
    path = root / MOVQ_FILE
    sd = _state_dict(read_pt(path), path)
    with torch.device("meta"):
        movq = MoVQ(movq_config(sd, str(path)))
    assign_strict(movq, convert_movq(sd), str(path), dtype, allow_missing=("quantize.embedding.weight",))
    # no codebook in the release: a zero one keeps the module whole; decode(force_not_quantize=True) skips it
    movq.quantize.embedding.weight = torch.nn.Parameter(
        torch.zeros(1, movq.config.embed_dim, dtype=dtype or torch.float32), requires_grad=False
    )
    return movq.eval()


def load_text(root: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(T5 tokenizer, T5 encoder) from `weights/flan_ul2_encoder`; the tokenizer from its `spiece.model`."""
    folder = root / ENCODER_DIR
    if not folder.is_dir():
        raise CheckpointError(f"missing the T5 encoder folder {folder}")
    return load_tokenizer(folder), _t5_encoder(folder, dtype)


def load_tokenizer(folder: Path) -> Any:
    from transformers import T5Tokenizer

    if (folder / "tokenizer.json").is_file():
        return T5Tokenizer.from_pretrained(str(folder))
    spiece = folder / "spiece.model"
    if not spiece.is_file():
        raise CheckpointError(f"{folder} has neither spiece.model nor tokenizer.json (the T5 tokenizer)")
    try:
        import sentencepiece  # noqa: F401  (transformers converts spiece.model with it)
    except ImportError:
        raise CheckpointError(
            f"reading the T5 tokenizer {spiece} needs the sentencepiece package: pip install sentencepiece"
        ) from None
    return T5Tokenizer.from_pretrained(str(folder))


def _t5_encoder(folder: Path, dtype: torch.dtype | None) -> Any:
    from transformers import T5EncoderModel

    return T5EncoderModel.from_pretrained(str(folder), dtype=dtype or torch.float32).eval()


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown Kandinsky 3.1 model {name!r}; accepted: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def needed_files(variant: str) -> list[str]:
    """Hub allow-patterns for one model: its UNet and projection, the MoVQ and the T5 (not the others)."""
    v = _variant(variant)
    return [v.unet_file, v.projection_file, MOVQ_FILE, f"{ENCODER_DIR}/*.json", f"{ENCODER_DIR}/*.model",
            f"{ENCODER_DIR}/*.safetensors", f"{ENCODER_DIR}/*.bin", f"{ENCODER_DIR}/*.safetensors.index.json",
            f"{ENCODER_DIR}/*.bin.index.json"]  # fmt: skip


def resolve_root(name_or_path: str | os.PathLike, variant: str, *, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                 token: str | bool | None = None) -> Path:  # fmt: skip
    """A local 3.1 folder, or the hub repo's cached snapshot with only the files `variant` needs."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    from .hub import offline

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                                      allow_patterns=needed_files(variant),
                                      local_files_only=offline(local_files_only)))  # fmt: skip
    except Exception as e:
        raise ModelNotFoundError(
            f"cannot get {name_or_path} ({type(e).__name__}: {e}); pass a folder in the ai-forever/Kandinsky3.1 "
            "layout (weights/...) or the hub id while online"
        ) from None
