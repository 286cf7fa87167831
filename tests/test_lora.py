"""LoRA: files the tests write in each format, applied to tiny models, against weights merged here.

The reference is the base model with W + scale * alpha/r * up @ down added to each targeted layer by the
test itself; the attention-processor key names come from diffusers' own `attn_processors` of the same
tiny config (diffusers is the oracle for the file layout only).
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny import tiny_kwargs  # noqa: E402

from kandi import lora  # noqa: E402
from kandi.compat.kandinsky3 import Kandinsky3Pipeline  # noqa: E402
from kandi.compat.kandinsky22 import KandinskyV22CombinedPipeline  # noqa: E402
from kandi.models.prior import Prior  # noqa: E402
from kandi.models.unet2 import UNet2  # noqa: E402
from kandi.models.unet3 import UNet3  # noqa: E402

ATOL = 1e-5


def _jitter(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def unet2() -> UNet2:
    return _jitter(UNet2.from_config(tiny_kwargs("tiny-k22-decoder", "unet")))


@pytest.fixture(scope="module")
def prior() -> Prior:
    model = _jitter(Prior.from_config(tiny_kwargs("tiny-k22-prior", "prior")), 1)
    with torch.no_grad():
        model.clip_std.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def unet3() -> UNet3:
    return _jitter(UNet3.from_config(tiny_kwargs("tiny-k3", "unet")), 2)


def _run_unet2(m: UNet2) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    emb = torch.randn(2, m.config.encoder_hid_dim, generator=g)
    with torch.no_grad():
        return m(x, 10, added_cond_kwargs={"image_embeds": emb}).sample


def _run_prior(m: Prior) -> torch.Tensor:
    g = torch.Generator().manual_seed(6)
    e, n = m.config.embedding_dim, m.config.num_embeddings
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n // 2 :] = False
    with torch.no_grad():
        out = m(torch.randn(2, e, generator=g), 3, torch.randn(2, e, generator=g),
                torch.randn(2, n, e, generator=g), mask)  # fmt: skip
    return out.predicted_image_embedding


def _run_unet3(m: UNet3) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 5, m.config.encoder_hid_dim, generator=g)
    with torch.no_grad():
        return m(x, 10, text, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])).sample


def _pair(layer: torch.nn.Module, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = layer.weight
    if w.ndim == 4:
        return torch.randn(rank, *w.shape[1:], generator=g) * 0.3, torch.randn(
            w.shape[0], rank, 1, 1, generator=g
        ) * 0.3
    return torch.randn(rank, w.shape[1], generator=g) * 0.3, torch.randn(w.shape[0], rank, generator=g) * 0.3


def _merged(model: torch.nn.Module, pairs: dict[str, tuple], scale: float) -> torch.nn.Module:
    """The reference: a copy of `model` with W + scale * mult * up @ down on each layer."""
    ref = copy.deepcopy(model)
    layers = dict(ref.named_modules())
    with torch.no_grad():
        for path, (down, up, mult) in pairs.items():
            w = layers[path].weight
            if w.ndim == 4:
                w += scale * mult * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
            else:
                w += scale * mult * (up @ down)
    return ref


def _attn_proc_file(model: UNet2 | Prior, projs: tuple[str, ...], seed: int = 0, rank: int = 2):
    """The training examples' layout: `<processor name>.<proj>_lora.down/up.weight`, names from diffusers."""
    import diffusers

    cls = diffusers.UNet2DConditionModel if isinstance(model, UNet2) else diffusers.PriorTransformer
    names = _proc_names(model, cls)
    g = torch.Generator().manual_seed(seed)
    layers = dict(model.named_modules())
    sd, pairs = {}, {}
    for name in names:
        base = name.removesuffix(".processor")
        for proj in projs:
            path = f"{base}.{'to_out.0' if proj == 'to_out' else proj}"
            if path not in layers:
                continue
            down, up = _pair(layers[path], rank, g)
            sd[f"{name}.{proj}_lora.down.weight"] = down
            sd[f"{name}.{proj}_lora.up.weight"] = up
            pairs[path] = (down, up, 1.0)
    return sd, pairs


