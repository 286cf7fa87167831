"""Loading and saving model folders: diffusers round trips, weight-file choice, hub cache, every error path.

diffusers is the oracle: it writes the folders kandi must read, and reads the folders kandi writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import tiny  # noqa: E402  (tests/ is on sys.path through conftest)

from kandi.errors import CheckpointError, KandiError, ModelNotFoundError  # noqa: E402
from kandi.loading import resolve_component_dir  # noqa: E402
from kandi.loading.pipeline import load_components, read_model_index  # noqa: E402
from kandi.models.movq import MoVQ  # noqa: E402
from kandi.models.prior import Prior  # noqa: E402
from kandi.models.unet2 import UNet2  # noqa: E402

DECODER_ID = "kandinsky-community/kandinsky-2-2-decoder"
WEIGHTS = "diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------------------------------- helpers


def _ref(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny diffusers model with random weights everywhere (no zero-initialised layer)."""
    torch.manual_seed(seed)
    if kind == "unet":
        model = diffusers.UNet2DConditionModel(**tiny.tiny_kwargs("tiny-k22-decoder", "unet"))
    elif kind == "movq":
        model = diffusers.VQModel(**tiny.tiny_kwargs("tiny-k22-decoder", "movq"))
    else:
        model = diffusers.PriorTransformer(**tiny.tiny_kwargs("tiny-k22-prior", "prior"))
    tiny._jitter(model)
    return model.eval()


OURS = {"unet": UNet2, "movq": MoVQ, "prior": Prior}


@torch.no_grad()
def _run(kind: str, model: torch.nn.Module) -> torch.Tensor:
    """One forward pass with fixed inputs, for kandi and diffusers models alike."""
    g = torch.Generator().manual_seed(3)
    if kind == "unet":
        x, img = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 32, generator=g)
        return model(x, torch.tensor([3, 517]), None, added_cond_kwargs={"image_embeds": img})[0]
    if kind == "movq":
        return model.decode(torch.randn(2, 4, 8, 8, generator=g), force_not_quantize=True).sample
    e, n = 32, 77
    kw = {
        "hidden_states": torch.randn(2, e, generator=g),
        "timestep": torch.tensor([3, 517]),
        "proj_embedding": torch.randn(2, e, generator=g),
        "encoder_hidden_states": torch.randn(2, n, e, generator=g),
    }
    return model(**kw)[0]


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k, v in sa.items():
        want = sb[k] if dtype is None else sb[k].to(dtype)
        assert v.dtype == want.dtype and torch.equal(v, want), k


def _error(exc: pytest.ExceptionInfo, cls: type, *parts: str) -> str:
    """One clear kandi error: the right class, a one-line message naming `parts`, no chained traceback."""
    e = exc.value
    assert type(e) is cls, repr(e)
    assert isinstance(e, KandiError)
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    # raised `from None` (or outside any except): the user sees this error alone
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), repr(e.__context__)
    return msg


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory) -> Path:
    """A tiny K2.2 UNet saved by diffusers (single safetensors file)."""
    folder = tmp_path_factory.mktemp("unet")
    _ref("unet").save_pretrained(folder)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", list(OURS))
