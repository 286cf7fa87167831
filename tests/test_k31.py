"""Kandinsky 3.1 (ai-forever's base, Flash and inpainting checkpoints): loading and equality with the
original code's outputs (tests/data/k31_golden.safetensors, written by bench/k31_golden.py)."""

from __future__ import annotations

from pathlib import Path

import k31_tiny as tiny
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kandi.errors import CheckpointError
from kandi.loading import k31 as L
from kandi.models.movq import MoVQ
from kandi.models.unet3 import UNet3


@pytest.fixture(scope="module")
def manifests() -> dict:
    return tiny.manifests()


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(tiny.GOLDEN))


@pytest.fixture(scope="module")
def root(tmp_path_factory, manifests) -> Path:
    return tiny.write_folder(tmp_path_factory.mktemp("k31"), manifests)


def close(a: torch.Tensor, b: torch.Tensor, scale: float = 1e-4) -> None:
    """Equal up to float reassociation (einsum vs SDPA): atol relative to the size of the values."""
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=scale * max(1.0, float(b.abs().max())))


def _meta(manifest: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in manifest.items()}


def test_golden_records_the_original_commit() -> None:
    with safe_open(str(tiny.GOLDEN), "pt") as f:
        assert f.metadata()["source"] == "ai-forever/Kandinsky-3@a4c9e92e4d9b2a57081b7e33a2e82373c99ddbfc"


@pytest.mark.parametrize("name", ["full_unet", "full_unet9"])
def test_full_size_unet_key_map_covers_every_key(manifests, name: str) -> None:
    sd = _meta(manifests[name])
    proj = _meta({"0.weight": [4096, 4096], "1.weight": [4096], "1.bias": [4096]})
    cfg = L.unet_config(sd, proj, name)
    assert cfg.block_out_channels == (384, 768, 1536, 3072) and cfg.layers_per_block == 3
    assert (cfg.in_channels, cfg.latent_channels) == ((9, 4) if name.endswith("9") else (4, 4))
    assert (cfg.time_embedding_dim, cfg.cross_attention_dim, cfg.encoder_hid_dim) == (1536, 4096, 4096)
    with torch.device("meta"):
        model = UNet3(cfg)
    converted = L.convert_unet(sd, proj)
    assert len(converted) == len(sd) + 3  # one-to-one: no two original keys land on one name
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v.shape) for k, v in converted.items()}
    L.assign_strict(model, converted, name, None)  # the strict check the loader runs


def test_full_size_movq_key_map_covers_every_key(manifests) -> None:
    sd = _meta(manifests["full_movq"])
    cfg = L.movq_config(sd, "movq")
    assert cfg.block_out_channels == (256, 512, 512, 1024) and cfg.layers_per_block == 2
    assert (
        cfg.down_block_types[-1] == "AttnDownEncoderBlock2D"
        and cfg.up_block_types[0] == "AttnUpDecoderBlock2D"
    )
    with torch.device("meta"):
        model = MoVQ(cfg)
    converted = L.convert_movq(sd)
    assert len(converted) == len(sd)
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if k != "quantize.embedding.weight"}
    assert ours == {k: list(v.shape) for k, v in converted.items()}


def test_full_size_matches_the_diffusers_layout_of_kandinsky3(manifests) -> None:
    """The same UNet and MoVQ as kandinsky-community/kandinsky-3 (its key manifests in tests/data/configs)."""
    import json

    folder = Path(__file__).parent / "data" / "configs" / "manifests"
    if not (folder / "k3.unet.shapes.json").is_file():
        pytest.skip("no diffusers-layout manifests in tests/data/configs")
    proj = _meta({"0.weight": [4096, 4096], "1.weight": [4096], "1.bias": [4096]})
    ours = {k: list(v.shape) for k, v in L.convert_unet(_meta(manifests["full_unet"]), proj).items()}
    assert ours == json.loads((folder / "k3.unet.shapes.json").read_text())


def test_loads_tiny_checkpoints_strictly(root) -> None:
    for variant, cin in (("base", 4), ("flash", 4), ("inpainting", 9)):
        unet, null = L.load_unet(root, variant)
        assert unet.config.in_channels == cin and unet.config.latent_channels == 4
        assert unet.config.block_out_channels == (64, 128, 128, 128) and null.shape == (32,)
        assert not any(p.is_meta for p in unet.parameters())
    movq = L.load_movq(root)
    assert movq.config.block_out_channels == (32, 64, 64, 128)