def _proc_names(model: torch.nn.Module, cls: type) -> list[str]:
    cfg = dict(model.config.to_diffusers())
    cfg.pop("_class_name", None)
    ref = cls.from_config(cfg)
    return list(ref.attn_processors)


def _peft_file(model: torch.nn.Module, paths: list[str], alpha: float | None, prefix: str = "", seed: int = 3,
               rank: int = 4):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    layers = dict(model.named_modules())
    sd, pairs = {}, {}
    for path in paths:
        down, up = _pair(layers[path], rank, g)
        sd[f"{prefix}{path}.lora_A.weight"] = down
        sd[f"{prefix}{path}.lora_B.weight"] = up
        if alpha is not None:
            sd[f"{prefix}{path}.alpha"] = torch.tensor(alpha)
        pairs[path] = (down, up, 1.0 if alpha is None else alpha / rank)
    return sd, pairs


DECODER_PROJS = ("to_q", "to_k", "to_v", "to_out", "add_k_proj", "add_v_proj")


def test_decoder_attn_procs_file_equals_merged_weights(unet2, tmp_path):
    sd, pairs = _attn_proc_file(unet2, DECODER_PROJS)
    assert any("add_k_proj_lora" in k for k in sd) and any(".mid_block." in f".{k}" for k in sd)
    save_file(sd, tmp_path / "pytorch_lora_weights.safetensors")
    model = copy.deepcopy(unet2)
    keys = set(model.state_dict())
    model.load_attn_procs(tmp_path)  # the folder, as the training script's output_dir
    assert set(model.state_dict()) == keys  # the LoRA tensors are not model weights
    torch.testing.assert_close(_run_unet2(model), _run_unet2(_merged(unet2, pairs, 1.0)), atol=ATOL, rtol=0)
    assert not torch.allclose(_run_unet2(model), _run_unet2(unet2), atol=1e-3)


def test_prior_attn_procs_bin_file_equals_merged_weights(prior, tmp_path):
    sd, pairs = _attn_proc_file(prior, ("to_q", "to_k", "to_v", "to_out"))
    torch.save(sd, tmp_path / "pytorch_lora_weights.bin")
    pipe = KandinskyV22CombinedPipeline(None, None, None, copy.deepcopy(prior), None, None, None, None, None)
    pipe.prior_prior.load_attn_procs(tmp_path, weight_name="pytorch_lora_weights.bin")
    ref = _run_prior(_merged(prior, pairs, 1.0))
    torch.testing.assert_close(_run_prior(pipe.prior_prior), ref, atol=ATOL, rtol=0)
    assert pipe.get_list_adapters() == {"prior_prior": ["default_0"]}


def test_k3_peft_file_with_alpha_and_prefix(unet3, tmp_path):
    paths = [
        n for n, m in unet3.named_modules() if n.endswith(("attention.to_q", "attention.to_v", "to_out.0"))
    ]
    paths.append("down_blocks.1.attentions.1.feed_forward.0")  # a 1x1 conv
    sd, pairs = _peft_file(unet3, paths, alpha=8.0, prefix="unet.")
    save_file(sd, tmp_path / "style.safetensors")
    pipe = Kandinsky3Pipeline(None, None, copy.deepcopy(unet3), None, None)
    pipe.load_lora_weights(tmp_path / "style.safetensors", adapter_name="style")
    pipe.set_adapters(["style"], [0.7])
    ref = _run_unet3(_merged(unet3, pairs, 0.7))
    torch.testing.assert_close(_run_unet3(pipe.unet), ref, atol=ATOL, rtol=0)
    assert pipe.get_active_adapters() == ["style"]


