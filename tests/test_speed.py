"""Issue 15's speed-ups, on by default: conv weights in their inputs' layout (diffusers' bits), MoVQ's
spatial norm at latent resolution and its upsampling convs folded (diffusers' maths, as accurate as its
fp32); torch.compile without recompiles, bf16 on the CPU only where it is native."""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")

import tiny  # noqa: E402  (tests/ is on sys.path through conftest)

from kandi.models.movq import MoVQ, PixelConv, SpatialNorm, UpsampleConv  # noqa: E402
from kandi.models.unet2 import UNet2  # noqa: E402


def _pair(cls: type, dcls: type, config: str, part: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ref = dcls(**tiny.tiny_kwargs(config, part)).eval()
    tiny._jitter(ref)
    ours = cls.from_config(ref.config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _unet_call(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return unet(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}).sample


def _weights(model: torch.nn.Module) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters() if p.dim() == 4}


@torch.no_grad()
def test_conv_weights_take_their_inputs_layout_once_and_keep_diffusers_bits() -> None:
    ours, ref = _pair(UNet2, diffusers.UNet2DConditionModel, "tiny-k22-decoder", "unet")
    g = torch.Generator().manual_seed(1)
    x, emb, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 32, generator=g), torch.tensor(500)
    assert torch.equal(_unet_call(ours, x, t, emb), _unet_call(ref, x, t, emb))
    cl = [n for n, p in ours.named_parameters() if p.dim() == 4 and not p.is_contiguous()]
    # the convs after the first attention get channels-last maps (its output is an NHWC view)
    assert cl and all(p.is_contiguous(memory_format=torch.channels_last) for n, p in ours.named_parameters()
                      if n in cl)  # fmt: skip
    assert "conv_in.weight" not in cl  # fed the NCHW latents: its weight stays NCHW
    before = _weights(ours)
    assert torch.equal(_unet_call(ours, x, t, emb), _unet_call(ref, x, t, emb))
    assert _weights(ours) == before  # settled: no weight moves (or reorders) on later calls
    # a state dict loaded with assign=True brings NCHW tensors back: the next call lays them out again
    ours.load_state_dict(ref.state_dict(), assign=True)
    assert torch.equal(_unet_call(ours, x, t, emb), _unet_call(ref, x, t, emb))
    assert {n: s for n, (_, s) in _weights(ours).items()} == {n: s for n, (_, s) in before.items()}
    assert ours.state_dict()[cl[0]].is_contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def test_the_first_call_lays_out_every_spatial_conv_in_one_pass_before_any_runs() -> None:
    ours, ref = _pair(UNet2, diffusers.UNet2DConditionModel, "tiny-k22-decoder", "unet")
    seen = {}

    def at_conv_in(module, args):  # runs after kandi's layout hook (registered first)
        seen.update({n: p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                     for n, p in ours.named_parameters() if p.dim() == 4 and p.shape[-1] > 1})  # fmt: skip

    hook = ours.conv_in.register_forward_pre_hook(at_conv_in)
    g = torch.Generator().manual_seed(1)
    x, emb, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 32, generator=g), torch.tensor(500)
    assert torch.equal(_unet_call(ours, x, t, emb), _unet_call(ref, x, t, emb))
    hook.remove()
    # before the first conv ran, every other spatial conv was already channels-last (one pass) ...
    assert not seen.pop("conv_in.weight") and seen and all(seen.values())
    # ... and after the call, the convs fed NCHW maps hold NCHW weights again (diffusers' bits above)
    assert ours.conv_in.weight.is_contiguous()
    nchw = [n for n, p in ours.named_parameters() if p.dim() == 4 and p.shape[-1] > 1 and p.is_contiguous()]
    assert "conv_in.weight" in nchw and len(nchw) < len(seen)


