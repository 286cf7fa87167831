"""Full-size kandi builds (meta device) have exactly the keys and shapes of the official K5 image layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kandi.models.k5_dit import K5DiT
from kandi.models.vae_flux import AutoencoderKL

DATA = Path(__file__).parent / "data" / "k5"
MODELS = {"t2i.transformer": K5DiT, "i2i.transformer": K5DiT, "vae": AutoencoderKL}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_meta_build_equals_manifest(name: str) -> None:
    doc = json.loads((DATA / f"{name}.manifest.json").read_text())
    with torch.device("meta"):
        model = MODELS[name].from_config(doc["config"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(doc["keys"]) - set(ours))
    unexpected = sorted(set(ours) - set(doc["keys"]))
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    wrong = {k: (ours[k], s) for k, s in doc["keys"].items() if ours[k] != s}
    assert not wrong
    if name.endswith("transformer"):
        assert sum(torch.Size(s).numel() for s in ours.values()) > 6.0e9  # the "6B" DiT