def test_strict_errors_name_the_file(root, tmp_path) -> None:
    bad = tmp_path / "bad"
    (bad / "weights" / "flan_ul2_encoder").mkdir(parents=True)
    ck = torch.load(root / L.VARIANTS["base"].unet_file, weights_only=True)
    ck["unet"]["extra.weight"] = torch.zeros(1)
    torch.save(ck, bad / L.VARIANTS["base"].unet_file)
    torch.save(
        torch.load(root / L.VARIANTS["base"].projection_file), bad / L.VARIANTS["base"].projection_file
    )
    with pytest.raises(CheckpointError, match=r"kandinsky3\.pt.*1 unexpected \(e\.g\. extra\.weight\)"):
        L.load_unet(bad, "base")
    del ck["unet"]["extra.weight"], ck["unet"]["in_layer.bias"]
    torch.save(ck, bad / L.VARIANTS["base"].unet_file)
    with pytest.raises(CheckpointError, match="1 missing .*conv_in.bias"):
        L.load_unet(bad, "base")
    with pytest.raises(CheckpointError, match="missing Kandinsky 3.1 file .*movq.pt"):
        L.load_movq(bad)
    with pytest.raises(
        ValueError, match="unknown Kandinsky 3.1 model 'turbo'; accepted: base, flash, inpainting"
    ):
        L.load_unet(root, "turbo")


def test_unet_equals_the_original(root, golden) -> None:
    for key, variant in (("unet", "base"), ("unet9", "inpainting")):
        unet, _ = L.load_unet(root, variant)
        with torch.no_grad():
            cond = unet.condition_projected(golden["unet_ctx"], golden["unet_mask"])
            out = unet.denoise(golden[f"{key}_x"], golden["unet_t"], cond)
        close(out, golden[f"{key}_out"])


def test_movq_equals_the_original(root, golden) -> None:
    movq = L.load_movq(root)
    with torch.no_grad():
        dec = movq.decode(golden["movq_z"], force_not_quantize=True).sample
        enc = movq.encode(golden["movq_image"]).latents
    close(dec, golden["movq_decoded"])
    close(enc, golden["movq_encoded"])


def test_needed_files_are_one_models() -> None:
    files = L.needed_files("flash")
    assert "weights/kandinsky3_flash.pt" in files and "weights/flan_ul2_encoder/projection_flash.pt" in files
    assert not any(f.endswith(("kandinsky3.pt", "inpainting.pt", "projection.pt")) for f in files)
    assert not np.any([f.endswith("*.pt") for f in files])  # no glob pulls the other projections in


# ------------------------------------------------------------------------------- samplers vs original


@pytest.fixture(scope="module")
def models(root):
    from kandi.pipelines.k31_tasks import K31Models

    return {v: K31Models.load(str(root), v) for v in ("base", "flash", "inpainting")}


def _image(x: torch.Tensor) -> torch.Tensor:
    from kandi.pipelines import k31

    return torch.from_numpy(np.asarray(k31.to_uint8_pil(x)[0]).copy())


def _images_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """uint8 images equal up to a few levels where the latents' float differences cross truncation steps."""
    d = (ours.int() - ref.int()).abs()
    assert d.max() <= 4 and d.float().mean() < 0.25


@pytest.mark.parametrize(
    "run,variant,seed,kwargs",
    [
        ("flash", "flash", 0, dict(steps=None, guidance_scale=None, negative=None)),
        ("base", "base", 1, dict(steps=6, guidance_scale=3.0, negative=None)),
        ("base_neg", "base", 2, dict(steps=2, guidance_scale=3.0, negative=tiny.NEGATIVE)),
    ],
)
def test_text_to_image_equals_the_original(models, golden, run, variant, seed, kwargs) -> None:
    from kandi.pipelines import k31_tasks as T

    m = models[variant]
    job = T.text_to_image_latents(m, tiny.PROMPT, kwargs["negative"], 1, 64, 64, kwargs["steps"],
                                  kwargs["guidance_scale"], torch.Generator().manual_seed(seed))  # fmt: skip
    states = list(_drain(job))
    latents = states[-1]
    close(latents, golden[f"{run}_latents"])
    _images_close(_image(T.decode(m, latents)), golden[f"{run}_image"])


def _drain(job):
    while True:
        try:
            next(job)
        except StopIteration as stop:
            yield stop.value
            return