def test_peft_alpha_from_adapter_config(unet3, tmp_path):
    paths = ["up_blocks.0.attentions.1.attention.to_k"]
    sd, pairs = _peft_file(unet3, paths, alpha=None, rank=4)
    save_file(sd, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2}))
    model = copy.deepcopy(unet3)
    model.load_attn_procs(tmp_path)
    pairs = {k: (d, u, 0.5) for k, (d, u, _) in pairs.items()}  # alpha 2 / rank 4
    torch.testing.assert_close(_run_unet3(model), _run_unet3(_merged(unet3, pairs, 1.0)), atol=ATOL, rtol=0)


def test_fuse_then_unfuse_restores_the_exact_weights(unet2, tmp_path):
    sd, pairs = _attn_proc_file(unet2, DECODER_PROJS, seed=4)
    save_file(sd, tmp_path / "a.safetensors")
    pipe = KandinskyV22CombinedPipeline(copy.deepcopy(unet2), None, None, None, None, None, None, None, None)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(tmp_path / "a.safetensors", adapter_name="a")
    runtime = _run_unet2(pipe.unet)
    pipe.fuse_lora(lora_scale=0.5)
    ref = _merged(unet2, pairs, 0.5)
    for name, w in ref.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[name], w, atol=1e-6, rtol=0)
    torch.testing.assert_close(_run_unet2(pipe.unet), _run_unet2(ref), atol=ATOL, rtol=0)
    pipe.unfuse_lora()
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_run_unet2(pipe.unet), runtime)  # the adapter applies at run time again
    pipe.unload_lora_weights()
    assert torch.equal(_run_unet2(pipe.unet), _run_unet2(unet2))
    assert not list(pipe.unet.buffers())  # no LoRA buffers left behind


def test_fuse_then_unload_keeps_the_fused_weights(unet2, tmp_path):
    sd, pairs = _attn_proc_file(unet2, ("to_q",), seed=8)
    model = copy.deepcopy(unet2)
    lora.load_into({"unet": model}, sd, adapter_name="x")
    lora.fuse(model)
    lora.unload(model)
    torch.testing.assert_close(_run_unet2(model), _run_unet2(_merged(unet2, pairs, 1.0)), atol=ATOL, rtol=0)


def test_set_adapters_weights_each_adapter(unet2):
    sd_a, pairs_a = _attn_proc_file(unet2, DECODER_PROJS, seed=10)
    sd_b, pairs_b = _attn_proc_file(unet2, ("to_q", "to_v"), seed=11)
    pipe = KandinskyV22CombinedPipeline(copy.deepcopy(unet2), None, None, None, None, None, None, None, None)
    pipe.load_lora_weights(sd_a, adapter_name="a")
    pipe.load_lora_weights(sd_b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.5, -1.2])
    ref = _merged(_merged(unet2, pairs_a, 0.5), pairs_b, -1.2)
    torch.testing.assert_close(_run_unet2(pipe.unet), _run_unet2(ref), atol=ATOL, rtol=0)
    pipe.set_adapters("b")
    torch.testing.assert_close(
        _run_unet2(pipe.unet), _run_unet2(_merged(unet2, pairs_b, 1.0)), atol=ATOL, rtol=0
    )
    pipe.delete_adapters("b")
    assert pipe.get_list_adapters() == {"unet": ["a"]}
    with pytest.raises(ValueError, match="no LoRA adapter named"):
        pipe.set_adapters(["b"])
    with pytest.raises(ValueError, match="already in use"):
        pipe.load_lora_weights(sd_a, adapter_name="a")


