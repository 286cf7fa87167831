"""Write tests/data/k5/*.manifest.json: key -> shape of the full-size Kandinsky 5 image DiT and FLUX VAE.

Source: the hub's safetensors index files could not be read from this machine (no hub access), so the
manifests are built from diffusers 0.42.1's own classes at the full configs, on the meta device. The DiT
config is the official kandinsky-5 repo's `get_default_t2i_conf` / `get_default_ti2i_conf` (model_dim
2560, ff_dim 10240, 2 text blocks, 50 visual blocks, axes_dims (32, 48, 48), 16 latent channels, Qwen2.5-VL
3584-d and CLIP-L 768-d text; the editing model has visual_cond=True); the VAE config is FLUX.1's.
Run: PYTHONPATH=src python bench/make_k5_manifests.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "k5"
DIT = dict(
    in_visual_dim=16,
    in_text_dim=3584,
    in_text_dim2=768,
    time_dim=512,
    out_visual_dim=16,
    patch_size=[1, 2, 2],
    model_dim=2560,
    ff_dim=10240,
    num_text_blocks=2,
    num_visual_blocks=50,
    axes_dims=[32, 48, 48],
    attention_type="regular",
)
VAE = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    layers_per_block=2,
    mid_block_add_attention=True,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SOURCE = "diffusers 0.42.1 classes at full config on the meta device (see bench/make_k5_manifests.py)"


def main() -> None:
    import diffusers

    OUT.mkdir(parents=True, exist_ok=True)
    builds = {
        "t2i.transformer": (diffusers.Kandinsky5Transformer3DModel, {**DIT, "visual_cond": False}),
        "i2i.transformer": (diffusers.Kandinsky5Transformer3DModel, {**DIT, "visual_cond": True}),
        "vae": (diffusers.AutoencoderKL, VAE),
    }
    for name, (cls, cfg) in builds.items():
        with torch.device("meta"):
            model = cls(**cfg)
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        doc = {"source": SOURCE, "config": cfg, "keys": keys}
        (OUT / f"{name}.manifest.json").write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
        print(name, len(keys), sum(torch.Size(s).numel() for s in keys.values()))


if __name__ == "__main__":
    main()
