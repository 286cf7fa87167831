"""Kandinsky3Pipeline.encode_prompt returns diffusers' shapes: 128 padded tokens and their mask."""

from __future__ import annotations

import diffusers
import pytest
import torch

import kandi


@pytest.mark.parametrize("cut", [False, True])
def test_encode_prompt_equals_diffusers(k3_repo, cut):
    ours = kandi.Kandinsky3Pipeline.from_pretrained(k3_repo)
    ref = diffusers.Kandinsky3Pipeline.from_pretrained(k3_repo)
    kw = dict(prompt=["a red cat", "a very long prompt about a blue dog"], negative_prompt=["blurry", "ugly"],
              device="cpu", _cut_context=cut)  # fmt: skip
    got, want = ours.encode_prompt(**kw), ref.encode_prompt(**kw)
    if not cut:
        assert got[0].shape[:2] == (2, 128) and got[2].shape == (2, 128)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-5, atol=1e-5)


def test_padded_embeddings_from_encode_prompt_give_the_images_of_the_prompt(k3_repo):
    pipe = kandi.Kandinsky3Pipeline.from_pretrained(k3_repo)
    emb, neg, mask, nmask = pipe.encode_prompt("a red cat", negative_prompt="blurry", device="cpu")
    kw = dict(height=64, width=64, num_inference_steps=2, output_type="np")
    a = pipe(prompt="a red cat", negative_prompt="blurry", generator=torch.Generator().manual_seed(0), **kw)
    b = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, attention_mask=mask, negative_attention_mask=nmask,
             generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(b.images), torch.from_numpy(a.images), rtol=0, atol=1e-6)