def test_the_loader_reads_spatial_conv_weights_channels_last_with_every_value_kept(tmp_path) -> None:
    from safetensors.torch import load_file

    from kandi.loading.checkpoints import read_weights
    from kandi.loading.hub import choose_weights
    from kandi.models.prior import Prior

    ours, ref = _pair(UNet2, diffusers.UNet2DConditionModel, "tiny-k22-decoder", "unet")
    ref.save_pretrained(tmp_path / "unet")
    loaded = UNet2.from_pretrained(tmp_path / "unet")
    file = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    got = loaded.state_dict()
    # every tensor, the moved ones and their neighbours in the file (whose pages were dropped), intact
    assert got.keys() == file.keys() and all(torch.equal(got[k], v) for k, v in file.items())
    spatial = [k for k, v in file.items() if v.dim() == 4 and v.shape[-1] * v.shape[-2] > 1]
    assert spatial and all(not got[k].is_contiguous() for k in spatial)
    assert all(got[k].is_contiguous(memory_format=torch.channels_last) for k in spatial)
    g = torch.Generator().manual_seed(1)
    x, emb, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 32, generator=g), torch.tensor(500)
    with torch.no_grad():  # the first call puts the NCHW-fed convs back: diffusers' bits
        assert torch.equal(_unet_call(loaded, x, t, emb), _unet_call(ref, x, t, emb))
    assert loaded.conv_in.weight.is_contiguous()
    # for a model whose convs do not follow their inputs (no channels_last_convs) the file's layout stays
    plain = read_weights(tmp_path / "unet", choose_weights(["diffusion_pytorch_model.safetensors"], None))
    assert all(plain[k].is_contiguous() for k in spatial) and not Prior.channels_last_convs


def test_loading_a_model_keeps_freed_memory_unless_the_environment_says_not(tmp_path, monkeypatch) -> None:
    from kandi import fast

    torch.manual_seed(0)
    MoVQ.from_config(tiny.tiny_kwargs("tiny-k22-decoder", "movq")).save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(fast, "keep_freed_memory", lambda: calls.append(1) or True)
    for env, want in (("0", []), ("off", []), ("1", [1]), ("", [1])):
        monkeypatch.setattr(fast, "_kept", [])  # a fresh process
        monkeypatch.setenv("KANDI_KEEP_FREED_MEMORY", env)
        calls.clear()
        MoVQ.from_pretrained(tmp_path)
        MoVQ.from_pretrained(tmp_path)  # once per process
        assert calls == want, env
        assert fast.keep_freed_memory_by_default() is bool(want)


@pytest.mark.parametrize("hw", [(8, 8), (16, 24), (10, 10), (4, 4)])
@torch.no_grad()
def test_spatial_norm_at_latent_size_equals_resizing_first(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    norm = SpatialNorm(64, 4)
    for p in norm.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x, zq = torch.randn(2, 64, *hw), torch.randn(2, 4, 4, 4)
    big = F.interpolate(zq, size=hw, mode="nearest")  # MoVQ's own order: resize, then the 1x1 convs
    want = norm.norm_layer(x) * norm.conv_y(big) + norm.conv_b(big)
    assert torch.equal(norm(x, zq), want)  # whole multiples broadcast; 10x10 resizes the conv outputs


@torch.no_grad()
def test_movq_decode_keeps_its_bits_past_the_first_call_and_is_as_accurate_as_diffusers() -> None:
    ours, ref = _pair(MoVQ, diffusers.VQModel, "tiny-k22-controlnet", "movq")  # 4 levels: 3 upsamplings
    z = 2 * torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(3))
    first = ours.decode(z, force_not_quantize=True).sample  # lays out the weights, then runs
    assert torch.equal(ours.decode(z, force_not_quantize=True).sample, first)
    want = ref.decode(z, force_not_quantize=True).sample
    exact = copy.deepcopy(ref).double().decode(z.double(), force_not_quantize=True).sample
    tiny.assert_as_accurate_as(first, want, exact)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("hw", [(5, 7), (1, 2), (8, 8)])
