"""Kandinsky 5 DiT (image path): kandi against diffusers 0.42.1 on diffusers' tiny test sizes."""

from __future__ import annotations

import pytest
import torch

from kandi.models.k5_dit import K5DiT, K5DiTConfig

diffusers = pytest.importorskip("diffusers")
from tiny_k5 import DIT_TINY  # noqa: E402

TINY = {**DIT_TINY, "attention_type": "regular"}


def _pair(**overrides):
    torch.manual_seed(0)
    ref = diffusers.Kandinsky5Transformer3DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # the modulations start at zero: give every layer random weights
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = K5DiT.from_config(dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("visual_cond", [False, True])
@pytest.mark.parametrize("hw", [(8, 8), (8, 12)])
def test_forward_matches_diffusers(visual_cond: bool, hw: tuple[int, int]) -> None:
    ref, ours = _pair(visual_cond=visual_cond, axes_dims=(2, 2, 4), model_dim=32)
    g = torch.Generator().manual_seed(1)
    c = 33 if visual_cond else 16
    x = torch.randn(2, 1, *hw, c, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    pooled = torch.randn(2, 16, generator=g)
    t = torch.tensor([999.0, 500.0])
    pos = [torch.arange(1), torch.arange(hw[0] // 2), torch.arange(hw[1] // 2)]
    kw = dict(visual_rope_pos=pos, text_rope_pos=torch.arange(7))
    with torch.no_grad():
        want = ref(x, text, t, pooled, **kw).sample
        got = ours(x, text, t, pooled, **kw).sample
    assert got.shape == (2, 1, *hw, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_matches_diffusers() -> None:
    ref, ours = _pair()
    ref.to(torch.bfloat16)  # what diffusers' from_pretrained(torch_dtype=bf16) builds (accelerate-free here)
    for name, m in ref.named_modules():
        if name.split(".")[-1] in ref._keep_in_fp32_modules:
            m.float()
    ours = ours.to_dtype(torch.bfloat16)
    assert ours.time_embeddings.in_layer.weight.dtype == torch.float32
    assert ours.visual_embeddings.in_layer.weight.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 8, 8, 16, generator=g).bfloat16()
    text, pooled = torch.randn(1, 5, 32, generator=g).bfloat16(), torch.randn(1, 16, generator=g).bfloat16()
    t = torch.tensor([700.0]).bfloat16()
    pos = [torch.arange(1), torch.arange(4), torch.arange(4)]
    with torch.no_grad():
        want = ref(x, text, t, pooled, visual_rope_pos=pos, text_rope_pos=torch.arange(5)).sample
        got = ours(x, text, t, pooled, visual_rope_pos=pos, text_rope_pos=torch.arange(5)).sample
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_refuses_sparse_attention() -> None:
    with pytest.raises(ValueError, match="attention_type"):
        K5DiTConfig.from_diffusers({**TINY, "attention_type": "nabla"})
    with pytest.raises(ValueError, match="divisible"):
        K5DiTConfig.from_diffusers({**TINY, "model_dim": 18})


def test_bf16_loading_keeps_the_timestep_path_float32_as_diffusers(tmp_path) -> None:
    """from_pretrained(torch_dtype=bf16) keeps diffusers' _keep_in_fp32_modules in float32, by diffusers'
    rule (a parameter whose dotted name has one of those module names). diffusers' own loader needs
    accelerate for it (it raises without), so the rule is the oracle here."""
    ref, _ = _pair()
    ref.save_pretrained(tmp_path)
    ours = K5DiT.from_pretrained(str(tmp_path), torch_dtype=torch.bfloat16)
    keep = set(type(ref)._keep_in_fp32_modules)
    want = {k: torch.float32 if keep & set(k.split(".")) else torch.bfloat16 for k in ref.state_dict()}
    got = {k: v.dtype for k, v in ours.state_dict().items() if k in want}
    assert got == want and torch.float32 in got.values() and torch.bfloat16 in got.values()
