"""Kandinsky 5 on CPU: one DiT step (cond + uncond) and one VAE decode, kandi against diffusers 0.42.1.

Random weights. The DiT is scaled down (model_dim 640 = 1/4 of 2560, ff_dim 2560, 10 of 50 visual blocks,
head_dim 128 as released) so both copies fit beside the other agents on this machine; the VAE is the
full-size FLUX VAE. Run: PYTHONPATH=src python bench/bench_k5.py [--size 512] [--vae-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from kandi.models.k5_dit import K5DiT
from kandi.models.vae_flux import AutoencoderKL

DIT = dict(in_visual_dim=16, in_text_dim=3584, in_text_dim2=768, time_dim=512, out_visual_dim=16, patch_size=[1, 2, 2],
           model_dim=640, ff_dim=2560, num_text_blocks=2, num_visual_blocks=10, axes_dims=[32, 48, 48])  # fmt: skip


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def main() -> None:
    import diffusers
    from make_k5_manifests import VAE

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--vae-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    ref = diffusers.Kandinsky5Transformer3DModel(**DIT).eval()
    ours = K5DiT.from_config(dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    lat = a.size // 8
    x = torch.randn(1, 1, lat, lat, 16)
    text, pooled, t = torch.randn(1, 64, 3584), torch.randn(1, 768), torch.tensor([500.0])
    pos = [torch.arange(1), torch.arange(lat // 2), torch.arange(lat // 2)]
    kw = dict(visual_rope_pos=pos, text_rope_pos=torch.arange(64))
    rows = []
    for name, m in (("diffusers", ref), ("kandi", ours)):
        rows.append(
            (
                f"DiT step x2 (CFG), {a.size}²",
                name,
                timed(lambda m=m: [m(x, text, t, pooled, **kw) for _ in range(2)], a.repeats),
            )
        )
    del ref, ours
    torch.manual_seed(0)
    vref = diffusers.AutoencoderKL(**VAE).eval()
    vours = AutoencoderKL.from_config(dict(vref.config)).eval()
    vours.load_state_dict(vref.state_dict(), strict=True)
    z = torch.randn(1, 16, a.vae_size // 8, a.vae_size // 8)
    for name, m in (("diffusers", vref), ("kandi", vours)):
        rows.append((f"VAE decode, {a.vae_size}²", name, timed(lambda m=m: m.decode(z), a.repeats)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| what | impl | best of {a.repeats} (s) |\n|---|---|---|")
    for what, impl, s in rows:
        print(f"| {what} | {impl} | {s:.3f} |")


if __name__ == "__main__":
    main()