@torch.no_grad()
def test_upsample_conv_is_a_conv_of_the_nearest_upsampled_input(hw: tuple[int, int], layout) -> None:
    torch.manual_seed(0)
    conv = UpsampleConv(6, 5).double()
    x = torch.randn(2, 6, *hw, dtype=torch.float64).contiguous(memory_format=layout)
    want = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)
    got = conv(x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)  # the same sum: only its rounding differs
    assert got.is_contiguous(memory_format=layout) and got.stride() == want.stride()  # diffusers' layout
    half = conv.to(torch.bfloat16)(x.to(torch.bfloat16))  # weights folded in fp32, then rounded
    torch.testing.assert_close(half.double(), want, atol=6e-2, rtol=2e-2)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@torch.no_grad()
def test_pixel_conv_is_a_1x1_conv_returned_channels_last(layout) -> None:
    torch.manual_seed(0)
    conv = PixelConv(4, 32).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64).contiguous(memory_format=layout)
    got = conv(x)
    torch.testing.assert_close(got, F.conv2d(x, conv.weight, conv.bias), atol=1e-12, rtol=0)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_the_movq_fast_convs_are_module_calls_that_hooks_see() -> None:
    """The fast convs are module calls: hooks (offload moves weights in one) see them run."""
    ours, _ = _pair(MoVQ, diffusers.VQModel, "tiny-k22-controlnet", "movq")
    seen = []
    for m in ours.modules():
        if isinstance(m, UpsampleConv | PixelConv):
            m.register_forward_pre_hook(lambda m, a: seen.append(type(m).__name__))
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        ours.decode(z, force_not_quantize=True)
    assert seen.count("UpsampleConv") == 3 and seen.count("PixelConv") > 0


# ---------------------------------------------------------------------------------------------- compile
# backend="eager": dynamo's capture, guards and recompiles as with inductor, without inductor's minutes
# of code generation on a CPU (the graph runs the captured aten ops, so outputs keep their bits)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _fresh_dynamo() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # reset() keeps the counters of earlier tests


@torch.no_grad()
def test_compiled_unet_and_decoder_do_not_recompile_per_step_or_image() -> None:

    unet, _ = _pair(UNet2, diffusers.UNet2DConditionModel, "tiny-k22-decoder", "unet")
    movq, _ = _pair(MoVQ, diffusers.VQModel, "tiny-k22-decoder", "movq")
    g = torch.Generator().manual_seed(2)
    cond = unet.condition(torch.randn(2, 32, generator=g))
    ts = torch.tensor([999, 666, 333, 0])  # the pipelines' schedule: each step's timestep is a tensor
    images = [(torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)) for _ in range(2)]
    want = [[unet.denoise(x, t, cond) for t in ts] + [movq.decode(z, force_not_quantize=True).sample]
            for x, z in images]  # fmt: skip
    _fresh_dynamo()
    denoise = torch.compile(unet.denoise, fullgraph=True, backend="eager")
    decode = torch.compile(movq.decode, fullgraph=True, backend="eager")
    forward = torch.compile(unet, fullgraph=True, backend="eager")
    for (x, z), w in zip(images, want):
        got = [denoise(x, t, cond) for t in ts] + [decode(z, force_not_quantize=True).sample]
        assert all(torch.equal(a, b) for a, b in zip(got, w))
    assert _graphs() == 2  # one graph each for 4 steps x 2 images and 2 decodes: nothing recompiled
    emb = torch.randn(2, 32, generator=g)
    for t in ts:
        forward(images[0][0], t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb})
    assert _graphs() == 3