def test_inpainting_equals_the_original(models, golden) -> None:
    from kandi.pipelines import k31_tasks as T

    m = models["inpainting"]
    image = PIL_image(golden["inpaint_input"].numpy())
    pixels, repaint = T.inpaint_inputs(image, golden["inpaint_mask"].numpy())
    job = T.inpaint_latents(
        m, pixels, repaint, tiny.PROMPT, None, 1, 4, None, torch.Generator().manual_seed(3)
    )
    latents = list(_drain(job))[-1]
    close(latents, golden["inpaint_latents"])
    _images_close(_image(T.decode(m, latents)), golden["inpaint_image"])


def PIL_image(a: np.ndarray):
    import PIL.Image

    return PIL.Image.fromarray(a)


# ---------------------------------------------------------------------------------------- API, registry


def test_auto_pipelines_pick_the_model(root, golden) -> None:
    import kandi

    flash = kandi.AutoPipelineForText2Image.from_pretrained(str(root), model="flash")
    assert type(flash).__name__ == "Kandinsky31Pipeline" and flash.model == "flash"
    out = flash(
        tiny.PROMPT, height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="latent"
    )
    close(out.images, golden["flash_latents"])
    assert kandi.AutoPipelineForText2Image.from_pretrained(str(root)).model == "base"
    inp = kandi.AutoPipelineForInpainting.from_pretrained(str(root))
    assert type(inp).__name__ == "Kandinsky31InpaintPipeline" and inp.unet.config.in_channels == 9
    with pytest.raises(ValueError, match="image2image takes model='base' or 'flash'"):
        kandi.AutoPipelineForImage2Image.from_pretrained(str(root), model="inpainting")
    i2i = kandi.AutoPipelineForImage2Image.from_pretrained(str(root), model="flash")
    im = i2i(tiny.PROMPT, image=PIL_image(golden["inpaint_input"].numpy()), strength=0.5,
             generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert im.size == (64, 64)


def test_inpaint_pipeline_pastes_back(models, golden) -> None:
    from kandi.compat.kandinsky31 import Kandinsky31InpaintPipeline

    m = models["inpainting"]
    pipe = Kandinsky31InpaintPipeline(
        m.tokenizer, m.text_encoder, m.unet, m.movq, m.null_embedding, "inpainting"
    )
    image, mask = golden["inpaint_input"].numpy(), golden["inpaint_mask"].numpy()
    out = pipe(tiny.PROMPT, image=PIL_image(image), mask_image=mask, num_inference_steps=4,
               generator=torch.Generator().manual_seed(3), output_type="pil").images[0]  # fmt: skip
    _images_close(torch.from_numpy(np.asarray(out).copy()), golden["inpaint_image"])
    kept = pipe(tiny.PROMPT, image=PIL_image(image), mask_image=mask, num_inference_steps=2, paste_back=True,
                generator=torch.Generator().manual_seed(3)).images[0]  # fmt: skip
    a = np.asarray(kept).astype(int)
    assert np.abs(a[mask == 0] - image[mask == 0]).max() <= 1  # uint8 -> [-1, 1] -> truncated uint8


def test_registry_names() -> None:
    from kandi.configs import resolve_model

    assert resolve_model("kandinsky-3.1").k31_model == "base"
    assert resolve_model("kandinsky-3.1-flash").default_steps == 4
    assert resolve_model("ai-forever/Kandinsky3.1").name == "kandinsky-3.1"


def test_base_sampler_has_no_nan_and_floors_the_stride(models) -> None:
    from kandi.pipelines import k31
    from kandi.pipelines import k31_tasks as T

    assert k31.base_timesteps(6) == [999, 832, 665, 498, 331, 164]
    with pytest.raises(ValueError, match="num_inference_steps"):
        k31.base_timesteps(0)
    for steps in (1, 3):
        job = T.text_to_image_latents(models["base"], tiny.PROMPT, None, 1, 64, 64, steps, 3.0,
                                      torch.Generator().manual_seed(0))  # fmt: skip
        assert torch.isfinite(list(_drain(job))[-1]).all()


def test_tokenizer_from_spiece_model_only(tmp_path) -> None:
    """The release's encoder folder has spiece.model and no tokenizer.json (needs sentencepiece)."""
    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "t.txt").write_text("\n".join(["a red fox in the snow", "a cat on a mat"] * 50))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "spiece"),
                                   vocab_size=20, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)  # fmt: skip
    (tmp_path / "spiece.vocab").unlink()
    tok = L.load_tokenizer(tmp_path)
    ids = tok("a red fox")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and len(ids) > 2


def test_tokenizer_folder_without_files_is_an_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="neither spiece.model nor tokenizer.json"):
        L.load_tokenizer(tmp_path)
