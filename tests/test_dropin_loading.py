"""from_pretrained as diffusers 0.42 does it: missing variants, dtype=, per-component dtypes, device_map, logs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import kandi
from kandi.errors import VariantNotFoundError

K22 = {
    "prior": "kandinsky-community/kandinsky-2-2-prior",
    "decoder": "kandinsky-community/kandinsky-2-2-decoder",
    "inpaint": "kandinsky-community/kandinsky-2-2-decoder-inpaint",
    "controlnet": "kandinsky-community/kandinsky-2-2-controlnet-depth",
}
K21 = {
    "prior": "kandinsky-community/kandinsky-2-1-prior",
    "decoder": "kandinsky-community/kandinsky-2-1",
    "inpaint": "kandinsky-community/kandinsky-2-1-inpaint",
}
K3 = "kandinsky-community/kandinsky-3"

# (class name, offline hub fixture, repo id): every pipeline class kandi exports, on a repo it loads
CASES = [
    ("KandinskyV22PriorPipeline", "offline_hub", K22["prior"]),
    ("KandinskyV22PriorEmb2EmbPipeline", "offline_hub", K22["prior"]),
    ("KandinskyV22Pipeline", "offline_hub", K22["decoder"]),
    ("KandinskyV22Img2ImgPipeline", "offline_hub", K22["decoder"]),
    ("KandinskyV22InpaintPipeline", "offline_hub", K22["inpaint"]),
    ("KandinskyV22ControlnetPipeline", "offline_hub", K22["controlnet"]),
    ("KandinskyV22ControlnetImg2ImgPipeline", "offline_hub", K22["controlnet"]),
    ("KandinskyV22CombinedPipeline", "offline_hub", K22["decoder"]),
    ("KandinskyV22Img2ImgCombinedPipeline", "offline_hub", K22["decoder"]),
    ("KandinskyV22InpaintCombinedPipeline", "offline_hub", K22["inpaint"]),
    ("KandinskyPriorPipeline", "k21_offline_hub", K21["prior"]),
    ("KandinskyPipeline", "k21_offline_hub", K21["decoder"]),
    ("KandinskyImg2ImgPipeline", "k21_offline_hub", K21["decoder"]),
    ("KandinskyInpaintPipeline", "k21_offline_hub", K21["inpaint"]),
    ("KandinskyCombinedPipeline", "k21_offline_hub", K21["decoder"]),
    ("KandinskyImg2ImgCombinedPipeline", "k21_offline_hub", K21["decoder"]),
    ("KandinskyInpaintCombinedPipeline", "k21_offline_hub", K21["inpaint"]),
    ("Kandinsky3Pipeline", "k3_offline_hub", K3),
    ("Kandinsky3Img2ImgPipeline", "k3_offline_hub", K3),
    ("AutoPipelineForText2Image", "offline_hub", K22["decoder"]),
    ("AutoPipelineForImage2Image", "k21_offline_hub", K21["decoder"]),
    ("AutoPipelineForInpainting", "offline_hub", K22["inpaint"]),
    ("AutoPipelineForText2Image", "k3_offline_hub", K3),
    ("DiffusionPipeline", "offline_hub", K22["inpaint"]),
]
IDS = [f"{c[0]}-{c[2].split('/')[1]}" for c in CASES]


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def _dtypes(m: torch.nn.Module) -> set[torch.dtype]:
    # transformers keeps T5's feed-forward output (`wo`) in float32 under any dtype, for diffusers too
    return {p.dtype for n, p in m.named_parameters() if ".wo." not in n}


@pytest.fixture(params=CASES, ids=IDS)
def case(request) -> tuple[type, str]:
    name, hub, repo = request.param
    request.getfixturevalue(hub)
    return getattr(kandi, name), repo


def test_missing_variant_is_an_error_naming_variant_and_components(case):
    cls, repo = case
    with pytest.raises(ValueError, match="variant='foo'") as e:
        cls.from_pretrained(repo, variant="foo")
    assert isinstance(e.value, VariantNotFoundError)
    assert e.value.variant == "foo" and e.value.components
    assert all(name in str(e.value) for name in e.value.components)


def test_missing_variant_falls_back_with_one_warning_when_asked(case, caplog):
    cls, repo = case
    with caplog.at_level(logging.WARNING, logger="kandi"):
        pipe = cls.from_pretrained(repo, variant="foo", variant_fallback=True)
    lines = [r.getMessage() for r in caplog.records if "has no foo weights" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines  # one per repo read (a combined pipeline reads its prior's too)
    assert all(m.dtype == torch.float32 for m in _modules(pipe).values())


def test_dtype_alias(case):
    cls, repo = case
    pipe = cls.from_pretrained(repo, dtype=torch.float16)
    assert set().union(*map(_dtypes, _modules(pipe).values())) == {torch.float16}


def test_dtype_and_torch_dtype_together_is_an_error(case):
    cls, repo = case
    with pytest.raises(ValueError, match="both dtype= and torch_dtype="):
        cls.from_pretrained(repo, dtype=torch.float16, torch_dtype=torch.float16)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_dtype_dict_names_components_and_a_default(case, key):
    cls, repo = case
    first = next(iter(_modules(cls.from_pretrained(repo))))
    pipe = cls.from_pretrained(repo, **{key: {first: torch.bfloat16, "default": torch.float16}})
    for name, m in _modules(pipe).items():
        want = torch.bfloat16 if name == first else torch.float16
        assert _dtypes(m) == {want}, name
    pipe = cls.from_pretrained(repo, **{key: {first: torch.float16}})  # no "default": float32
    for name, m in _modules(pipe).items():
        want = torch.float16 if name == first else torch.float32
        assert _dtypes(m) == {want}, name


def test_bad_dtype_dict_is_a_clear_error(case):
    cls, repo = case
    with pytest.raises(TypeError, match="unet"):
        cls.from_pretrained(repo, dtype={"unet": "half"})


def test_device_map_cpu_places_every_component(case):
    cls, repo = case
    pipe = cls.from_pretrained(repo, device_map="cpu")
    assert all(p.device.type == "cpu" for m in _modules(pipe).values() for p in m.parameters())


@pytest.mark.parametrize("bad", ["auto", "tpu", 0, {"unet": "cpu"}])
def test_unsupported_device_map_is_a_clear_error(case, bad):
    cls, repo = case
    with pytest.raises(ValueError, match="device_map=.* is not supported; accepted: 'balanced', 'cpu'"):
        cls.from_pretrained(repo, device_map=bad)


def test_loading_logs_each_component_at_info(case, caplog):
    cls, repo = case
    with caplog.at_level(logging.INFO, logger="kandi"):
        pipe = cls.from_pretrained(repo)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("kandi"))
    for name, comp in pipe.components.items():
        if comp is not None:
            assert name in text, name


def _with_zero_fp16_unet(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    unet = dst / "unet"
    sd = load_file(unet / "diffusion_pytorch_model.safetensors")
    save_file(
        {k: torch.zeros_like(v, dtype=torch.float16) for k, v in sd.items()},
        unet / "diffusion_pytorch_model.fp16.safetensors",
    )
    return dst


def test_a_variant_some_components_have_loads_plain_weights_for_the_others(k22_repos, tmp_path):
    # diffusers' rule: the variant is an error only when no component has it
    folder = _with_zero_fp16_unet(k22_repos["decoder"], tmp_path / "decoder")
    plain = kandi.KandinskyV22Pipeline.from_pretrained(folder)
    pipe = kandi.KandinskyV22Pipeline.from_pretrained(folder, variant="fp16")
    assert all(float(p.detach().abs().max()) == 0 for p in pipe.unet.parameters())
    for a, b in zip(pipe.movq.state_dict().values(), plain.movq.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_device_map_images_equal_a_pipeline_moved_with_to(offline_hub):
    kw = dict(prompt="", image_embeds=torch.ones(1, 32), negative_image_embeds=torch.zeros(1, 32))
    kw.update(height=64, width=64, num_inference_steps=2, output_type="np")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mapped = kandi.KandinskyV22Pipeline.from_pretrained(K22["decoder"], device_map=device)
    moved = kandi.KandinskyV22Pipeline.from_pretrained(K22["decoder"]).to(device)
    kw.pop("prompt")
    a = mapped(generator=torch.Generator().manual_seed(0), **kw).images
    b = moved(generator=torch.Generator().manual_seed(0), **kw).images
    assert (a == b).all()


def test_cli_facing_loaders_refuse_a_missing_variant_or_fall_back_with_a_warning(
    offline_hub, k3_repo, caplog
):
    from kandi.pipelines.k3_tasks import K3Models
    from kandi.pipelines.k22_tasks import K22Models

    with pytest.raises(VariantNotFoundError, match="variant='fp16'"):
        K22Models.load(K22["decoder"], K22["prior"], variant="fp16")
    with caplog.at_level(logging.WARNING, logger="kandi"):
        K22Models.load(K22["decoder"], K22["prior"], variant="fp16", variant_fallback=True)
    assert sum("has no fp16 weights" in r.getMessage() for r in caplog.records) == 2  # prior and decoder
    with pytest.raises(VariantNotFoundError, match="variant='bf16'"):
        K3Models.load(str(k3_repo), variant="bf16")
    assert (
        K3Models.load(str(k3_repo), variant="fp16").unet.dtype == torch.float32
    )  # fp16 files, float32 asked
