"""Tiny Kandinsky 3.1 checkpoints in ai-forever's own layout, for the tests and for bench/k31_golden.py.

Weights are a pure function of (key, shape, seed) so that the golden script (which builds ai-forever's
modules) and the tests (which never import them) hold the same numbers: keys are filled in sorted order
from one seeded CPU generator. The key/shape manifests of ai-forever's modules are in
tests/data/k31_manifests.json.gz (written by bench/k31_golden.py from the original code).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
MANIFESTS = DATA / "k31_manifests.json.gz"
GOLDEN = DATA / "k31_golden.safetensors"

# ai-forever's constructors (kandinsky3/__init__.py) at a tiny width; groups 32 and heads 64 are theirs
TINY_UNET = dict(model_channels=64, init_channels=32, time_embed_dim=64, context_dim=32, groups=32, head_dim=64,
                 expansion_ratio=4, compression_ratio=2, dim_mult=(1, 2, 2, 2), num_blocks=(2, 2, 2, 2),
                 add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True))  # fmt: skip
FULL_UNET = dict(model_channels=384, init_channels=192, time_embed_dim=1536, context_dim=4096, groups=32,
                 head_dim=64, expansion_ratio=4, compression_ratio=2, dim_mult=(1, 2, 4, 8), num_blocks=(3, 3, 3, 3),
                 add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True))  # fmt: skip
TINY_MOVQ = dict(double_z=False, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2, 4],
                 num_res_blocks=1, attn_resolutions=[32], dropout=0.0)  # fmt: skip
FULL_MOVQ = dict(double_z=False, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=256, ch_mult=[1, 2, 2, 4],
                 num_res_blocks=2, attn_resolutions=[32], dropout=0.0)  # fmt: skip
T5_DIM = 32
UNET_GAIN = 1.5
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry"


def manifests() -> dict[str, dict[str, list[int]]]:
    return json.loads(gzip.decompress(MANIFESTS.read_bytes()))


def fill(manifest: dict[str, list[int]], seed: int, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Deterministic weights for a key -> shape manifest: norms near 1, the rest ~ N(0, gain^2 / fan_in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(manifest):
        shape = manifest[key]
        x = torch.randn(shape, generator=g)
        if len(shape) == 1:
            norm = ("norm" in key or "layer_norm" in key) and key.endswith("weight")
            out[key] = 1.0 + 0.1 * x if norm else 0.1 * x
        else:
            out[key] = gain * x / math.sqrt(math.prod(shape[1:]))
    return out


def projection(seed: int, dim: int = 32, t5: int = T5_DIM) -> dict[str, torch.Tensor]:
    return fill({"0.weight": [dim, t5], "1.weight": [dim], "1.bias": [dim]}, seed)


def t5_config():
    from transformers import T5Config

    return T5Config(d_model=T5_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                    vocab_size=1128, feed_forward_proj="gated-silu", decoder_start_token_id=0)  # fmt: skip


def t5_encoder(seed: int = 5):
    from transformers import T5EncoderModel

    model = T5EncoderModel(t5_config()).eval()
    sd = model.state_dict()
    model.load_state_dict(fill({k: list(v.shape) for k, v in sd.items()}, seed))
    return model


def tokenizer(folder: Path):
    from tiny import t5_tokenizer

    return t5_tokenizer(folder)


def checkpoints(m: dict[str, dict[str, list[int]]]) -> dict[str, dict]:
    """Original-layout contents: {'base'|'flash'|'inpainting': {'unet', 'null_embedding'}, 'movq': sd},
    plus the projections (different seeds per model, as the release has three)."""
    out: dict[str, dict] = {}
    for i, (name, key) in enumerate(
        (("base", "tiny_unet"), ("flash", "tiny_unet"), ("inpainting", "tiny_unet9"))
    ):
        g = torch.Generator().manual_seed(100 + i)
        # gain 1.5: at gain 1 (or 0.5) the random UNet's group norms see near-constant inputs and it is chaotic
        # under guided DDIM (a 1e-6 change of the start noise moves a 2-step result by 1e-2), so equality
        # could not be tested at float precision; at 1.5 that change stays at 1e-6
        out[name] = {"unet": fill(m[key], 10 + i, UNET_GAIN), "null_embedding": torch.randn(32, generator=g)}
        out[f"projection_{name}"] = projection(20 + i)
    out["movq"] = fill(m["tiny_movq"], 30)
    return out


def write_folder(root: Path, m: dict[str, dict[str, list[int]]]) -> Path:
    """A tiny `ai-forever/Kandinsky3.1` folder: weights/*.pt and weights/flan_ul2_encoder/."""
    from kandi.loading.k31 import ENCODER_DIR, MOVQ_FILE, VARIANTS

    ck = checkpoints(m)
    (root / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
    for name, v in VARIANTS.items():
        torch.save(ck[name], root / v.unet_file)
        torch.save(ck[f"projection_{name}"], root / v.projection_file)
    torch.save(ck["movq"], root / MOVQ_FILE)
    t5_encoder().save_pretrained(root / ENCODER_DIR)
    tokenizer(root / ENCODER_DIR)
    return root
