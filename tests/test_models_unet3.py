"""Kandinsky 3 UNet against diffusers' Kandinsky3UNet: tiny parity, loading, full-size key map, configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import tiny  # noqa: E402  (tests/ is on sys.path through conftest)

from kandi.loading.checkpoints import load_model_from_dir  # noqa: E402
from kandi.models.unet3 import UNet3, UNet3Config  # noqa: E402

CONFIGS = Path(__file__).parent / "data" / "configs"
MANIFESTS = CONFIGS / "manifests"
ATOL = 1e-5
TINY = tiny.tiny_kwargs("tiny-k3", "unet")
# timestep forms diffusers accepts: per-sample tensor, 0-d tensor, 1-element tensor, int, float
TIMESTEPS = [torch.tensor([3, 517]), torch.tensor(999), torch.tensor([40]), 0, 250, 17.5]


def _ref(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = diffusers.Kandinsky3UNet(**{**TINY, **overrides}).eval()
    tiny._jitter(ref)  # the conditional norms' context_mlp start at zero: they must not hide bugs
    return ref


def _ours(ref: torch.nn.Module) -> UNet3:
    ours = UNet3.from_config(ref.config).eval()  # a diffusers FrozenDict: exercises from_diffusers
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def _inputs(cfg: Any, batch: int = 2, h: int = 8, w: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """Non-square latents (catch h/w swaps) and T5 states whose mask pads each prompt differently."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])[:batch]
    return {
        "sample": torch.randn(batch, cfg.in_channels, h, w, generator=g),
        "encoder_hidden_states": torch.randn(batch, mask.shape[1], cfg.encoder_hid_dim, generator=g),
        "encoder_attention_mask": mask,
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------- parity


@torch.no_grad()
def test_matches_diffusers() -> None:
    ref = _ref()
    ours = _ours(ref)
    kw = _inputs(ref.config)
    diffs = []
    for t in TIMESTEPS:
        got = ours(timestep=t, **kw)
        want = ref(timestep=t, **kw).sample
        assert got.sample.shape == want.shape == (2, 4, 8, 12)
        diffs.append(_max_diff(got.sample, want))
        assert got[0] is got.sample
    print(f"max abs diff over {len(TIMESTEPS)} timesteps = {max(diffs):.3g}")  # bit-exact today
    assert max(diffs) <= ATOL, diffs
    (tup,) = ours(timestep=5, return_dict=False, **kw)
    torch.testing.assert_close(tup, ref(timestep=5, return_dict=False, **kw)[0], atol=ATOL, rtol=0)


LEVELS = {  # block_out_channels: (down blocks with attention, up blocks with attention)
    (32,): ([False], [True]),
    (32, 64, 64): ([False, True, True], [True, True, True]),
    (32, 64, 64, 64): ([False, True, True, True], [True, True, True, False]),
}


@pytest.mark.parametrize("blocks", list(LEVELS))
@torch.no_grad()
def test_matches_diffusers_other_depths(blocks: tuple[int, ...]) -> None:
    # the up blocks take diffusers' 4 attention flags reversed: below 4 levels every up block has attention
    ref = _ref(block_out_channels=list(blocks), layers_per_block=2)
    ours = _ours(ref)
    assert (
        [b.attentions is not None for b in ours.down_blocks],
        [b.attentions is not None for b in ours.up_blocks],
    ) == LEVELS[blocks]
    scale = 2 ** (len(blocks) - 1)
    kw = _inputs(ref.config, h=2 * scale, w=3 * scale)
    t = torch.tensor([3, 517])
    assert _max_diff(ours(timestep=t, **kw).sample, ref(timestep=t, **kw).sample) <= ATOL


@torch.no_grad()
def test_condition_then_denoise_equals_forward() -> None:
    ours = _ours(_ref())
    kw = _inputs(ours.config)
    cond = ours.condition(kw["encoder_hidden_states"], kw["encoder_attention_mask"])
    assert cond.mask is not None and cond.mask.shape == (2, 1, 1, 7)
    assert cond.text_emb.shape == (2, ours.config.time_embedding_dim)
    assert [len(kv) for kv in cond.kv] == [0, 3, 3, 3]  # down 0 has no attention; every up block has
    for t in (torch.tensor([3, 517]), 999, 17.5):
        torch.testing.assert_close(
            ours.denoise(kw["sample"], t, cond), ours(timestep=t, **kw).sample, atol=0, rtol=0
        )


@torch.no_grad()
def test_mask_none_means_every_token() -> None:
    ours = _ours(_ref())
    kw = _inputs(ours.config)
    full = {**kw, "encoder_attention_mask": torch.ones_like(kw["encoder_attention_mask"])}
    none = {**kw, "encoder_attention_mask": None}
    torch.testing.assert_close(ours(timestep=7, **none).sample, ours(timestep=7, **full).sample)
    assert _max_diff(ours(timestep=7, **kw).sample, ours(timestep=7, **full).sample) > 1e-4  # padding matters
    as_bool = {
        **kw,
        "encoder_attention_mask": kw["encoder_attention_mask"].bool(),
    }  # what the pipeline passes
    torch.testing.assert_close(
        ours(timestep=7, **as_bool).sample, ours(timestep=7, **kw).sample, atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(kw["sample"], 7)


@torch.no_grad()
def test_attention_slicing() -> None:
    ours = _ours(_ref())
    kw = _inputs(ours.config)
    t = torch.tensor([3, 517])
    full = ours(timestep=t, **kw).sample
    ours.set_attention_slice(1)
    assert all(m.slice_size == 1 for m in ours.modules() if hasattr(m, "slice_size"))
    torch.testing.assert_close(ours(timestep=t, **kw).sample, full, atol=ATOL, rtol=0)
    ours.set_attention_slice(None)
    torch.testing.assert_close(ours(timestep=t, **kw).sample, full, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_half_precision_matches_diffusers(dtype: torch.dtype) -> None:
    ref = _ref()
    ours = _ours(ref).to(dtype)
    ref = ref.to(dtype)
    kw = _inputs(ref.config)
    kw = {
        **kw,
        "sample": kw["sample"].to(dtype),
        "encoder_hidden_states": kw["encoder_hidden_states"].to(dtype),
    }
    got = ours(timestep=torch.tensor([3, 517]), **kw).sample
    assert got.dtype == dtype and torch.isfinite(got).all()
    # same ops in the same order; half-precision kernels may still round differently
    torch.testing.assert_close(got, ref(timestep=torch.tensor([3, 517]), **kw).sample, atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------------------------------------- loading


@torch.no_grad()
def test_loads_diffusers_folder_and_saves_one_diffusers_loads(tmp_path: Path) -> None:
    ref = _ref()
    ref.save_pretrained(tmp_path / "ref")
    ours = load_model_from_dir(UNet3, tmp_path / "ref")
    kw = _inputs(ref.config)
    want = ref(timestep=250, **kw).sample
    assert _max_diff(ours(timestep=250, **kw).sample, want) <= ATOL
    ours.save_pretrained(str(tmp_path / "ours"))
    back = diffusers.Kandinsky3UNet.from_pretrained(tmp_path / "ours").eval()
    assert _max_diff(back(timestep=250, **kw).sample, want) == 0.0


# ---------------------------------------------------------------------------------------------- full size


def _full() -> UNet3:
    with torch.device("meta"):
        return UNet3.from_config(json.loads((CONFIGS / "k3.unet.json").read_text()))


def test_full_size_matches_manifest() -> None:
    model = _full()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = json.loads((MANIFESTS / "k3.unet.shapes.json").read_text())
    assert sorted(set(want) - set(shapes)) == [] and sorted(set(shapes) - set(want)) == []
    assert shapes == want
    counts = json.loads((CONFIGS / "param_counts.json").read_text())["k3.unet.json"]
    assert sum(p.numel() for p in model.parameters()) == counts["num_parameters"]
    assert len(shapes) == counts["num_state_dict_tensors"]


def test_to_diffusers_round_trips() -> None:
    ours = _full()
    assert UNet3Config.from_diffusers(ours.config.to_diffusers()) == ours.config
    assert ours.config == UNet3Config()  # diffusers' defaults are the official model
    with torch.device("meta"):
        ref = diffusers.Kandinsky3UNet.from_config(ours.config.to_diffusers())
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    json.dumps(ours.config.to_diffusers())  # serialisable as config.json
    tiny_cfg = UNet3Config.from_diffusers({**TINY, "_class_name": "Kandinsky3UNet", "unknown_key": 1})
    assert UNet3Config.from_diffusers(tiny_cfg.to_diffusers()) == tiny_cfg


# ---------------------------------------------------------------------------------------------- refusals

BAD = [  # (field the message must name, config overrides)
    ("layers_per_block", {"layers_per_block": 1}),  # diffusers builds up blocks of the wrong width
    ("layers_per_block", {"layers_per_block": [3, 3]}),
    ("block_out_channels", {"block_out_channels": [16, 32, 32, 64, 64]}),  # diffusers has 4 levels at most
    ("block_out_channels", {"block_out_channels": []}),
    ("block_out_channels", {"block_out_channels": 64}),
    ("block_out_channels", {"block_out_channels": [31, 64]}),
    ("cross_attention_dim", {"cross_attention_dim": [4, 4]}),
    ("groups", {"groups": 3}),
    ("attention_head_dim", {"attention_head_dim": 5}),
    ("time_embedding_dim", {"time_embedding_dim": 6}),  # 6 does not split into heads of 4
    ("in_channels", {"in_channels": 4.5}),
    ("in_channels", {"in_channels": 0}),
    ("encoder_hid_dim", {"encoder_hid_dim": "32"}),  # config.json values are data, not trusted types
    ("groups", {"groups": None}),
]


@pytest.mark.parametrize(("field", "overrides"), BAD, ids=[f"{f}={list(o.values())[-1]}" for f, o in BAD])
def test_refuses_unsupported_config(field: str, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=field):
        UNet3Config.from_diffusers({**TINY, **overrides})
