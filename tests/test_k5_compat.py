"""kandi.compat Kandinsky5T2IPipeline against diffusers' on tiny components: every output type, callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kandi.compat.kandinsky5 import Kandinsky5T2IPipeline
from kandi.models.k5_dit import K5DiT
from kandi.models.vae_flux import AutoencoderKL
from kandi.schedulers.flow_match import FlowMatchEulerDiscreteScheduler

diffusers = pytest.importorskip("diffusers")
tiny_k5 = pytest.importorskip("tiny_k5")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    c = tiny_k5.t2i_components(tmp_path_factory.mktemp("k5c"))
    ref = diffusers.Kandinsky5T2IPipeline(**{**c, "tokenizer": tiny_k5.ProcessorShim(c["tokenizer"])})
    dit = K5DiT.from_config(dict(c["transformer"].config)).eval()
    dit.load_state_dict(c["transformer"].state_dict(), strict=True)
    vae = AutoencoderKL.from_config(dict(c["vae"].config)).eval()
    vae.load_state_dict(c["vae"].state_dict(), strict=True)
    sched = FlowMatchEulerDiscreteScheduler.from_config(c["scheduler"].config)
    ours = Kandinsky5T2IPipeline(
        dit, vae, c["text_encoder"], c["tokenizer"], c["text_encoder_2"], c["tokenizer_2"], sched
    )
    for p in (ref, ours):
        p.resolutions = [(64, 64)]
        p.set_progress_bar_config(disable=True)
    return ref, ours


def _args(**kw):
    base = dict(prompt="a red square", height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                max_sequence_length=8)  # fmt: skip
    return {**base, "generator": torch.Generator().manual_seed(0), **kw}


@pytest.mark.parametrize("output_type", ["pt", "np", "latent", "pil"])
def test_outputs_match_diffusers(pipes, output_type) -> None:
    ref, ours = pipes
    want = ref(**_args(output_type=output_type)).image
    got = ours(**_args(output_type=output_type)).image
    if output_type == "pil":
        assert got[0].size == want[0].size == (16, 16)
        diff = np.abs(np.asarray(got[0], dtype=int) - np.asarray(want[0], dtype=int))
        assert diff.max() <= 1
        return
    if output_type == "np":
        got, want = torch.from_numpy(got), torch.from_numpy(want)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_snaps_other_sizes_and_several_images(pipes) -> None:
    ref, ours = pipes
    want = ref(**_args(height=96, width=80, num_images_per_prompt=2, output_type="pt")).image
    got = ours(**_args(height=96, width=80, num_images_per_prompt=2, output_type="pt")).image
    assert got.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_callback_sees_and_replaces_latents(pipes) -> None:
    _, ours = pipes
    seen = []

    def cb(pipe, i, t, kw):
        seen.append((i, float(t), kw["latents"].shape))
        return {"latents": torch.zeros_like(kw["latents"])}

    out = ours(**_args(output_type="latent", callback_on_step_end=cb)).image
    assert [s[0] for s in seen] == [0, 1] and seen[0][2] == (1, 1, 8, 8, 16)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": None},
        {"prompt": 3},
        {"num_inference_steps": 0},
        {"output_type": "jpg"},
        {"height": 0},
        {"callback_on_step_end_tensor_inputs": ["nope"]},
        {"max_sequence_length": 2000},
        {"generator": [torch.Generator(), torch.Generator()]},
    ],  # fmt: skip
)
def test_bad_arguments(pipes, bad) -> None:
    with pytest.raises((ValueError, TypeError)):
        pipes[1](**{**_args(), **bad})


def test_from_pretrained_official_layout(tmp_path, pipes) -> None:
    """A diffusers-saved tiny repo with the official model_index.json (tokenizer: Qwen2VLProcessor) loads strictly."""
    from tiny_k5 import save_official_layout

    ref, _ = pipes
    save_official_layout(ref, tmp_path, "Kandinsky5T2IPipeline")
    from kandi import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(loaded).__name__ == "Kandinsky5T2IPipeline"
    assert type(loaded.transformer).__name__ == "K5DiT"
    loaded.resolutions = [(64, 64)]
    loaded.set_progress_bar_config(disable=True)
    want = ref(**_args(output_type="pt")).image
    torch.testing.assert_close(loaded(**_args(output_type="pt")).image, want, rtol=1e-4, atol=1e-4)


def test_task_generator_matches_pipeline(pipes) -> None:
    from kandi.configs import GenerationOptions, resolve_model
    from kandi.pipelines import k5_tasks
    from kandi.pipelines.common import Placement

    _, ours = pipes
    assert resolve_model("k5").family == "k5"
    m = k5_tasks.K5Models(**{k: getattr(ours, k) for k in k5_tasks.PARTS}, placement=Placement())
    m.resolutions, m.max_sequence_length = [(64, 64)], 8
    opts = GenerationOptions(prompt="a red square", negative_prompt="blurry", model="kandinsky-5", width=64,
                             height=64, steps=2, guidance_scale=4.0, seed=5, num_images=2)  # fmt: skip
    events = list(k5_tasks.text_to_image(m, opts))
    result = events[-1]
    assert [(e.step, e.image) for e in events[:-1]] == [(1, 0), (2, 0), (1, 1), (2, 1)]
    assert result.seeds == [5, 6]
    for img, seed in zip(result.images, result.seeds):
        want = ours(prompt="a red square", negative_prompt="blurry", height=64, width=64, num_inference_steps=2,
                    guidance_scale=4.0, max_sequence_length=8, generator=torch.Generator().manual_seed(seed)).image[0]  # fmt: skip
        assert np.array_equal(np.asarray(img), np.asarray(want))
    with pytest.raises(ValueError, match="flow-matching"):
        list(k5_tasks.text_to_image(m, GenerationOptions(prompt="x", scheduler="ddim")))


def test_bf16_from_pretrained_runs_with_a_float32_timestep_path(tmp_path, pipes, monkeypatch) -> None:
    """torch_dtype=bf16 keeps the DiT's timestep path float32 (diffusers' _keep_in_fp32_modules) and the
    pipeline runs on that mix; the image stays near the float32 one (bf16 rounding only)."""
    from tiny_k5 import save_official_layout

    from kandi import DiffusionPipeline, fast

    monkeypatch.setattr(fast, "cpu_flags", lambda: {"avx512_bf16"})  # not the real CPU's business here
    ref, ours = pipes
    save_official_layout(ref, tmp_path, "Kandinsky5T2IPipeline")
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path), torch_dtype=torch.bfloat16)
    assert pipe.transformer.time_embeddings.in_layer.weight.dtype == torch.float32
    assert pipe.transformer.visual_embeddings.in_layer.weight.dtype == torch.bfloat16
    pipe.resolutions = [(64, 64)]
    pipe.set_progress_bar_config(disable=True)
    got = pipe(**_args(output_type="pt")).image.float()
    want = ours(**_args(output_type="pt")).image
    assert torch.isfinite(got).all() and (got - want).abs().max() < 0.1
