"""Step callbacks as in diffusers: what a callback sets at the last step is what the pipeline returns."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import kandi

INPAINT = "kandinsky-community/kandinsky-2-2-decoder-inpaint"


def _zero_at_last_step(names):
    def callback(pipe, i, t, tensors):
        assert set(tensors) == set(names)
        if i == pipe.num_timesteps - 1:
            return {k: torch.zeros_like(v) for k, v in tensors.items()}
        return tensors

    return callback


def _inputs(guidance_scale: float) -> dict:
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:32] = 1
    return dict(image=image, mask_image=mask, height=64, width=64, num_inference_steps=2,
                guidance_scale=guidance_scale, output_type="latent")  # fmt: skip


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_inpaint_callback_zeroing_latents_and_mask_returns_zeros(offline_hub, guidance_scale):
    pipe = kandi.KandinskyV22InpaintPipeline.from_pretrained(INPAINT)
    names = ["latents", "mask_image"]
    out = pipe(image_embeds=torch.ones(1, 32), negative_image_embeds=torch.zeros(1, 32),
               callback_on_step_end=_zero_at_last_step(names), callback_on_step_end_tensor_inputs=names,
               generator=torch.Generator().manual_seed(0), **_inputs(guidance_scale)).images  # fmt: skip
    assert out.abs().sum() == 0


def test_inpaint_callback_zeroing_only_latents_keeps_the_known_region(offline_hub):
    # the mask is not replaced: the known region goes back over the callback's zeros (as diffusers)
    pipe = kandi.KandinskyV22InpaintPipeline.from_pretrained(INPAINT)
    out = pipe(image_embeds=torch.ones(1, 32), negative_image_embeds=torch.zeros(1, 32),
               callback_on_step_end=_zero_at_last_step(["latents"]), callback_on_step_end_tensor_inputs=["latents"],
               generator=torch.Generator().manual_seed(0), **_inputs(4.0)).images  # fmt: skip
    assert out.abs().sum() > 0


def test_inpaint_combined_callback_zeroing_latents_and_mask_returns_zeros(offline_hub):
    pipe = kandi.KandinskyV22InpaintCombinedPipeline.from_pretrained(INPAINT)
    names = ["latents", "mask_image"]
    out = pipe(prompt="a cat", prior_num_inference_steps=2, callback_on_step_end=_zero_at_last_step(names),
               callback_on_step_end_tensor_inputs=names, generator=torch.Generator().manual_seed(0),
               **_inputs(4.0)).images  # fmt: skip
    assert out.abs().sum() == 0


def test_inpaint_callback_that_changes_nothing_leaves_the_image_as_without_callback(offline_hub):
    pipe = kandi.KandinskyV22InpaintPipeline.from_pretrained(INPAINT)
    kw = dict(image_embeds=torch.ones(1, 32), negative_image_embeds=torch.zeros(1, 32), **_inputs(4.0))
    plain = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    names = ["latents", "mask_image", "masked_image"]
    seen = pipe(generator=torch.Generator().manual_seed(0), callback_on_step_end=lambda p, i, t, d: d,
                callback_on_step_end_tensor_inputs=names, **kw).images  # fmt: skip
    torch.testing.assert_close(seen, plain, rtol=0, atol=0)


# ------------------------------------------------- legacy callbacks count steps as diffusers does


def _order_two(cls: type) -> type:
    """A sampler class claiming order 2 (as Heun or KDPM2 do): diffusers' legacy callbacks then get
    step i // 2, and Kandinsky 3's loop calls them only every second timestep and at the last."""
    return type(f"{cls.__name__}Order2", (cls,), {"order": 2})


@pytest.mark.parametrize("family", ["k22", "k3"])
def test_legacy_callback_gets_diffusers_step_numbers_for_a_second_order_sampler(family, k22_repos, k3_repo):
    import diffusers

    from kandi.schedulers.euler import EulerDiscreteScheduler

    seen = {}
    for m, euler in ((diffusers, diffusers.EulerDiscreteScheduler), (kandi, EulerDiscreteScheduler)):
        if family == "k22":
            pipe = m.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
            dim = pipe.unet.config.encoder_hid_dim
            kw = dict(
                image_embeds=torch.ones(1, dim),
                negative_image_embeds=torch.zeros(1, dim),
                height=32,
                width=32,
            )
        else:
            pipe = m.Kandinsky3Pipeline.from_pretrained(k3_repo)
            kw = dict(prompt="a fox", height=64, width=64)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = _order_two(euler).from_config(pipe.scheduler.config)
        calls = seen.setdefault(m.__name__, [])
        pipe(**kw, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np",
             callback=lambda i, t, x, calls=calls: calls.append((i, int(t))), callback_steps=1)  # fmt: skip
    assert seen["kandi"] == seen["diffusers"]
    assert [i for i, _ in seen["kandi"]] != list(range(5))  # i // 2, not the timestep index


# ---------------------------------------------- Kandinsky 5: a callback may replace the prompt embeddings


def test_k5_callback_replacing_the_prompt_embeddings_is_used_as_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    tiny_k5 = pytest.importorskip("tiny_k5")
    from kandi.compat.kandinsky5 import Kandinsky5T2IPipeline
    from kandi.models.k5_dit import K5DiT
    from kandi.models.vae_flux import AutoencoderKL
    from kandi.schedulers.flow_match import FlowMatchEulerDiscreteScheduler

    c = tiny_k5.t2i_components(tmp_path)
    ref = diffusers.Kandinsky5T2IPipeline(**{**c, "tokenizer": tiny_k5.ProcessorShim(c["tokenizer"])})
    dit = K5DiT.from_config(dict(c["transformer"].config)).eval()
    dit.load_state_dict(c["transformer"].state_dict(), strict=True)
    vae = AutoencoderKL.from_config(dict(c["vae"].config)).eval()
    vae.load_state_dict(c["vae"].state_dict(), strict=True)
    sched = FlowMatchEulerDiscreteScheduler.from_config(c["scheduler"].config)
    ours = Kandinsky5T2IPipeline(dit, vae, c["text_encoder"], c["tokenizer"], c["text_encoder_2"], c["tokenizer_2"],
                                 sched)  # fmt: skip
    names = ["prompt_embeds_qwen", "negative_prompt_embeds_clip"]

    def swap(pipe, i, t, tensors):  # after the first step: other text for the rest of the run
        return {k: v * 0.5 if k == names[0] else v * 2 for k, v in tensors.items()} if i == 0 else {}

    outs = []
    for pipe in (ref, ours):
        pipe.resolutions = [(64, 64)]
        pipe.set_progress_bar_config(disable=True)
        outs.append([pipe(prompt="a red square", height=64, width=64, num_inference_steps=3,
                          guidance_scale=4.0, max_sequence_length=8, output_type="latent",
                          generator=torch.Generator().manual_seed(0), callback_on_step_end=cb,
                          callback_on_step_end_tensor_inputs=names).image
                     for cb in (None, swap)])  # fmt: skip
    (ref_plain, ref_swapped), (plain, swapped) = outs
    torch.testing.assert_close(swapped, ref_swapped, rtol=1e-4, atol=1e-4)
    assert (swapped - plain).abs().max() > 1e-3  # the replacement changed the image
