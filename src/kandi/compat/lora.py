"""diffusers' LoRA methods on every kandi pipeline (`load_lora_weights`, `fuse_lora`, `set_adapters`, ...).

The work is done by `kandi.lora` on the pipeline's UNet and prior (`unet`, `prior` or `prior_prior`); a
combined pipeline's sub-pipelines share those modules, so they share the adapters too.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .. import lora

_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download")


class LoraLoaderMixin:
    """LoRA loading, scaling, fusing and unloading with diffusers' method names and arguments."""

    def _lora_targets(self) -> dict[str, nn.Module]:
        out = {}
        for role, names in (("unet", ("unet",)), ("prior", ("prior", "prior_prior"))):
            for n in names:
                m = getattr(self, n, None)
                if isinstance(m, nn.Module):
                    out[role] = m
                    break
        if not out:
            raise ValueError(f"{type(self).__name__} has no UNet or prior to load a LoRA into")
        return out

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: str | os.PathLike | dict,
                          adapter_name: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        """Load a LoRA (file, folder, hub id or state dict; `weight_name=` picks the file) as `adapter_name`.

        Keys prefixed `unet.` / `prior.` go to that model; unprefixed keys to the model they fit.
        """
        weight_name = kwargs.pop("weight_name", None)
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        kwargs.pop("low_cpu_mem_usage", None)
        if kwargs:
            raise TypeError(f"load_lora_weights got unexpected arguments {sorted(kwargs)}")
        lora.load_into(self._lora_targets(), pretrained_model_name_or_path_or_dict, weight_name, adapter_name,
                       **hub)  # fmt: skip

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None
                     ) -> None:  # fmt: skip
        """Apply only these adapters, each at its weight (the LoRA scale applied at run time)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights
        if isinstance(weights, int | float):
            weights = [float(weights)] * len(names)
        known = set(self._all_adapters())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"no LoRA adapter named {unknown}; loaded: {sorted(known) or 'none'}")
        for m in self._lora_targets().values():
            pos = [i for i, n in enumerate(names) if n in lora.adapter_names(m)]
            lora.set_adapters(
                m, [names[i] for i in pos], None if weights is None else [weights[i] for i in pos]
            )

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None) -> None:  # fmt: skip
        """Merge the active adapters into the weights (W + lora_scale * delta); unfuse_lora() restores W."""
        if adapter_names is not None:
            self.set_adapters(adapter_names)
        for role, m in self._lora_targets().items():
            if components is None or role in components or (role == "prior" and "prior_prior" in components):
                lora.fuse(m, lora_scale)

    def unfuse_lora(self, components: list[str] | None = None) -> None:
        """The weights exactly as before fuse_lora(); the adapters apply at run time again."""
        for m in self._lora_targets().values():
            lora.unfuse(m)

    def unload_lora_weights(self) -> None:
        """Remove every adapter (weights fused before stay fused, as in diffusers)."""
        for m in self._lora_targets().values():
            lora.unload(m)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for m in self._lora_targets().values():
            lora.unload(m, names)

    def get_active_adapters(self) -> list[str]:
        active: dict[str, None] = {}
        for m in self._lora_targets().values():
            active.update(dict.fromkeys(lora.active_adapters(m)))
        return list(active)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """{component name: its adapters}, e.g. {"unet": ["style"], "prior_prior": ["style"]}."""
        out = {}
        for role, m in self._lora_targets().items():
            names = lora.adapter_names(m)
            if names:
                attr = "prior_prior" if role == "prior" and getattr(self, "prior_prior", None) is m else role
                out[attr] = names
        return out

    def _all_adapters(self) -> list[str]:
        return list(dict.fromkeys(n for names in self.get_list_adapters().values() for n in names))
