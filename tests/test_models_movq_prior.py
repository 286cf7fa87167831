"""MoVQ and prior against diffusers' VQModel / PriorTransformer: tiny random parity, full-size key maps."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import tiny  # noqa: E402  (tests/ is on sys.path through conftest)

from kandi.models.movq import MoVQ, MoVQConfig  # noqa: E402
from kandi.models.prior import Prior, PriorConfig  # noqa: E402

CONFIGS = Path(__file__).parent / "data" / "configs"
MANIFESTS = CONFIGS / "manifests"
ATOL = 1e-5


def _json(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / name).read_text())


TINY_MOVQ = {
    "2-level": _json("tiny-k22-decoder.json")["components"]["movq"]["kwargs"],
    "4-level": _json("tiny-k22-controlnet.json")["components"]["movq"]["kwargs"],
}
TINY_MOVQ["2-level-2-layers"] = {**TINY_MOVQ["2-level"], "layers_per_block": 2}  # as the real MoVQ
TINY_PRIOR = {
    "k22-dummies": _json("tiny-k22-prior.json")["components"]["prior"]["kwargs"],
    "model-test": next(v for k, v in _json("tiny-models.json").items() if k.startswith("PriorTransformer (")),
}


def _randomise(model: torch.nn.Module) -> None:
    """Perturb every parameter so zero- or one-initialised ones (norms, biases, embeddings) cannot hide bugs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def _ref_movq(kwargs: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = diffusers.VQModel(**kwargs).eval()
    _randomise(ref)
    return ref


def _ref_prior(kwargs: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = diffusers.PriorTransformer(**kwargs).eval()
    _randomise(ref)
    with torch.no_grad():  # as diffusers' tests: clip_std ones (it starts at zero), clip_mean random
        ref.clip_std.fill_(1.0)
        ref.clip_mean.copy_(torch.randn_like(ref.clip_mean))
    return ref


def _ours(cls: type, ref: torch.nn.Module) -> torch.nn.Module:
    ours = cls.from_config(ref.config).eval()  # a diffusers FrozenDict: exercises from_diffusers
    ours.load_state_dict(cls.convert_state_dict(ref.state_dict()), strict=True)
    return ours


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _prior_inputs(cfg: PriorConfig, masked: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    e, n = cfg.embedding_dim, cfg.num_embeddings
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[0, 3:] = False  # padded text tokens, different lengths per sample
    mask[1, n - 2 :] = False
    return {
        "hidden_states": torch.randn(2, e, generator=g),
        "timestep": torch.tensor([3, 517]),
        "proj_embedding": torch.randn(2, e, generator=g),
        "encoder_hidden_states": torch.randn(2, n, e, generator=g),
        "attention_mask": mask if masked else None,
    }


# ---------------------------------------------------------------------------------------------- MoVQ


@pytest.mark.parametrize("norm_type", ["spatial", "group"])
@pytest.mark.parametrize("name", list(TINY_MOVQ))
@torch.no_grad()
def test_movq_matches_diffusers(name: str, norm_type: str) -> None:
    ref = _ref_movq({**TINY_MOVQ[name], "norm_type": norm_type})
    ours = _ours(MoVQ, ref)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    latents = ours.encode(x).latents
    _close(latents, ref.encode(x).latents)
    assert ours.encode(x)[0] is not None
    z = 2 * torch.randn_like(latents)  # wider than the codebook, so several entries are picked
    out = ours.decode(z, force_not_quantize=True)
    ref64 = copy.deepcopy(ref).double()
    _decoded_as_accurately(out.sample, ref, ref64, z)
    _decoded_as_accurately(ours.decode(z).sample, ref, ref64, ref.quantize(z)[0])
    _decoded_as_accurately(ours(x).sample, ref, ref64, ref.quantize(ref.encode(x).latents)[0])
    assert out[0] is out.sample and out["sample"] is out.sample


def _decoded_as_accurately(
    got: torch.Tensor, ref: torch.nn.Module, ref64: torch.nn.Module, zq: torch.Tensor
) -> None:
    """kandi's decode of zq is as close to diffusers' float64 decode as diffusers' fp32 one is: kandi's
    decoder upsamples through a folded conv (UpsampleConv), the same maths rounded otherwise."""
    want = ref.decode(zq, force_not_quantize=True).sample
    exact = ref64.decode(zq.double(), force_not_quantize=True).sample
    tiny.assert_as_accurate_as(got, want, exact)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_movq_half_precision_matches_diffusers(dtype: torch.dtype) -> None:
    ref = _ref_movq(TINY_MOVQ["2-level"])
    ours = _ours(MoVQ, ref).to(dtype)
    ref = ref.to(dtype)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    latents = ours.encode(x).latents
    assert latents.dtype == dtype
    # same ops in the same order: equal up to a couple of half-precision ulps
    tol = {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(latents, ref.encode(x).latents, **tol)
    torch.testing.assert_close(ours.decode(latents).sample, ref.decode(latents).sample, **tol)


def test_movq_legacy_attention_keys_load() -> None:
    ref = _ref_movq(TINY_MOVQ["2-level"])
    new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in ref.state_dict().items():
        for new, old in new_to_old.items():
            k = k.replace(f".{new}.", f".{old}.") if ".attentions." in k else k
        legacy[k] = v
    assert any(".query.weight" in k for k in legacy) and any(".proj_attn.bias" in k for k in legacy)
    ours = MoVQ.from_config(ref.config)
    ours.load_state_dict(MoVQ.convert_state_dict(legacy), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


@torch.no_grad()
def test_movq_attention_slicing() -> None:
    ours = _ours(MoVQ, _ref_movq(TINY_MOVQ["4-level"]))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = ours(x).sample
    ours.set_attention_slice(1)
    assert all(m.slice_size == 1 for m in ours.modules() if hasattr(m, "slice_size"))
    _close(ours(x).sample, full)


# ---------------------------------------------------------------------------------------------- prior


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(TINY_PRIOR))
@torch.no_grad()
def test_prior_matches_diffusers(name: str, masked: bool) -> None:
    ref = _ref_prior(TINY_PRIOR[name])
    ours = _ours(Prior, ref)
    kw = _prior_inputs(ours.config, masked)
    out = ours(**kw)
    _close(out.predicted_image_embedding, ref(**kw).predicted_image_embedding)
    assert out[0] is out.predicted_image_embedding
    for t in (999, torch.tensor(4), torch.tensor([4])):  # the other timestep forms diffusers accepts
        _close(ours(**{**kw, "timestep": t})[0], ref(**{**kw, "timestep": t})[0])
    _close(ours.post_process_latents(out[0]), ref.post_process_latents(out[0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_prior_half_precision_matches_diffusers(dtype: torch.dtype) -> None:
    ref = _ref_prior(TINY_PRIOR["k22-dummies"])
    ours = _ours(Prior, ref).to(dtype)
    ref = ref.to(dtype)
    kw = {
        k: v.to(dtype) if torch.is_floating_point(v) else v
        for k, v in _prior_inputs(ours.config, True).items()
    }
    out = ours(**kw)[0]
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref(**kw)[0], atol=2e-2, rtol=2e-2)


@torch.no_grad()
def test_prior_attention_slicing() -> None:
    ours = _ours(Prior, _ref_prior(TINY_PRIOR["model-test"]))
    kw = _prior_inputs(ours.config, masked=True)
    full = ours(**kw)[0]
    ours.set_attention_slice(1)
    _close(ours(**kw)[0], full)


def test_prior_rejects_wrong_text_length() -> None:
    ours = _ours(Prior, _ref_prior(TINY_PRIOR["model-test"]))
    kw = _prior_inputs(ours.config, masked=False)
    kw["encoder_hidden_states"] = kw["encoder_hidden_states"][:, :-1]
    with pytest.raises(ValueError, match="num_embeddings"):
        ours(**kw)


# ---------------------------------------------------------------------------------------------- configs

FULL_SIZE = sorted(p.name.removesuffix(".shapes.json") for p in MANIFESTS.glob("*.movq.shapes.json")) + [
    "k21-prior.prior",
    "k22-prior.prior",
]


def _cls(name: str) -> type:
    return MoVQ if name.endswith(".movq") else Prior


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_matches_manifest(name: str) -> None:
    with torch.device("meta"):
        model = _cls(name).from_config(_json(f"{name}.json"))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == json.loads((MANIFESTS / f"{name}.shapes.json").read_text())


@pytest.mark.parametrize("name", FULL_SIZE)
def test_to_diffusers_round_trip(name: str) -> None:
    cls = _cls(name)
    with torch.device("meta"):
        ours = cls.from_config(_json(f"{name}.json"))
        ref = getattr(diffusers, cls.diffusers_name).from_config(ours.config.to_diffusers())
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    assert cls.config_class.from_diffusers(ours.config.to_diffusers()) == ours.config
    json.dumps(ours.config.to_diffusers())  # serialisable as config.json


def test_config_fields_read_like_diffusers() -> None:
    movq = MoVQ.from_config(_json("k22-decoder.movq.json")).config
    assert movq.block_out_channels == (128, 256, 256, 512) and movq.num_vq_embeddings == 16384
    prior = PriorConfig.from_diffusers(_json("k22-prior.prior.json"))
    assert prior.embedding_dim == 1280 and prior.inner_dim == 2048 and prior.seq_len == 81


BAD_MOVQ = [
    ("norm_type", "layer"),
    ("act_fn", "gelu"),
    ("down_block_types", ["DownBlock2D", "AttnDownEncoderBlock2D"]),
    ("up_block_types", ["AttnUpDecoderBlock2D"]),
    ("mid_block_add_attention", False),
    ("lookup_from_codebook", True),
    ("vq_embed_dim", 8),
    ("norm_num_groups", 7),
    ("block_out_channels", [48, 64]),
    ("layers_per_block", 0),
    ("use_post_quant_conv", False),
    ("use_quant_conv", False),
]
BAD_PRIOR = [
    ("norm_in_type", "layer"),
    ("embedding_proj_norm_type", "layer"),
    ("encoder_hid_proj_type", None),
    ("added_emb_type", None),
    ("time_embed_dim", 64),
    ("embedding_proj_dim", 16),
    ("clip_embed_dim", 16),
    ("time_embed_act_fn", "gelu"),
    ("additional_embeddings", 3),
    ("dropout", 0.1),
    ("num_layers", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_MOVQ)
def test_movq_refuses_unsupported_config(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        MoVQConfig.from_diffusers({**TINY_MOVQ["2-level"], field: value})


@pytest.mark.parametrize(("field", "value"), BAD_PRIOR)
def test_prior_refuses_unsupported_config(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        PriorConfig.from_diffusers({**TINY_PRIOR["model-test"], field: value})


def test_unknown_config_keys_are_ignored_as_diffusers_does() -> None:
    # newer diffusers versions add keys; an architecture change would fail the strict weight load
    assert MoVQConfig.from_diffusers({**TINY_MOVQ["2-level"], "some_new_option": 1}) is not None
    assert PriorConfig.from_diffusers({**TINY_PRIOR["model-test"], "some_new_option": 1}) is not None


@pytest.mark.parametrize("value", [None, "32", 3.5, [32]])
def test_badly_typed_numbers_name_the_field(value: Any) -> None:
    with pytest.raises(ValueError, match="latent_channels"):
        MoVQConfig.from_diffusers({**TINY_MOVQ["2-level"], "latent_channels": value})
    with pytest.raises(ValueError, match="embedding_dim"):
        PriorConfig.from_diffusers({**TINY_PRIOR["model-test"], "embedding_dim": value})
