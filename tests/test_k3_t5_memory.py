"""Kandinsky 3's T5 under model offload: on the device only while it encodes prompts that are not
cached, and back on the CPU before the UNet runs (tiny random repo; the CPU stands in for the GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kandi
from kandi.pipelines import k3
from kandi.pipelines.common import Placement

KW = {"height": 64, "width": 64, "num_inference_steps": 2, "output_type": "np"}
MODELS = ("text_encoder", "unet", "movq")


class Moves:
    """Logs ("in" | "out" | "fwd", model) for the pipeline's models; a move is "in" when it targets the
    placement's execution device object (with the CPU standing in, both moves go to the CPU)."""

    def __init__(self, models: dict[str, nn.Module], placement: Placement):
        self.models, self.placement = models, placement
        self.events: list[tuple[str, str]] = []

    def __enter__(self) -> Moves:
        names, orig, rec = {id(m): n for n, m in self.models.items()}, nn.Module.to, self
        self._orig = orig

        def to(module, *args, **kwargs):
            if id(module) in names:
                dev = kwargs.get("device", args[0] if args else None)
                rec.events.append(("in" if dev is rec.placement.device else "out", names[id(module)]))
            return orig(module, *args, **kwargs)

        nn.Module.to = to
        self._hooks = [
            m.register_forward_pre_hook(lambda *_, n=n: self.events.append(("fwd", n)))
            for n, m in self.models.items()
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        nn.Module.to = self._orig
        for h in self._hooks:
            h.remove()

    def of(self, name: str) -> list[str]:
        """The model's events; a move to where the model already is (a no-op) is left out."""
        out, where = [], "out"
        for e, n in self.events:
            if n == name and e != where:
                out.append(e)
                where = e if e != "fwd" else where
        return out


@pytest.fixture
def pipe(k3_repo):
    p = kandi.Kandinsky3Pipeline.from_pretrained(k3_repo)
    p.set_progress_bar_config(disable=True)
    return p


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def moves(pipe) -> Moves:
    return Moves({n: getattr(pipe, n) for n in MODELS}, pipe._placement)


def test_t5_leaves_the_device_once_the_prompt_is_encoded(pipe) -> None:
    pipe.enable_model_cpu_offload(device="cpu")
    with moves(pipe) as rec:
        out = pipe("a red fox", negative_prompt="blurry", **KW, generator=gen()).images
    t5 = [i for i, (_, n) in enumerate(rec.events) if n == "text_encoder"]
    assert rec.of("text_encoder") == ["in", "fwd", "fwd", "out"]  # prompt and negative: one round trip
    first_unet = rec.events.index(("in", "unet"))
    assert t5[-1] < first_unet  # parked before the UNet comes in, not by it
    assert pipe._placement._current is not pipe.text_encoder
    assert np.isfinite(out).all()


def test_a_cached_prompt_never_brings_the_t5_onto_the_device(pipe) -> None:
    pipe.enable_model_cpu_offload(device="cpu")
    first = pipe("a red fox", **KW, generator=gen()).images
    with moves(pipe) as rec:
        again = pipe("a red fox", **KW, generator=gen()).images
    assert rec.of("text_encoder") == []  # no move, no forward: the cache answered
    assert rec.of("unet")[0] == "in"
    np.testing.assert_array_equal(again, first)


def test_offloaded_images_equal_the_plain_ones(pipe) -> None:
    plain = pipe("a red fox", negative_prompt="blurry", **KW, generator=gen()).images
    pipe.prompt_cache.clear()
    pipe.enable_model_cpu_offload(device="cpu")
    offloaded = pipe("a red fox", negative_prompt="blurry", **KW, generator=gen()).images
    np.testing.assert_allclose(offloaded, plain, atol=1e-6, rtol=0)


def test_encode_prompt_alone_parks_the_t5(pipe) -> None:
    pipe.enable_model_cpu_offload(device="cpu")
    with moves(pipe) as rec:
        pipe.encode_prompt("a fox", negative_prompt="dull")
    assert rec.of("text_encoder") == ["in", "fwd", "fwd", "out"]
    # the path given prompt_embeds and a negative prompt encodes the negative only, then parks too
    embeds, _, mask, _ = pipe.encode_prompt("a fox", do_classifier_free_guidance=False)
    with moves(pipe) as rec:
        pipe(None, prompt_embeds=embeds, attention_mask=mask, negative_prompt="grey", **KW, generator=gen())
    assert rec.of("text_encoder") == ["in", "fwd", "out"]


def test_encode_text_core_parks_on_its_own_placement(pipe) -> None:
    # the road the CLI, server and batch runner take (pipelines.k3_tasks): the same contract
    placement = Placement()
    placement.model_offload([pipe.text_encoder, pipe.unet, pipe.movq], torch.device("cpu"))
    cache = k3.PromptCache()
    with Moves({"text_encoder": pipe.text_encoder}, placement) as rec:
        k3.encode_text(pipe.tokenizer, pipe.text_encoder, ["a fox"], None, 1, True, torch.device("cpu"),
                       torch.float32, cache, placement)  # fmt: skip
        k3.encode_text(pipe.tokenizer, pipe.text_encoder, ["a fox"], None, 1, True, torch.device("cpu"),
                       torch.float32, cache, placement)  # fmt: skip
    assert rec.of("text_encoder") == ["in", "fwd", "out"]