def test_enable_compile_compiles_the_unet_step_and_the_decoder(k22_repos, monkeypatch) -> None:

    import kandi

    pipe = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    pipe.set_progress_bar_config(disable=True)
    emb = torch.randn(1, 32, generator=torch.Generator().manual_seed(4))
    kw = {"image_embeds": emb, "negative_image_embeds": -emb, "height": 32, "width": 32, "output_type": "np"}
    want = [
        pipe(**kw, num_inference_steps=3, generator=torch.Generator().manual_seed(s)).images for s in (1, 2)
    ]
    _fresh_dynamo()
    with pytest.warns(kandi.errors.KandiWarning, match="first image pays for the compile"):
        pipe.enable_compile(backend="eager")
    pipe.enable_compile(backend="eager")  # twice: not compiled twice
    for s, w in zip((1, 2), want):
        got = pipe(**kw, num_inference_steps=3, generator=torch.Generator().manual_seed(s)).images
        assert np.array_equal(got, w)
    assert _graphs() == 2  # the UNet step and the decoder, once each for 3 steps x 2 images


def test_cli_compile_prints_its_cost_and_keeps_the_image(offline_hub, tmp_path, capsys, monkeypatch) -> None:
    from kandi import cli, fast

    args = ["generate", "a red cat", "-s", "7", "-W", "64", "-H", "64", "--steps", "2", "--prior-steps", "2"]
    assert cli.main([*args, "-o", str(tmp_path / "plain.png")]) == 0
    compile_models = fast.compile_models
    monkeypatch.setattr(fast, "compile_models", lambda models: compile_models(models, backend="eager"))
    capsys.readouterr()
    assert cli.main([*args, "-o", str(tmp_path / "compiled.png"), "--compile"]) == 0
    err = capsys.readouterr().err
    assert "compiling the UNet and the MoVQ decoder" in err and "the first image pays" in err
    pixels = [np.asarray(PIL.Image.open(tmp_path / f)) for f in ("plain.png", "compiled.png")]
    assert np.array_equal(*pixels)


# ------------------------------------------------------------------------------------------ bf16 on CPU


def test_native_bf16_reads_the_cpu_flags(monkeypatch) -> None:
    from kandi import fast

    for flags, native in (({"avx512f", "avx2"}, False), ({"avx512f", "avx512_bf16"}, True),
                          ({"amx_bf16", "amx_tile"}, True), (set(), False)):  # fmt: skip
        monkeypatch.setattr(fast, "cpu_flags", lambda flags=flags: flags)
        assert fast.native_bf16() is native


def test_bf16_is_refused_on_a_cpu_without_native_bf16(k22_repos, monkeypatch) -> None:
    import kandi
    from kandi import fast
    from kandi.engine.models import runtime
    from kandi.engine.requests import UsageError

    monkeypatch.setattr(fast, "cpu_flags", lambda: {"avx2", "avx512f"})
    with pytest.raises(UsageError, match=r"--dtype bf16: .*far slower than float32.*--dtype fp32"):
        runtime("cpu", "bfloat16")
    assert runtime("cpu", "float32")[1] == torch.float32
    pipe = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"], torch_dtype=torch.bfloat16)
    emb = torch.randn(1, 32)
    with pytest.raises(ValueError, match=r"no native bf16.*torch_dtype=torch.float32"):
        pipe(image_embeds=emb, negative_image_embeds=emb, height=32, width=32, num_inference_steps=1)


@torch.no_grad()
def test_bf16_where_native_runs_channels_last_close_to_fp32(k22_repos, monkeypatch) -> None:
    import kandi
    from kandi import fast
    from kandi.engine.models import runtime

    monkeypatch.setattr(fast, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert runtime("cpu", "bfloat16")[1] == torch.bfloat16
    pipe = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"], torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    emb = torch.randn(1, 32, generator=torch.Generator().manual_seed(5), dtype=torch.bfloat16)
    kw = {"image_embeds": emb, "negative_image_embeds": -emb, "height": 32, "width": 32, "output_type": "np"}
    image = pipe(**kw, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    w = pipe.unet.down_blocks[0].resnets[0].conv1.weight  # fed NCHW maps in fp32; channels-last in bf16
    assert w.dtype == torch.bfloat16 and w.is_contiguous(memory_format=torch.channels_last)
    # one UNet step in bf16 channels-last against fp32 (a tiny random pipeline's steps are chaotic: its
    # images drift apart in any precision, so the step is compared)
    ref = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"]).unet
    x, pair = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6)), torch.cat([emb, -emb])
    want = ref.denoise(x, torch.tensor(500), ref.condition(pair.float()))
    got = pipe.unet.denoise(x.bfloat16(), torch.tensor(500), pipe.unet.condition(pair)).float()
    assert (got - want).abs().max() <= 3e-2 * want.abs().max()  # bf16: an 8-bit mantissa


