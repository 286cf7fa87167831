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
