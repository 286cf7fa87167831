"""Pieces every generation core shares: placement/offload, noise, guidance, latent geometry, output conversion."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from ..errors import warn_once
from ..schedulers.noise import randn

__all__ = ["Placement", "randn", "downscale_hw", "guide", "to_output", "numpy_to_pil", "has_accelerator"]


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def accelerator_device(gpu_id: int | None = None) -> torch.device | None:
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_id or 0)
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu", gpu_id or 0)
    return None


class Placement:
    """Where the models of one pipeline run. The single place for device and offload policy.

    mode "none": models stay where the user put them. "model": every model lives on the CPU and is moved
    to the execution device when it is next used (the one used before goes back), as diffusers'
    `enable_model_cpu_offload`. "sequential": each leaf layer is moved in just before its forward and
    out right after (`enable_sequential_cpu_offload`), the slowest and leanest option.
    """

    def __init__(self) -> None:
        self.mode = "none"
        self.device: torch.device | None = None
        self._current: nn.Module | None = None
        self._resident: set[int] = set()
        self._hooks: list[Any] = []

    def model_offload(
        self, modules: Iterable[nn.Module], device: torch.device, keep: Iterable[nn.Module] = ()
    ) -> None:
        self.reset()
        self.mode, self.device = "model", torch.device(device)
        self._resident = {id(m) for m in keep}
        for m in modules:
            m.to(self.device if id(m) in self._resident else "cpu")

    def sequential_offload(self, modules: Iterable[nn.Module], device: torch.device) -> None:
        self.reset()
        self.mode, self.device = "sequential", torch.device(device)
        for m in modules:
            m.to("cpu")
            self._hooks += _stream_layers(m, self.device)

    def reset(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self.mode, self._current, self._resident = [], "none", None, set()

    def use(self, module: nn.Module | None) -> None:
        """Make `module` ready to run on the execution device (moves only under model offload)."""
        if self.mode != "model" or module is None or id(module) in self._resident:
            return
        if self._current is not None and self._current is not module:
            self._current.to("cpu")
        module.to(self.device)
        self._current = module

    def park(self, module: nn.Module | None) -> None:
        """Under model offload, move `module` back to the CPU now: it will not run again in this call
        (Kandinsky 3's T5 once the prompt is encoded), so its memory is free for the next model."""
        if self.mode == "model" and module is not None and module is self._current:
            module.to("cpu")
            self._current = None

    def release(self) -> None:
        """After a call: under model offload, nothing stays on the accelerator."""
        if self.mode == "model" and self._current is not None:
            self._current.to("cpu")
            self._current = None

    def execution_device(self, modules: Iterable[Any]) -> torch.device:
        if self.mode != "none":
            return self.device
        for m in modules:
            if isinstance(m, nn.Module):
                p = next(m.parameters(), None)
                if p is not None and p.device.type != "meta":
                    return p.device
        return torch.device("cpu")


def _stream_layers(root: nn.Module, device: torch.device) -> list[Any]:
    """Hooks that move each leaf layer's weights to `device` for its forward only."""
    hooks = []
    for m in root.modules():
        own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        if not own:
            continue
        if next(m.children(), None) is not None:
            # parameters used directly by a container (positional embeddings, ...) are small: keep them there
            for p in own:
                p.data = p.data.to(device)
            continue
        hooks.append(m.register_forward_pre_hook(_move_in(device)))
        hooks.append(m.register_forward_hook(_move_out))
    return hooks


def _move_in(device: torch.device) -> Any:
    def hook(
        module: nn.Module, args: Any
    ) -> None:  # returns None: a pre-hook's value would replace the inputs
        module.to(device)

    return hook


def _move_out(module: nn.Module, args: Any, out: Any) -> None:
    module.to("cpu")


def offload_unavailable(what: str) -> None:
    warn_once(f"{what}: no GPU or other accelerator is available, so there is nothing to offload to; ignored")


def downscale_hw(height: int, width: int, scale_factor: int = 8) -> tuple[int, int]:
    """Latent size for a requested image size: rounds the image up to a multiple of scale_factor**2."""
    q = scale_factor**2
    return -(-height // q) * scale_factor, -(-width // q) * scale_factor


def guide(pred: torch.Tensor, scale: float, channels: int, keep_variance: bool) -> torch.Tensor:
    """Classifier-free guidance over a [uncond, cond] batch of (eps, variance) predictions.

    Only the eps half is guided; the conditional branch's variance is kept, because the UNet predicts
    the variance it was trained to predict for that branch.
    """
    eps, var = pred[:, :channels], pred[:, channels:]
    eps_u, eps_c = eps.chunk(2)
    eps = eps_u + scale * (eps_c - eps_u)
    if keep_variance and var.shape[1]:
        return torch.cat([eps, var.chunk(2)[1]], dim=1)
    return eps


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    if images.ndim == 3:
        images = images[None, ...]
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [PIL.Image.fromarray(im.squeeze(-1)) for im in images]
    return [PIL.Image.fromarray(im) for im in images]


def to_output(image: torch.Tensor, output_type: str, raw_pt: bool = True) -> Any:
    """Decoded images in [-1, 1] to the requested type.

    `raw_pt`: the text-to-image pipelines of diffusers return "pt" as the raw [-1, 1] decode, the
    img2img ones in [0, 1]; kandi keeps each pipeline's convention so outputs match.
    """
    if output_type == "pt" and raw_pt:
        return image
    image = (image * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return image
    array = image.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else numpy_to_pil(array)
