"""Helpers the parity tests share: a seeded generator and an output comparison."""

from __future__ import annotations

import numpy as np
import torch

TOL = 1e-4


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(a, b, tol: float = TOL) -> None:
    """Outputs equal within `tol` (float arrays / tensors); PIL image lists within one uint8 level."""
    if isinstance(a, list):
        a = np.stack([np.asarray(x, dtype=np.float64) for x in a])
        b = np.stack([np.asarray(x, dtype=np.float64) for x in b])
        tol = 1.0
    a, b = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol, np.abs(a - b).max()