def test_one_file_for_unet_and_prior_by_prefix(unet2, prior):
    sd_u, pairs_u = _attn_proc_file(unet2, ("to_q", "add_v_proj"), seed=12)
    sd_p, pairs_p = _attn_proc_file(prior, ("to_k", "to_out"), seed=13)
    sd = {f"unet.{k}": v for k, v in sd_u.items()} | {f"prior.{k}": v for k, v in sd_p.items()}
    pipe = KandinskyV22CombinedPipeline(copy.deepcopy(unet2), None, None, copy.deepcopy(prior), None, None, None,
                                        None, None)  # fmt: skip
    pipe.load_lora_weights(sd, adapter_name="both")
    assert pipe.get_list_adapters() == {"unet": ["both"], "prior_prior": ["both"]}
    torch.testing.assert_close(
        _run_unet2(pipe.unet), _run_unet2(_merged(unet2, pairs_u, 1.0)), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(_run_prior(pipe.prior_prior), _run_prior(_merged(prior, pairs_p, 1.0)), atol=ATOL,
                               rtol=0)  # fmt: skip
    # unprefixed prior keys find the prior by fit
    pipe.unload_lora_weights()
    pipe.load_lora_weights(sd_p)
    assert pipe.get_list_adapters() == {"prior_prior": ["default_0"]}


def test_apply_loras_switches_files(unet2, prior, tmp_path):
    sd_a, pairs_a = _attn_proc_file(unet2, ("to_q",), seed=20)
    sd_b, pairs_b = _attn_proc_file(prior, ("to_v",), seed=21)
    save_file(sd_a, tmp_path / "a.safetensors")
    save_file(sd_b, tmp_path / "b.safetensors")
    models = SimpleNamespace(unet=copy.deepcopy(unet2), prior=copy.deepcopy(prior))
    lora.apply_loras(models, [(tmp_path / "a.safetensors", 0.8), (tmp_path / "b.safetensors", 1.5)])
    torch.testing.assert_close(
        _run_unet2(models.unet), _run_unet2(_merged(unet2, pairs_a, 0.8)), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        _run_prior(models.prior), _run_prior(_merged(prior, pairs_b, 1.5)), atol=ATOL, rtol=0
    )
    lora.apply_loras(models, [(tmp_path / "a.safetensors", 0.3)])
    torch.testing.assert_close(
        _run_unet2(models.unet), _run_unet2(_merged(unet2, pairs_a, 0.3)), atol=ATOL, rtol=0
    )
    assert torch.equal(_run_prior(models.prior), _run_prior(prior))
    assert lora.apply_loras(models, []) == []
    assert torch.equal(_run_unet2(models.unet), _run_unet2(unet2))
    assert len(lora.adapter_names(models.unet)) == 1  # kept loaded, inactive
    lora.apply_loras(models, [], keep_loaded=0)
    assert not lora.adapter_names(models.unet) and not lora.adapter_names(models.prior)


def test_apply_loras_reports_names_hashes_and_scales(unet2, tmp_path):
    sd, _ = _attn_proc_file(unet2, ("to_q",), seed=22)
    save_file(sd, tmp_path / "ink.safetensors")
    models = SimpleNamespace(unet=copy.deepcopy(unet2))
    info = lora.apply_loras(
        models, [(tmp_path / "ink.safetensors", 0.5), (tmp_path / "ink.safetensors", 0.25)]
    )
    short = lora.lora_short_hash(tmp_path / "ink.safetensors")
    assert info == [{"name": "ink", "path": str(tmp_path / "ink.safetensors"), "scale": 0.75,
                     "hash": lora.lora_hash(tmp_path / "ink.safetensors"), "short_hash": short}]  # fmt: skip
    assert lora.active_adapters(models.unet) == {f"ink-{short}": 0.75}


def test_lora_follows_dtype_moves(unet3):
    sd, pairs = _peft_file(unet3, ["down_blocks.1.attentions.0.attention.to_q"], alpha=None)
    model = copy.deepcopy(unet3)
    model.load_attn_procs(sd)
    model.to(torch.float64)
    assert model.down_blocks[1].attentions[0].attention.to_q.lora_down_0.dtype == torch.float64


# ------------------------------------------------------------------------------------------ bad files


def test_keys_for_missing_layers_are_named(unet2, tmp_path):
    sd, _ = _attn_proc_file(unet2, ("to_q",))
    sd["down_blocks.7.attentions.0.processor.to_q_lora.down.weight"] = torch.zeros(2, 32)
    sd["down_blocks.7.attentions.0.processor.to_q_lora.up.weight"] = torch.zeros(32, 2)
    save_file(sd, tmp_path / "bad.safetensors")
    model = copy.deepcopy(unet2)
    with pytest.raises(
        ValueError, match=r"bad.safetensors does not fit this Kandinsky 2.x UNet.*down_blocks\.7"
    ):
        model.load_attn_procs(tmp_path / "bad.safetensors")
    assert not lora.adapter_names(model)  # nothing was attached


def test_wrong_shapes_are_named(unet3):
    sd = {"down_blocks.1.attentions.1.attention.to_q.lora_A.weight": torch.zeros(4, 999),
          "down_blocks.1.attentions.1.attention.to_q.lora_B.weight": torch.zeros(64, 4)}  # fmt: skip
    with pytest.raises(ValueError, match="does not fit this Kandinsky 3 UNet.*attentions.1.attention.to_q"):
        copy.deepcopy(unet3).load_attn_procs(sd)


def test_a_decoder_lora_does_not_fit_k3(unet2, unet3):
    sd, _ = _attn_proc_file(unet2, ("add_k_proj",))
    pipe = Kandinsky3Pipeline(None, None, copy.deepcopy(unet3), None, None)
    with pytest.raises(ValueError, match="does not fit this Kandinsky 3 UNet"):
        pipe.load_lora_weights(sd)


@pytest.mark.parametrize(
    ("sd", "match"),
    [
        ({"conv_in.weight": torch.zeros(1)}, "no LoRA weights: 'conv_in.weight'"),
        ({"a.to_q.lora_A.weight": torch.zeros(2, 3)}, "without its other half"),
        ({"a.to_q.lora_A.weight": torch.zeros(2, 3), "a.to_q.lora_B.weight": torch.zeros(3, 5)}, "low-rank"),
        ({"a.to_q.lora_magnitude_vector": torch.zeros(3)}, "DoRA"),
    ],
)
def test_malformed_files(unet2, sd, match):
    with pytest.raises(ValueError, match=match):
        copy.deepcopy(unet2).load_attn_procs(sd)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickles_and_unknown_files_are_refused(unet2, tmp_path):
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ValueError, match="cannot be read safely"):
        copy.deepcopy(unet2).load_attn_procs(tmp_path / "evil.bin")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="accepted: .safetensors"):
        lora.read_lora_file(tmp_path / "w.ckpt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        lora.read_lora_file(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="no LoRA file"):
        lora.resolve_lora_path(tmp_path)


def test_pipeline_without_unet_or_prior():
    pipe = Kandinsky3Pipeline(None, None, None, None, None)
    with pytest.raises(ValueError, match="no UNet or prior"):
        pipe.load_lora_weights({})


# ---------------------------------------------------------------------------- hashes, prompts, folders


def test_hash_is_a1111s_addnet_hash(tmp_path):
    t = {"a.lora_A.weight": torch.arange(6.0).reshape(2, 3), "a.lora_B.weight": torch.ones(3, 2)}
    save_file(t, tmp_path / "one.safetensors", metadata={"note": "x"})
    save_file(t, tmp_path / "two.safetensors", metadata={"note": "a much longer note"})
    raw = (tmp_path / "one.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert lora.lora_hash(tmp_path / "one.safetensors") == hashlib.sha256(raw[8 + n :]).hexdigest()
    assert lora.lora_hash(tmp_path / "two.safetensors") == lora.lora_hash(tmp_path / "one.safetensors")
    torch.save(t, tmp_path / "three.bin")
    assert (
        lora.lora_hash(tmp_path / "three.bin")
        == hashlib.sha256((tmp_path / "three.bin").read_bytes()).hexdigest()
    )
    assert len(lora.lora_short_hash(tmp_path / "one.safetensors")) == 12


def test_prompt_tags_hash_field_and_folder(tmp_path):
    prompt, found = lora.extract_prompt_loras("a cat <lora:ink_style:0.8>, red <lora:film>")
    assert prompt == "a cat , red" and found == [("ink_style", 0.8), ("film", 1.0)]
    with pytest.raises(ValueError, match="not a number"):
        lora.extract_prompt_loras("<lora:x:heavy>")
    field = lora.format_lora_hashes([("ink_style", "0123456789ab"), ("film", "ba9876543210")])
    assert field == "ink_style: 0123456789ab, film: ba9876543210"
    assert lora.parse_lora_hashes(field) == {"ink_style": "0123456789ab", "film": "ba9876543210"}
    (tmp_path / "sub").mkdir()
    save_file({"a.lora_A.weight": torch.zeros(1, 1)}, tmp_path / "sub" / "ink_style.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    assert [i["name"] for i in lora.list_loras(tmp_path)] == ["ink_style"]
    assert lora.find_lora("ink_style", tmp_path).name == "ink_style.safetensors"
    with pytest.raises(ValueError, match="there: ink_style"):
        lora.find_lora("film", tmp_path)


# ------------------------------------------------------------------------- whole requests (engine path)


def _merged_models(models, which: dict[str, dict[str, tuple]], scale: float):
    out = copy.copy(models)
    for name, pairs in which.items():
        setattr(out, name, _merged(getattr(models, name), pairs, scale))
    return out


def test_k22_request_with_apply_loras_equals_merged_models(k22_repos, tmp_path):
    from kandi.configs import GenerationOptions
    from kandi.pipelines import k22_tasks

    m = k22_tasks.K22Models.load(str(k22_repos["decoder"]), str(k22_repos["prior"]))
    sd_u, pairs_u = _attn_proc_file(m.unet, DECODER_PROJS, seed=30)
    sd_p, pairs_p = _attn_proc_file(m.prior, ("to_q", "to_k", "to_v", "to_out"), seed=31)
    save_file(sd_u, tmp_path / "decoder_lora.safetensors")
    save_file(sd_p, tmp_path / "prior_lora.safetensors")
    opts = GenerationOptions("a red fox", width=64, height=64, steps=3, prior_steps=2, seed=4)
    ref_models = _merged_models(m, {"unet": pairs_u, "prior": pairs_p}, 0.6)
    ref = [e for e in k22_tasks.text_to_image(ref_models, opts)][-1].images[0]
    base = [e for e in k22_tasks.text_to_image(m, opts)][-1].images[0]
    lora.apply_loras(
        m, [(tmp_path / "decoder_lora.safetensors", 0.6), (tmp_path / "prior_lora.safetensors", 0.6)]
    )
    out = [e for e in k22_tasks.text_to_image(m, opts)][-1].images[0]
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(ref, dtype=int))
    assert diff.max() <= 1  # float sums in another order may round one step the other way
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(base, dtype=int)).max() > 8


def test_k3_request_with_apply_loras_equals_merged_models(k3_repo, tmp_path):
    from kandi.configs import GenerationOptions
    from kandi.pipelines import k3_tasks

    m = k3_tasks.K3Models.load(str(k3_repo))
    paths = [n for n, mod in m.unet.named_modules() if n.endswith(("attention.to_k", "attention.to_q"))]
    sd, pairs = _peft_file(m.unet, paths, alpha=2.0, prefix="unet.", seed=32)
    save_file(sd, tmp_path / "k3_lora.safetensors")
    opts = GenerationOptions("a red fox", width=64, height=64, steps=3, seed=4)
    ref = [e for e in k3_tasks.text_to_image(_merged_models(m, {"unet": pairs}, 1.2), opts)][-1].images[0]
    base = [e for e in k3_tasks.text_to_image(m, opts)][-1].images[0]
    lora.apply_loras(m, [(tmp_path / "k3_lora.safetensors", 1.2)])
    out = [e for e in k3_tasks.text_to_image(m, opts)][-1].images[0]
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(ref, dtype=int)).max() <= 1
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(base, dtype=int)).max() > 8
