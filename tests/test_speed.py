"""Issue 15's speed-ups: exact ones on by default (conv weights in their inputs' layout, MoVQ's spatial
norm at latent resolution), torch.compile without recompiles, bf16 on the CPU only where it is native."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")

import tiny  # noqa: E402  (tests/ is on sys.path through conftest)

from kandi.models.movq import MoVQ, SpatialNorm  # noqa: E402
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
def test_movq_decode_equals_diffusers_bit_for_bit() -> None:
    ours, ref = _pair(MoVQ, diffusers.VQModel, "tiny-k22-controlnet", "movq")  # 4 levels: 3 upsamplings
    z = 2 * torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # the first call lays out the weights, the second runs with them
        want = ref.decode(z, force_not_quantize=True).sample
        assert torch.equal(ours.decode(z, force_not_quantize=True).sample, want)
