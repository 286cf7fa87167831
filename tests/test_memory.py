"""Memory options with diffusers' API: offload hooks, attention slicing, half precision, device moves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kandi
from kandi.errors import KandiWarning

KW = {"prompt": "a fox", "height": 32, "width": 32, "num_inference_steps": 2, "prior_num_inference_steps": 2,
      "output_type": "np"}  # fmt: skip
NO_GPU = not torch.cuda.is_available()


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def combined(k22_repos) -> kandi.KandinskyV22CombinedPipeline:
    prior = kandi.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
    dec = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
    pipe = kandi.KandinskyV22CombinedPipeline(
        **dec.components, **{"prior_" + k: v for k, v in prior.components.items()}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(k22_repos):
    return combined(k22_repos)


class Recorder:
    """Logs the pipeline models' forwards and whole-model moves: "in" to the execution device, "out" to the CPU.

    With the CPU standing in for the accelerator both moves go to the CPU, so a move counts as "in" when
    it targets the placement's execution device object.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.models = {n: m for n, m in pipe.components.items() if isinstance(m, nn.Module)}
        self.events: list[tuple[str, str]] = []
        self._orig = nn.Module.to
        self._hooks = []

    def __enter__(self):
        names = {id(m): n for n, m in self.models.items()}
        rec = self

        def to(module, *args, **kwargs):
            if id(module) in names:
                dev = kwargs.get("device", args[0] if args else None)
                rec.events.append(("in" if dev is rec.pipe._placement.device else "out", names[id(module)]))
            return rec._orig(module, *args, **kwargs)

        nn.Module.to = to
        for name, m in self.models.items():
            self._hooks.append(
                m.register_forward_pre_hook(lambda mod, a, n=name: self.events.append(("fwd", n)))
            )
        return self

    def __exit__(self, *exc):
        nn.Module.to = self._orig
        for h in self._hooks:
            h.remove()


def test_model_offload_moves_each_model_before_use_and_back(pipe):
    ref = pipe(**KW, generator=gen()).images
    pipe.enable_model_cpu_offload(device="cpu")  # the CPU stands in for the accelerator
    with Recorder(pipe) as rec:
        out = pipe(**KW, generator=gen()).images
    np.testing.assert_array_equal(out, ref)
    ev = rec.events
    where: dict[str, str] = {}
    for kind, name in ev:
        if kind == "fwd":
            # a model runs only after it was moved in (prior_prior stays resident, as in diffusers)
            assert name == "prior_prior" or where.get(name) == "in", (name, ev)
        else:
            if kind == "in":  # moving one model in sends the others out first
                assert all(s == "out" for n, s in where.items() if n != name), (name, where)
            where[name] = kind
    assert "prior_prior" not in where
    assert all(s == "out" for s in where.values())  # nothing left on the accelerator after the call
    # the image encoder is not needed: the zero-image negative embedding was cached by the first call
    assert [n for k, n in ev if k == "in"] == ["prior_text_encoder", "unet", "movq"]


def test_model_offload_sequence_follows_execution(pipe):
    pipe.enable_model_cpu_offload(device="cpu")
    moved = []
    orig = pipe._placement.use

    def use(module):
        moved.append(next(n for n, m in pipe.components.items() if m is module))
        return orig(module)

    pipe._placement.use = use
    pipe(**KW, generator=gen())
    firsts = list(dict.fromkeys(moved))
    assert firsts == ["prior_text_encoder", "prior_prior", "prior_image_encoder", "unet", "movq"], firsts


def test_sequential_offload_streams_each_layer(pipe):
    ref = pipe(**KW, generator=gen()).images
    pipe.enable_sequential_cpu_offload(device="cpu")
    leaves = [
        m for m in pipe.unet.modules() if next(m.children(), None) is None and list(m.parameters(False))
    ]
    moved, ran = [], []
    orig = nn.Module.to

    def to(module, *a, **k):
        moved.append(id(module))
        return orig(module, *a, **k)

    hooks = [m.register_forward_hook(lambda m, a, o: ran.append(id(m))) for m in leaves]
    nn.Module.to = to
    try:
        out = pipe(**KW, generator=gen()).images
    finally:
        nn.Module.to = orig
        for h in hooks:
            h.remove()
    np.testing.assert_array_equal(out, ref)
    # every UNet layer that ran was moved in for its forward and out afterwards (two moves per call)
    for leaf in {i for i in ran}:
        assert moved.count(leaf) == 2 * ran.count(leaf)
    pipe.remove_all_hooks()
    assert pipe._placement.mode == "none"


@pytest.mark.skipif(not NO_GPU, reason="checks the machine-without-accelerator behaviour")
def test_offload_without_accelerator_warns_once_and_does_nothing(pipe):
    with pytest.warns(KandiWarning, match="accelerator"):
        pipe.enable_model_cpu_offload()
    with pytest.warns(KandiWarning, match="accelerator"):
        pipe.enable_sequential_cpu_offload()
    assert pipe._placement.mode == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.enable_model_cpu_offload()  # already warned: silent now
    assert pipe(**KW, generator=gen()).images.shape == (1, 32, 32, 3)


@pytest.mark.skipif(not NO_GPU, reason="checks the machine-without-accelerator behaviour")
def test_to_cuda_without_cuda_warns_and_stays(pipe):
    with pytest.warns(KandiWarning, match="CUDA is not available"):
        pipe.to("cuda")
    assert pipe.device.type == "cpu"
    pipe.to("cuda", torch.float32)  # the documented form, also harmless
    assert pipe.unet.dtype == torch.float32


@pytest.mark.parametrize("size", ["auto", "max", 3])
def test_attention_slicing_same_output(pipe, size):
    ref = pipe(**KW, generator=gen()).images
    pipe.enable_attention_slicing(size)
    assert any(getattr(m, "slice_size", None) for m in pipe.unet.modules())
    # slices run other SDPA kernels: float rounding differs, amplified by the jittered tiny weights
    # (diffusers' own attention-slicing test allows 1e-3)
    np.testing.assert_allclose(pipe(**KW, generator=gen()).images, ref, atol=1e-3)
    pipe.disable_attention_slicing()
    assert not any(getattr(m, "slice_size", None) for m in pipe.unet.modules())


def test_half_precision_on_cpu_warns_and_runs(k22_repos):
    # float16 (bfloat16 on the CPU is refused or runs natively: tests/test_speed.py)
    prior = kandi.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"], torch_dtype=torch.float16)
    dec = kandi.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"], torch_dtype=torch.float16)
    for p in (prior, dec):
        p.set_progress_bar_config(disable=True)
    from kandi.errors import _warned

    _warned.clear()
    with pytest.warns(KandiWarning, match="slower"):
        out = prior("a fox", num_inference_steps=2, generator=gen())
    assert out.image_embeds.dtype == torch.float16
    img = dec(image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds, height=32, width=32,
              num_inference_steps=2, output_type="np", generator=gen()).images  # fmt: skip
    assert np.isfinite(img).all()


def test_xformers_is_a_harmless_no_op(pipe):
    pipe.enable_xformers_memory_efficient_attention()
    pipe.disable_xformers_memory_efficient_attention()
    assert pipe(**KW, generator=gen()).images.shape == (1, 32, 32, 3)