def test_diffusers_saves_kandi_loads(kind: str, tmp_path: Path) -> None:
    ref = _ref(kind)
    ref.save_pretrained(tmp_path)
    ours = OURS[kind].from_pretrained(str(tmp_path))
    assert not ours.training and ours.dtype == torch.float32
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    _same_tensors(ours, ref)
    torch.testing.assert_close(_run(kind, ours), _run(kind, ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("kind", list(OURS))
def test_kandi_saves_diffusers_loads(kind: str, safe: bool, tmp_path: Path) -> None:
    ref = _ref(kind)
    ours = OURS[kind].from_config(ref.config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.save_pretrained(str(tmp_path), safe_serialization=safe)
    assert (tmp_path / ("diffusion_pytorch_model." + ("safetensors" if safe else "bin"))).is_file()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # atomic writes leave nothing
    back = getattr(diffusers, OURS[kind].diffusers_name).from_pretrained(tmp_path).eval()
    _same_tensors(back, ref)
    # same weights; MoVQ's folded upsampling convs round otherwise than diffusers' (tests/test_speed.py)
    torch.testing.assert_close(_run(kind, back), _run(kind, ours), atol=1e-5, rtol=0)
    # and kandi reads its own folder
    _same_tensors(OURS[kind].from_pretrained(str(tmp_path)), ref)


def test_kandi_saved_config_is_a_diffusers_config(tmp_path: Path) -> None:
    ref = _ref("unet")
    UNet2.from_config(ref.config).save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "UNet2DConditionModel"
    for k, v in ref.config.items():
        if (
            not k.startswith("_") and k != "mid_block_only_cross_attention"
        ):  # null and false: same to diffusers
            assert json.loads(json.dumps(v)) == saved.get(k, v), k
    assert not saved["mid_block_only_cross_attention"] and not ref.config.mid_block_only_cross_attention


def test_variant_weights(tmp_path: Path) -> None:
    ref = _ref("unet")
    ref.save_pretrained(tmp_path)  # fp32 plain weights ...
    half = _ref("unet").half()
    half.save_pretrained(tmp_path, variant="fp16")  # ... next to fp16 variant weights, as on the hub
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()

    _same_tensors(UNet2.from_pretrained(str(tmp_path)), ref)
    fp16 = UNet2.from_pretrained(str(tmp_path), variant="fp16", torch_dtype=torch.float16)
    _same_tensors(fp16, half)
    # the fp16 file upcast to the default fp32
    _same_tensors(UNet2.from_pretrained(str(tmp_path), variant="fp16"), half, dtype=torch.float32)


def test_variant_falls_back(tmp_path: Path) -> None:
    ref = _ref("unet")
    plain, only_variant = tmp_path / "plain", tmp_path / "only_fp16"
    ref.save_pretrained(plain)
    ref.save_pretrained(only_variant, variant="fp16")
    # asked for fp16, folder has only plain weights: load those
    _same_tensors(UNet2.from_pretrained(str(plain), variant="fp16"), ref)
    # asked for nothing, folder has only fp16 weights: nothing else to load, load them
    _same_tensors(UNet2.from_pretrained(str(only_variant)), ref)
    # asked for another variant: the one set present
    _same_tensors(UNet2.from_pretrained(str(only_variant), variant="bf16"), ref)


def test_several_variants_and_none_asked_names_them(tmp_path: Path) -> None:
    ref = _ref("unet")
    ref.save_pretrained(tmp_path, variant="fp16")
    ref.save_pretrained(tmp_path, variant="bf16")
    with pytest.raises(CheckpointError) as exc:
        UNet2.from_pretrained(str(tmp_path))
    _error(exc, CheckpointError, str(tmp_path), "variant", "bf16", "fp16")
    _same_tensors(UNet2.from_pretrained(str(tmp_path), variant="bf16"), ref)


@pytest.mark.parametrize("kind", ["unet", "movq"])
def test_torch_dtype(kind: str, tmp_path: Path) -> None:
    ref = _ref(kind)
    ref.save_pretrained(tmp_path)
    for dtype in (torch.float16, torch.bfloat16):
        ours = OURS[kind].from_pretrained(str(tmp_path), torch_dtype=dtype)
        assert {p.dtype for p in ours.parameters()} == {dtype}
        _same_tensors(ours, ref.to(torch.float32), dtype=dtype)


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_sharded_safetensors(variant: str | None, tmp_path: Path) -> None:
    ref = _ref("unet")
    ref.save_pretrained(tmp_path, max_shard_size="50KB", variant=variant)
    shards = [p.name for p in tmp_path.glob("*-of-*.safetensors")]
    assert len(shards) > 2 and any(
        p.name.endswith(".index.json") or ".index." in p.name for p in tmp_path.iterdir()
    )
    ours = UNet2.from_pretrained(str(tmp_path), variant=variant)
    _same_tensors(ours, ref)
    torch.testing.assert_close(_run("unet", ours), _run("unet", ref), atol=0, rtol=0)


def test_bin_weights_load_with_weights_only(tmp_path: Path, monkeypatch) -> None:
    ref = _ref("unet")
    ref.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _same_tensors(UNet2.from_pretrained(str(tmp_path)), ref)
    assert calls and all(c.get("weights_only") is True for c in calls)


def _unpickled_marker(path: str) -> dict:
    """What a malicious pickle would run on load: it leaves a file behind if it ever runs."""
    Path(path).write_text("executed")
    return {}


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_unpickled_marker, (self.marker,))


class _Plain:
    pass


@pytest.mark.parametrize("payload", ["reduce", "object"])
def test_bin_with_pickled_objects_is_refused(payload: str, unet_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    folder.mkdir()
    shutil.copy(unet_dir / "config.json", folder)
    marker = tmp_path / "marker"
    sd = dict(_ref("unet").state_dict())
    sd["w"] = _Payload(marker) if payload == "reduce" else _Plain()
    torch.save(sd, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError) as exc:
        UNet2.from_pretrained(str(folder))
    _error(exc, CheckpointError, str(folder / "diffusion_pytorch_model.bin"), "refuses to unpickle")
    assert not marker.exists(), "the pickle's payload was executed"


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    a, b = _ref("unet", seed=0), _ref("unet", seed=1)
    b.save_pretrained(tmp_path, safe_serialization=False)
    a.save_pretrained(tmp_path)  # same config, different weights
    assert {p.name for p in tmp_path.iterdir()} >= {WEIGHTS, "diffusion_pytorch_model.bin"}
    _same_tensors(UNet2.from_pretrained(str(tmp_path)), a)


# ---------------------------------------------------------------------------------------- hub cache


@pytest.fixture(scope="module")
def decoder_repo(tmp_path_factory) -> Path:
    """A decoder repo in diffusers layout, with only the models this file needs (unet/, movq/)."""
    root = tmp_path_factory.mktemp("repo")
    _ref("unet").save_pretrained(root / "unet")
    _ref("movq").save_pretrained(root / "movq")
    index = {"_class_name": "KandinskyV22Pipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "movq": ["diffusers", "VQModel"]}  # fmt: skip
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch, decoder_repo: Path) -> Path:
    cache = tmp_path / "hf" / "hub"
    tiny.install_in_cache(cache, DECODER_ID, decoder_repo)
    tiny.diffusers_to_kandi_env(monkeypatch, cache)
    return cache


def test_hub_id_from_cache_offline(offline_cache: Path) -> None:
    unet = UNet2.from_pretrained(DECODER_ID, subfolder="unet")
    _same_tensors(unet, _ref("unet"))
    assert str(offline_cache) in str(resolve_component_dir(DECODER_ID, "unet"))
    _same_tensors(MoVQ.from_pretrained(DECODER_ID, subfolder="movq"), _ref("movq"))


def test_hub_id_missing_subfolder(offline_cache: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        Prior.from_pretrained(DECODER_ID, subfolder="prior")
    _error(exc, CheckpointError, DECODER_ID, "'prior'")


def test_hub_id_not_cached_offline(offline_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as exc:
        UNet2.from_pretrained("kandinsky-community/kandinsky-2-2-prior", subfolder="unet")
    msg = _error(
        exc, ModelNotFoundError, "kandinsky-community/kandinsky-2-2-prior", "not in the Hugging Face cache"
    )
    assert "download" in msg and "offline" in msg


def test_local_files_only_not_cached(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "empty" / "hub"
    tiny.diffusers_to_kandi_env(monkeypatch, cache)
    import huggingface_hub.constants as c

    monkeypatch.setattr(
        c, "HF_HUB_OFFLINE", False
    )  # online, but local_files_only: must not touch the network
    with pytest.raises(ModelNotFoundError) as exc:
        UNet2.from_pretrained(DECODER_ID, subfolder="unet", local_files_only=True)
    _error(exc, ModelNotFoundError, DECODER_ID, "not in the Hugging Face cache", "download")


@pytest.mark.parametrize(
    "name",
    ["not a model id", "a/b/c", "owner/", "/nonexistent/kandi/model", "./nope/unet", "~/no-such-kandi-dir"],
)
def test_bad_ids_and_paths(name: str, offline_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as exc:
        UNet2.from_pretrained(name)
    _error(exc, ModelNotFoundError, repr(name))


def test_error_classes_are_builtin_subclasses() -> None:
    # callers that catch ValueError / OSError (as for diffusers) keep working
    assert issubclass(CheckpointError, ValueError) and issubclass(ModelNotFoundError, OSError)


# ---------------------------------------------------------------------------------------- error paths


@pytest.fixture
def broken(unet_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny UNet folder, for breaking."""
    return _copy(unet_dir, tmp_path / "unet")


def _load_error(folder: Path, *parts: str) -> str:
    with pytest.raises(CheckpointError) as exc:
        UNet2.from_pretrained(str(folder))
    return _error(exc, CheckpointError, *parts)


def test_truncated_safetensors(broken: Path) -> None:
    f = broken / WEIGHTS
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _load_error(broken, str(f), "truncated or corrupt")


@pytest.mark.parametrize("size", [0, 5, 4096])
def test_random_bytes_safetensors(size: int, broken: Path) -> None:
    f = broken / WEIGHTS
    f.write_bytes(os.urandom(size))
    _load_error(broken, str(f), "not a readable safetensors file")


def test_random_bytes_bin(broken: Path) -> None:
    (broken / WEIGHTS).unlink()
    f = broken / "diffusion_pytorch_model.bin"
    f.write_bytes(os.urandom(4096))
    _load_error(broken, str(f), "could not be read as PyTorch weights")


def test_bin_holding_a_tensor_not_a_dict(broken: Path) -> None:
    (broken / WEIGHTS).unlink()
    f = broken / "diffusion_pytorch_model.bin"
    torch.save(torch.zeros(3), f)
    _load_error(broken, str(f), "expected a state dict")


def test_safetensors_with_non_tensor_values_is_impossible(broken: Path) -> None:
    # the format cannot hold objects; a header lying about sizes is caught as corrupt
    f = broken / WEIGHTS
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    _load_error(broken, str(f), "safetensors")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('"unet"', "holds a JSON str"),
        ("", "is not valid JSON"),
        ("\xff\xfe", "is not valid JSON"),
    ],  # fmt: skip
)
def test_bad_config_json(text: str, what: str, broken: Path) -> None:
    (broken / "config.json").write_bytes(text.encode("latin-1"))
    _load_error(broken, str(broken / "config.json"), what)


def test_missing_config_json(broken: Path) -> None:
    (broken / "config.json").unlink()
    _load_error(broken, "missing config file", str(broken / "config.json"))


def test_no_weights(broken: Path) -> None:
    (broken / WEIGHTS).unlink()
    (broken / "model.ckpt").write_bytes(b"x")  # a weights file kandi does not read
    _load_error(broken, f"no weights in {broken}", "diffusion_pytorch_model.safetensors")


def test_weights_do_not_fit_config(broken: Path) -> None:
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [32, 128]}))
    msg = _load_error(broken, str(broken / WEIGHTS), str(broken / "config.json"), "other shapes")
    assert "[64, 32, 3, 3]" in msg or "[128" in msg or "[64" in msg  # one concrete tensor shown


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / WEIGHTS))
    change(sd)
    save_file(sd, str(folder / WEIGHTS))


def test_missing_keys(broken: Path) -> None:
    _rewrite_weights(broken, lambda sd: sd.pop("conv_out.weight"))
    _load_error(broken, str(broken / WEIGHTS), "1 missing", "conv_out.weight")


def test_unexpected_keys(broken: Path) -> None:
    _rewrite_weights(
        broken, lambda sd: sd.update({"extra.weight": torch.zeros(2), "more.bias": torch.zeros(1)})
    )
    _load_error(broken, str(broken / WEIGHTS), "2 unexpected", "extra.weight", "more.bias")


def test_config_of_another_class(broken: Path) -> None:
    cfg = {"_class_name": "VQModel", **tiny.tiny_kwargs("tiny-k22-decoder", "movq")}
    (broken / "config.json").write_text(json.dumps(cfg))
    _load_error(broken, str(broken / "config.json"), "describes a VQModel, not a UNet2DConditionModel")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resnet_time_scale_shift", "default"),
        ("addition_embed_type", "text_time"),
        ("norm_num_groups", None),
        ("block_out_channels", "32,64"),
        ("norm_eps", None),
    ],  # fmt: skip
)
def test_unsupported_config_value(field: str, value: Any, broken: Path) -> None:
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, field: value}))
    _load_error(broken, str(broken / "config.json"), field)


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("movq", "in_channels", 3.5),
        ("movq", "norm_num_groups", None),
        ("movq", "block_out_channels", 32),
        ("prior", "num_layers", None),
        ("prior", "embedding_dim", "32"),
        ("prior", "num_attention_heads", [2]),
    ],  # fmt: skip
)
def test_wrongly_typed_config_value_other_models(kind: str, field: str, value: Any, tmp_path: Path) -> None:
    # MoVQ / prior configs do not type-check every field; the loader still gives one error naming the file
    _ref(kind).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(CheckpointError) as exc:
        OURS[kind].from_pretrained(str(tmp_path))
    _error(exc, CheckpointError, str(tmp_path / "config.json"))


def test_sharded_index_lists_a_missing_shard(tmp_path: Path) -> None:
    _ref("unet").save_pretrained(tmp_path, max_shard_size="50KB")
    shard = sorted(tmp_path.glob("*-of-*.safetensors"))[1]
    shard.unlink()
    _load_error(tmp_path, str(tmp_path), shard.name, "diffusion_pytorch_model.safetensors.index.json")


def test_sharded_index_without_weight_map(tmp_path: Path) -> None:
    _ref("unet").save_pretrained(tmp_path, max_shard_size="50KB")
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    _load_error(tmp_path, str(index), "weight_map")


def test_subfolder_missing_locally(unet_dir: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        UNet2.from_pretrained(str(unet_dir), subfolder="unet")
    _error(exc, CheckpointError, "'unet'")


# ---------------------------------------------------------------------------------------- pipelines


@pytest.fixture
def pipe_root(decoder_repo: Path, tmp_path: Path) -> Path:
    return _copy(decoder_repo, tmp_path / "pipe")


def _index(root: Path, index: Any) -> None:
    (root / "model_index.json").write_text(json.dumps(index))


def _load_all(root: Path) -> dict[str, Any]:
    index = read_model_index(root)
    names = [k for k in index if not k.startswith("_")]
    return load_components(root, index, names, {}, torch_dtype=None, variant=None)


def test_pipeline_components_load(pipe_root: Path) -> None:
    comps = _load_all(pipe_root)
    assert isinstance(comps["unet"], UNet2) and isinstance(comps["movq"], MoVQ)
    _same_tensors(comps["unet"], _ref("unet"))
    passed = object()
    index = read_model_index(pipe_root)
    out = load_components(pipe_root, index, ["unet"], {"unet": passed}, torch_dtype=None, variant=None)
    assert out["unet"] is passed  # passed components are used, not loaded


@pytest.mark.parametrize("text", ["{oops", "[]", ""])
def test_invalid_model_index(text: str, pipe_root: Path) -> None:
    (pipe_root / "model_index.json").write_text(text)
    with pytest.raises(CheckpointError) as exc:
        read_model_index(pipe_root)
    _error(exc, CheckpointError, str(pipe_root / "model_index.json"))


def test_missing_model_index(pipe_root: Path) -> None:
    (pipe_root / "model_index.json").unlink()
    with pytest.raises(CheckpointError) as exc:
        read_model_index(pipe_root)
    _error(exc, CheckpointError, "missing model_index file", str(pipe_root / "model_index.json"))


@pytest.mark.parametrize("class_name", [None, 3, ["KandinskyV22Pipeline"]])
def test_model_index_without_class_name(class_name: Any, pipe_root: Path) -> None:
    index = {"unet": ["diffusers", "UNet2DConditionModel"]}
    if class_name is not None:
        index["_class_name"] = class_name
    _index(pipe_root, index)
    with pytest.raises(CheckpointError) as exc:
        read_model_index(pipe_root)
    _error(exc, CheckpointError, str(pipe_root / "model_index.json"), "_class_name")


def test_model_index_lists_missing_folder(pipe_root: Path) -> None:
    shutil.rmtree(pipe_root / "movq")
    with pytest.raises(CheckpointError) as exc:
        _load_all(pipe_root)
    _error(exc, CheckpointError, str(pipe_root), "'movq'", "VQModel")


def test_model_index_missing_a_needed_component(pipe_root: Path) -> None:
    index = read_model_index(pipe_root)
    with pytest.raises(CheckpointError) as exc:
        load_components(pipe_root, index, ["scheduler"], {}, torch_dtype=None, variant=None)
    _error(exc, CheckpointError, str(pipe_root / "model_index.json"), "'scheduler'")


@pytest.mark.parametrize(
    "spec",
    [
        ["transformers", "AutoModel"],
        ["os", "system"],
        ["builtins", "eval"],
        ["diffusers", "StableDiffusionPipeline"],
        ["transformers", "PreTrainedModel"],
        ["torch", "load"],
    ],  # fmt: skip
)
def test_model_index_class_not_allowlisted(spec: list[str], pipe_root: Path) -> None:
    _index(pipe_root, {"_class_name": "KandinskyV22Pipeline", "movq": spec})
    with pytest.raises(CheckpointError) as exc:
        _load_all(pipe_root)
    _error(exc, CheckpointError, "'movq'", f"{spec[0]}.{spec[1]}", "does not support")


@pytest.mark.parametrize("spec", ["VQModel", ["diffusers"], ["diffusers", ["VQModel"]], [1, 2], {"a": 1}])
def test_model_index_malformed_entry(spec: Any, pipe_root: Path) -> None:
    _index(pipe_root, {"_class_name": "KandinskyV22Pipeline", "movq": spec})
    with pytest.raises(CheckpointError) as exc:
        _load_all(pipe_root)
    _error(exc, CheckpointError, str(pipe_root / "model_index.json"), "'movq'")


def test_transformers_class_that_does_not_exist(pipe_root: Path) -> None:
    _index(pipe_root, {"_class_name": "KandinskyV22Pipeline", "movq": ["transformers", "CLIPNoSuchModel"]})
    with pytest.raises(CheckpointError) as exc:
        _load_all(pipe_root)
    _error(exc, CheckpointError, "CLIPNoSuchModel")


# -------------------------------------------------------------------------------------- load speed

_INITS = ["uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
          "trunc_normal_", "zeros_", "ones_", "constant_", "orthogonal_"]  # fmt: skip


@pytest.mark.parametrize("kind", list(OURS))
def test_load_builds_on_meta_device(kind: str, tmp_path: Path, monkeypatch) -> None:
    """No random initialisation in real memory: built on the meta device, then the weights assigned."""
    _ref(kind).save_pretrained(tmp_path)
    real_devices: list[str] = []
    for name in _INITS:
        fn = getattr(torch.nn.init, name)

        def spy(tensor: torch.Tensor, *a: Any, _fn=fn, _name=name, **k: Any) -> torch.Tensor:
            if not tensor.is_meta:
                real_devices.append(f"{_name} on {tensor.device}")
            return _fn(tensor, *a, **k)

        monkeypatch.setattr(torch.nn.init, name, spy)
    # the spies do see real initialisation (sanity check of the patching)
    torch.nn.Linear(2, 2)
    assert real_devices
    real_devices.clear()

    ours = OURS[kind].from_pretrained(str(tmp_path))
    assert real_devices == []
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])


@pytest.mark.parametrize(
    "cls",
    ["UniPCMultistepScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverSinglestepScheduler"],
)
def test_a_saved_pipeline_with_another_scheduler_loads_it(cls: str, k22_repos, tmp_path: Path) -> None:
    import diffusers

    import kandi

    folder = shutil.copytree(k22_repos["decoder"], tmp_path / "decoder")
    pipe = diffusers.KandinskyV22Pipeline.from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)
    pipe.save_pretrained(folder)
    ours = kandi.KandinskyV22Pipeline.from_pretrained(folder)
    assert type(ours.scheduler) is getattr(kandi, cls)
    assert ours.scheduler.config["num_train_timesteps"] == pipe.scheduler.config["num_train_timesteps"]
