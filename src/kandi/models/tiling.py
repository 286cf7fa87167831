"""Tiled passes over images and latents: run a network on overlapping tiles and blend the seams.

One implementation for every tiled pass in kandi: the MoVQ and FLUX VAE decoders and encoders
(`enable_tiling()`, diffusers' name) and the learned upscalers (`kandi.upscale`). A tile's outer third
of each overlap is not used and the middle third is a linear cross-fade, so a network that sees no
further than that (overlap // 3 input pixels) gives exactly its untiled result. The autoencoders are not
local: their GroupNorms normalise with each tile's own statistics and the mid-block attention sees only
its tile (as diffusers' tiled AutoencoderKL), so their tiles differ slightly from one whole pass; the
cross-fade hides the seams. In return the activations are bounded by the tile size at any image size.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch


def spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of the tiles along one side: as few as `tile` allows with at least `overlap` px
    shared by neighbours, all of one length and evenly spread (so no tile is mostly overlap)."""
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))
    length = -(-(size + (n - 1) * overlap) // n)
    return [(round(i * (size - length) / (n - 1)), length) for i in range(n)]


def ramp(n: int, overlap: int, lead: bool, trail: bool) -> torch.Tensor:
    """Blend weights along one tile side of n px: zero in the outer third of an overlap (where the tile
    sees past its edge), rising linearly over the middle third, one inside; no ramp at the image edge."""
    w = torch.ones(n)
    if overlap <= 0:
        return w
    pad = overlap // 3
    rise = max(overlap - 2 * pad, 1)
    d = torch.arange(n, dtype=torch.float32)
    up = ((d - pad + 0.5) / rise).clamp(0, 1)
    if lead:
        w = torch.minimum(w, up)
    if trail:
        w = torch.minimum(w, up.flip(0))
    return w


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int | Fraction = 1,
              tile: int = 512, overlap: int = 48) -> torch.Tensor:  # fmt: skip
    """fn over (B, C, H, W) in tiles of `tile` input px overlapping by `overlap`, blended: (B, C', H*s, W*s)
    in float32. `scale` is fn's output size over its input size: 8 for a decoder, Fraction(1, 8) for an
    encoder (then every tile starts and ends on a multiple of 8 input px). `tile=0` runs untiled.
    """
    s = Fraction(scale)
    unit = s.denominator
    h, w = x.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return fn(x)
    if any(v % unit for v in (h, w, tile, overlap)):
        raise ValueError(
            f"tiles of a 1/{unit} downscale need the image ({h}x{w}), tile ({tile}) and overlap ({overlap}) "
            f"in multiples of {unit} px"
        )
    out = weight = None
    for y0, th in _unit_spans(h, tile, overlap, unit):
        for x0, tw in _unit_spans(w, tile, overlap, unit):
            part = fn(x[..., y0 : y0 + th, x0 : x0 + tw]).float()
            wy = ramp(int(th * s), int(overlap * s), y0 > 0, y0 + th < h)
            wx = ramp(int(tw * s), int(overlap * s), x0 > 0, x0 + tw < w)
            wt = (wy[:, None] * wx[None, :]).to(part.device)
            if out is None:
                out = torch.zeros(*part.shape[:2], int(h * s), int(w * s), device=part.device)
                weight = torch.zeros(int(h * s), int(w * s), device=part.device)
            ys, xs = slice(int(y0 * s), int((y0 + th) * s)), slice(int(x0 * s), int((x0 + tw) * s))
            out[..., ys, xs] += part * wt
            weight[ys, xs] += wt
            del part, wt
    return out.div_(weight.clamp_min_(1e-8))  # in place: the output is the largest tensor here


def _unit_spans(size: int, tile: int, overlap: int, unit: int) -> list[tuple[int, int]]:
    return [(a * unit, n * unit) for a, n in spans(size // unit, tile // unit, overlap // unit)]


class TiledAutoencoder:
    """`enable_tiling()` / `disable_tiling()` (diffusers' names) for an autoencoder whose latents are
    `tile_factor` times smaller than its images; sizes are in latent pixels.

    `use_tiling` None (the default) tiles automatically when the image (latent times the factor) has
    more than `auto_tile_pixels` pixels (None: never); an explicit enable or disable wins.
    """

    use_tiling: bool | None = None
    tile_latent_size: int = 64
    tile_latent_overlap: int = 16
    auto_tile_pixels: int | None = None

    def enable_tiling(self, tile_size: int | None = None, overlap: int | None = None) -> None:
        """Encode and decode in overlapping tiles of `tile_size` latent px (e.g. 64 = 512 image px for
        a factor-8 model) sharing `overlap` px; bounds memory at any size, at a small cost in time."""
        tile = self.tile_latent_size if tile_size is None else tile_size
        ov = self.tile_latent_overlap if overlap is None else overlap
        if not (isinstance(tile, int) and isinstance(ov, int)) or tile < 2 or ov < 0 or ov * 2 >= tile:
            raise ValueError(
                f"tile size {tile_size!r} / overlap {overlap!r}: need an int tile size >= 2 and an int "
                "overlap >= 0 under half the tile size"
            )
        self.use_tiling, self.tile_latent_size, self.tile_latent_overlap = True, tile, ov

    def disable_tiling(self) -> None:
        """Always encode and decode in one pass (also turns off automatic tiling)."""
        self.use_tiling = False

    @property
    def tile_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def tiles_latent(self, h: int, w: int) -> bool:
        """Whether a latent of h x w pixels is processed in tiles."""
        if self.use_tiling is False or (h <= self.tile_latent_size and w <= self.tile_latent_size):
            return False
        if self.use_tiling:
            return True
        return self.auto_tile_pixels is not None and h * w * self.tile_factor**2 > self.auto_tile_pixels

    def tiled_decode(self, fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """fn(z) (latents -> images), in tiles when `tiles_latent` says so."""
        if not self.tiles_latent(*z.shape[-2:]):
            return fn(z)
        out = run_tiled(fn, z, self.tile_factor, self.tile_latent_size, self.tile_latent_overlap)
        return out.to(z.dtype)

    def tiled_encode(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn(x) (images -> latents), in tiles when the latent would be tiled; images whose sides are
        not multiples of the factor run whole (their latents' edges would not line up across tiles)."""
        f = self.tile_factor
        h, w = x.shape[-2:]
        if h % f or w % f or not self.tiles_latent(h // f, w // f):
            return fn(x)
        out = run_tiled(fn, x, Fraction(1, f), self.tile_latent_size * f, self.tile_latent_overlap * f)
        return out.to(x.dtype)