# ------------------------------------------------------------------------------------------------ noise


def test_noise_staged_for_an_accelerator_draws_the_same_bits(monkeypatch) -> None:
    from kandi.schedulers import noise

    assert noise._host_buffer((2, 3), None, torch.device("cpu"), torch.device("cpu")) is None
    shape, gens = (3, 4, 5, 5), lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    want = {
        "one": noise.randn(shape, torch.Generator().manual_seed(9), device="cpu"),
        "rows": noise.randn(shape, gens(), device="cpu"),
        "fp16": noise.randn(shape, torch.Generator().manual_seed(9), device="cpu", dtype=torch.float16),
    }
    staged = []  # the pinned buffer a CUDA target gets, here as a plain host tensor

    def buffer(shape, dtype, draw_on, out):
        staged.append(torch.empty(shape, dtype=dtype or torch.get_default_dtype()))
        return staged[-1]

    monkeypatch.setattr(noise, "_host_buffer", buffer)
    got = {
        "one": noise.randn(shape, torch.Generator().manual_seed(9), device="cpu"),
        "rows": noise.randn(shape, gens(), device="cpu"),
        "fp16": noise.randn(shape, torch.Generator().manual_seed(9), device="cpu", dtype=torch.float16),
    }
    assert len(staged) == 3 and all(torch.equal(got[k], want[k]) for k in want)
    assert got["fp16"].dtype == torch.float16


def test_keep_freed_memory_sets_glibc_malloc_where_it_is_glibc() -> None:
    import platform

    from kandi import fast

    kept = fast.keep_freed_memory()  # twice: setting the same values again is fine
    assert fast.keep_freed_memory() is kept
    assert kept is (platform.libc_ver()[0] == "glibc")


def test_the_engine_compiles_for_serve_and_batch(k22_repos, tmp_path, monkeypatch) -> None:
    """`kandi serve --compile` and `kandi batch --compile` reach the engine: each loaded UNet step and
    decoder is compiled once, and a batch job's images equal the uncompiled ones."""
    from kandi import cli, fast
    from kandi.engine import Engine

    compile_models, compiled = fast.compile_models, []

    def eager(models):
        compiled.append(type(models).__name__)
        return compile_models(models, backend="eager")

    monkeypatch.setattr(fast, "compile_models", eager)
    engine = Engine([str(k22_repos["decoder"])], prior=str(k22_repos["prior"]), compile=True)
    _, models = engine.models(engine.default, "decoder")
    assert models.unet._kandi_compiled and models.movq._kandi_compiled
    job = tmp_path / "job.txt"
    job.write_text("a red cat\n")
    tiny = ["-W", "64", "-H", "64", "--steps", "2", "--prior-steps", "2", "-s", "3", "-q"]
    where = ["-m", str(k22_repos["decoder"]), "--prior", str(k22_repos["prior"])]
    for out, more in (("plain", []), ("compiled", ["--compile"])):
        assert cli.main(["batch", str(job), "-o", str(tmp_path / out), *where, *tiny, *more]) == 0
    assert len(compiled) == 2  # the engine's decoder above, then the batch run's (not the plain run)
    pngs = [sorted((tmp_path / d).glob("*.png")) for d in ("plain", "compiled")]
    assert len(pngs[0]) == len(pngs[1]) == 1
    assert np.array_equal(*(np.asarray(PIL.Image.open(p[0])) for p in pngs))
