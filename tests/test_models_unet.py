"""Kandinsky 2.x UNet against diffusers' UNet2DConditionModel: tiny parity, full-size key maps, configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import tiny  # noqa: E402  (tests/ is on sys.path through conftest)

from kandi.models.unet2 import UNet2, UNet2Config  # noqa: E402

CONFIGS = Path(__file__).parent / "data" / "configs"
MANIFESTS = CONFIGS / "manifests"
ATOL = 1e-5
# one tiny config per addition embedding, plus the 9-channel inpaint input
TINY = {
    "image": "tiny-k22-decoder",
    "text_image": "tiny-k21",
    "image_hint": "tiny-k22-controlnet",
    "inpaint": "tiny-k22-inpaint",
}
# timestep forms diffusers accepts: per-sample tensor, 0-d tensor, 1-element tensor, int, float
TIMESTEPS = [torch.tensor([3, 517]), torch.tensor(999), torch.tensor([40]), 0, 250, 17.5]


def _json(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / name).read_text())


def _ref(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**tiny.tiny_kwargs(TINY[kind], "unet")).eval()
    tiny._jitter(ref)  # zero-initialised layers (conv_out, ...) must not hide bugs
    return ref


def _ours(ref: torch.nn.Module) -> UNet2:
    ours = UNet2.from_config(ref.config).eval()  # a diffusers FrozenDict: exercises from_diffusers
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def _inputs(cfg: Any, batch: int = 2, h: int = 8, w: int = 12, seed: int = 1) -> dict[str, Any]:
    """diffusers-style call arguments for a UNet config (non-square latents catch h/w swaps)."""
    g = torch.Generator().manual_seed(seed)
    kind = cfg.addition_embed_type
    latent_ch = 4 if kind == "image_hint" else cfg.in_channels  # the hint supplies the other 4
    image_dim = cfg.cross_attention_dim if kind == "text_image" else cfg.encoder_hid_dim
    added = {"image_embeds": torch.randn(batch, image_dim, generator=g)}
    states = None
    if kind == "text_image":
        added["text_embeds"] = torch.randn(batch, cfg.cross_attention_dim, generator=g)
        states = torch.randn(batch, 7, cfg.encoder_hid_dim, generator=g)
    if kind == "image_hint":
        added["hint"] = torch.randn(batch, 3, 8 * h, 8 * w, generator=g)
    return {
        "sample": torch.randn(batch, latent_ch, h, w, generator=g),
        "encoder_hidden_states": states,
        "added_cond_kwargs": added,
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", list(TINY))
@torch.no_grad()
def test_matches_diffusers(kind: str) -> None:
    ref = _ref(kind)
    ours = _ours(ref)
    kw = _inputs(ref.config)
    diffs = []
    for t in TIMESTEPS:
        got = ours(timestep=t, **kw)
        want = ref(timestep=t, **kw).sample
        assert got.sample.shape == want.shape == (2, 8, 8, 12)
        diffs.append(_max_diff(got.sample, want))
        assert got[0] is got.sample
    print(f"{kind}: max abs diff over {len(TIMESTEPS)} timesteps = {max(diffs):.3g}")  # bit-exact today
    assert max(diffs) <= ATOL, diffs
    (tup,) = ours(timestep=5, return_dict=False, **kw)
    torch.testing.assert_close(tup, ref(timestep=5, return_dict=False, **kw)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", list(TINY))
@torch.no_grad()
def test_condition_then_denoise_equals_forward(kind: str) -> None:
    ours = _ours(_ref(kind))
    kw = _inputs(ours.config)
    added = kw["added_cond_kwargs"]
    cond = ours.condition(
        added["image_embeds"], added.get("text_embeds"), kw["encoder_hidden_states"], added.get("hint")
    )
    assert (cond.hint is not None) == (kind == "image_hint")
    for t in (torch.tensor([3, 517]), 999, 17.5):
        torch.testing.assert_close(
            ours.denoise(kw["sample"], t, cond), ours(timestep=t, **kw).sample, atol=0, rtol=0
        )


@pytest.mark.parametrize("kind", ["image", "text_image"])
@torch.no_grad()
def test_attention_slicing(kind: str) -> None:
    ours = _ours(_ref(kind))
    kw = _inputs(ours.config)
    full = ours(timestep=torch.tensor([3, 517]), **kw).sample
    ours.set_attention_slice(1)
    assert all(m.slice_size == 1 for m in ours.modules() if hasattr(m, "slice_size"))
    torch.testing.assert_close(ours(timestep=torch.tensor([3, 517]), **kw).sample, full, atol=ATOL, rtol=0)
    ours.set_attention_slice(None)
    torch.testing.assert_close(ours(timestep=torch.tensor([3, 517]), **kw).sample, full, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", list(TINY))
@torch.no_grad()
def test_half_precision_matches_diffusers(kind: str, dtype: torch.dtype) -> None:
    ref = _ref(kind)
    ours = _ours(ref).to(dtype)
    ref = ref.to(dtype)
    kw = _inputs(ref.config)
    states = kw["encoder_hidden_states"]
    kw = {
        "sample": kw["sample"].to(dtype),
        "encoder_hidden_states": None if states is None else states.to(dtype),
        "added_cond_kwargs": {k: v.to(dtype) for k, v in kw["added_cond_kwargs"].items()},
    }
    for t in (torch.tensor([3, 517]), 999):
        got = ours(timestep=t, **kw).sample
        assert got.dtype == dtype and torch.isfinite(got).all()
        # same ops in the same order; half-precision kernels may still round differently
        torch.testing.assert_close(got, ref(timestep=t, **kw).sample, atol=3e-2, rtol=3e-2)


def test_forward_needs_image_embeds_and_21_text() -> None:
    ours = _ours(_ref("text_image"))
    kw = _inputs(ours.config)
    with pytest.raises(ValueError, match="image_embeds"):
        ours(kw["sample"], 1, kw["encoder_hidden_states"], added_cond_kwargs={})
    hint = _ours(_ref("image_hint"))
    kw = _inputs(hint.config)
    del kw["added_cond_kwargs"]["hint"]
    with pytest.raises(ValueError, match="hint"):
        hint(timestep=1, **kw)


# ---------------------------------------------------------------------------------------------- full size

FULL_SIZE = ["k22-decoder", "k22-decoder-inpaint", "k22-controlnet-depth", "k21", "k21-inpaint"]


def _full(name: str) -> UNet2:
    with torch.device("meta"):
        return UNet2.from_config(_json(f"{name}.unet.json"))


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_matches_manifest(name: str) -> None:
    model = _full(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = json.loads((MANIFESTS / f"{name}.unet.shapes.json").read_text())
    assert sorted(set(want) - set(shapes)) == [] and sorted(set(shapes) - set(want)) == []
    assert shapes == want
    counts = _json("param_counts.json").get(f"{name}.unet.json")
    if counts:
        assert sum(p.numel() for p in model.parameters()) == counts["num_parameters"]
        assert len(shapes) == counts["num_state_dict_tensors"]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_to_diffusers_builds_the_same_model(name: str) -> None:
    ours = _full(name)
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel.from_config(ours.config.to_diffusers())
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    assert UNet2Config.from_diffusers(ours.config.to_diffusers()) == ours.config
    json.dumps(ours.config.to_diffusers())  # serialisable as config.json


def test_config_fields_read_like_diffusers() -> None:
    cfg = _full("k22-decoder").config
    assert cfg.block_out_channels == (384, 768, 1152, 1536) and cfg.attention_head_dim == (64,) * 4
    assert cfg.time_embed_dim == 1536 and cfg.latent_channels == 4
    assert _full("k22-controlnet-depth").config.latent_channels == 4
    assert _full("k21-inpaint").config.latent_channels == 4
    assert _full("k21").config.encoder_hid_dim_type == "text_image_proj"


# ---------------------------------------------------------------------------------------------- refusals

TINY_K22 = tiny.tiny_kwargs("tiny-k22-decoder", "unet")
BAD = [  # (field the message must name, config overrides)
    ("resnet_time_scale_shift", {"resnet_time_scale_shift": "default"}),
    ("down_block_types", {"down_block_types": ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]}),
    ("up_block_types", {"up_block_types": ["SimpleCrossAttnUpBlock2D", "UpBlock2D"]}),
    ("mid_block_type", {"mid_block_type": "UNetMidBlock2DCrossAttn"}),
    ("addition_embed_type", {"addition_embed_type": "text_time"}),
    ("addition_embed_type", {"addition_embed_type": None}),
    ("encoder_hid_dim_type", {"encoder_hid_dim_type": "text_proj"}),
    ("class_embed_type", {"class_embed_type": "timestep"}),
    ("time_embedding_type", {"time_embedding_type": "fourier"}),
    ("act_fn", {"act_fn": "gelu"}),
    ("only_cross_attention", {"only_cross_attention": True}),
    ("upcast_attention", {"upcast_attention": True}),
    ("num_attention_heads", {"num_attention_heads": 8}),
    ("conv_in_kernel", {"conv_in_kernel": 5}),
    ("time_cond_proj_dim", {"time_cond_proj_dim": 16}),
    ("resnet_out_scale_factor", {"resnet_out_scale_factor": 2.0}),
    ("down_block_types", {"down_block_types": ["ResnetDownsampleBlock2D"]}),  # 1 type for 2 blocks
    ("up_block_types", {"up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3}),
    ("attention_head_dim", {"attention_head_dim": [4, 4, 4]}),
    ("attention_head_dim", {"attention_head_dim": 5}),  # 32 channels do not split into heads of 5
    ("layers_per_block", {"layers_per_block": [1, 2]}),
    ("encoder_hid_dim_type", {"addition_embed_type": "text_image"}),  # 2.1 embedding with 2.2 projection
    ("in_channels", {"addition_embed_type": "image_hint", "in_channels": 4}),
    ("norm_num_groups", {"norm_num_groups": None}),
    ("block_out_channels", {"block_out_channels": 64}),
    ("encoder_hid_dim", {"encoder_hid_dim": None}),
    ("encoder_hid_dim", {"encoder_hid_dim": "32"}),  # config.json values are data, not trusted types
    ("in_channels", {"in_channels": 4.5}),
    ("time_embedding_dim", {"time_embedding_dim": [128]}),
]


@pytest.mark.parametrize(("field", "overrides"), BAD, ids=[f"{f}={list(o.values())[-1]}" for f, o in BAD])
def test_refuses_unsupported_config(field: str, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=field):
        UNet2Config.from_diffusers({**TINY_K22, **overrides})


def test_accepts_diffusers_spellings_of_defaults() -> None:
    # null for false switches (the k21-inpaint config), [1] for transformer_layers_per_block, ints as floats
    d = {**TINY_K22, "class_embeddings_concat": None, "transformer_layers_per_block": [1],
         "mid_block_scale_factor": 1.0, "layers_per_block": [1, 1], "attention_head_dim": [4, 4]}  # fmt: skip
    assert UNet2Config.from_diffusers(d) == UNet2Config.from_diffusers(TINY_K22)
