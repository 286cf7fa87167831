"""The diffusers-shaped shell around the pure step functions: config, loading, saving, outputs.

Config semantics follow diffusers' ConfigMixin where they are observable: keys another scheduler
class stored are kept (so DDIM.from_config(ddpm.config) keeps `set_alpha_to_one`), and keys that were
filled with defaults are listed in `_use_default_values` and not carried over to another class.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from .common import add_noise, as_timestep_tensor
from .schedules import alphas_cumprod

CONFIG_NAME = "scheduler_config.json"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers API and config format these classes mirror

# from_pretrained arguments that only matter to hub resolution (or to model loading) and that
# diffusers accepts for schedulers too; they must not be mistaken for config overrides.
_LOADING_KWARGS = {
    "revision",
    "cache_dir",
    "local_files_only",
    "token",
    "force_download",
    "proxies",
    "resume_download",
    "use_auth_token",
    "torch_dtype",
    "variant",
    "use_safetensors",
    "low_cpu_mem_usage",
}


class FrozenConfig(dict):
    """An immutable dict with attribute access, like diffusers' FrozenDict (and a dict, so diffusers'
    own `from_config` accepts it)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _frozen(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "scheduler config is immutable; build a new scheduler with from_config(config, **changes)"
        )

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _frozen
    clear = pop = popitem = setdefault = update = __ior__ = _frozen

    def __reduce__(self) -> tuple[type, tuple[dict]]:
        # dict subclasses pickle through __setitem__ by default, which is frozen
        return (type(self), (dict(self),))

    def __copy__(self) -> FrozenConfig:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenConfig:
        return type(self)(copy.deepcopy(dict(self), memo))


@dataclass
class SchedulerOutput:
    """What `step` returns; indexes like the tuple (prev_sample, pred_original_sample)."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None

    def to_tuple(self) -> tuple[Tensor, Tensor | None]:
        return (self.prev_sample, self.pred_original_sample)

    def __getitem__(self, key: int | slice | str) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __len__(self) -> int:
        return 2


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.ndarray, Tensor)):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


S = TypeVar("S", bound="SchedulerBase")


class SchedulerBase:
    """Config handling shared by the three schedulers; subclasses hold the tables and call the maths."""

    order = 1
    init_noise_sigma = 1.0

    @classmethod
    def _init_defaults(cls) -> dict[str, Any]:
        """The constructor's keyword arguments and defaults: the config keys, in signature order."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return {p.name: p.default for p in params}

    def _register(self, values: dict[str, Any]) -> None:
        """Store the config; keys still at their default are listed as diffusers does."""
        defaults = self._init_defaults()
        defaulted = [k for k, v in values.items() if _jsonable(v) == _jsonable(defaults[k])]
        self._set_config({k: _jsonable(v) for k, v in values.items()}, defaulted, {}, DIFFUSERS_VERSION)

    def _set_config(
        self, values: dict[str, Any], defaulted: list[str], hidden: dict[str, Any], version: str
    ) -> None:
        cfg = {**values, **hidden, "_class_name": type(self).__name__, "_diffusers_version": version}
        if defaulted:
            cfg["_use_default_values"] = sorted(defaulted)
        self._config = FrozenConfig(cfg)

    @property
    def config(self) -> FrozenConfig:
        return self._config

    @classmethod
    def from_config(cls: type[S], config: Mapping[str, Any] | None = None, **kwargs: Any) -> S:
        """Build from a config dict (ours, a diffusers FrozenDict, or plain), overriding with kwargs.

        Keys this class does not take are kept in its config for other classes, not used; keys the
        source filled with defaults (`_use_default_values`) are dropped so this class's defaults apply.
        """
        if isinstance(config, (str, os.PathLike)):
            raise ValueError(f"from_config takes a config dict, got the path {config!r}: use from_pretrained")
        src = dict(config or {})
        dropped = set(src.pop("_use_default_values", None) or ())
        src = {k: v for k, v in src.items() if k not in dropped}
        names = cls._init_defaults()
        unknown = sorted(set(kwargs) - set(names) - _LOADING_KWARGS)
        if unknown:
            warnings.warn(f"{cls.__name__}.from_config ignores unknown arguments {unknown}", stacklevel=2)
        init = {k: v for k, v in src.items() if k in names}
        init.update({k: v for k, v in kwargs.items() if k in names})
        sched = cls(**init)
        hidden = {k: v for k, v in src.items() if k not in names and not k.startswith("_")}
        values = {k: v for k, v in sched.config.items() if k in names}
        version = src.get("_diffusers_version", DIFFUSERS_VERSION)
        sched._set_config(values, [k for k in names if k not in init], hidden, version)
        return sched

    @classmethod
    def from_pretrained(
        cls: type[S],
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        **kwargs: Any,
    ) -> S:
        """Load `scheduler_config.json` from a local folder or a hub repo (then `subfolder` inside it)."""
        folder = _config_folder(pretrained_model_name_or_path, subfolder, kwargs)
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
        config = json.loads(path.read_text(encoding="utf-8"))
        overrides = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
        return cls.from_config(config, **overrides)

    def save_pretrained(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """Write `scheduler_config.json` in diffusers' format (other diffusers kwargs are accepted, unused)."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; upload the saved folder yourself")
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory {folder} is a file, expected a directory")
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {k: v for k, v in self.config.items() if k != "_use_default_values"}
        cfg["_diffusers_version"] = DIFFUSERS_VERSION
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def _set_tables(self, betas: Tensor) -> None:
        """The float32 CPU tables diffusers exposes under the same names."""
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alphas_cumprod(betas)
        self.one = torch.tensor(1.0)
        self._ac_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _reset_timesteps(self) -> None:
        """Before set_timesteps: the full training chain, as in diffusers."""
        self.timesteps = torch.arange(self.config.num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self._schedule: list[int] | None = None
        self._prev: dict[int, int] | None = None

    def _use_schedule(self, ts: list[int], device: str | torch.device | None) -> None:
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)
        # host copies, so step never reads the device tensor back
        self._schedule = ts
        self._prev = dict(zip(ts, ts[1:] + [-1]))

    def add_noise(
        self, original_samples: Tensor, noise: Tensor, timesteps: int | list[int] | Tensor | np.ndarray
    ) -> Tensor:
        """Noise clean samples to the given timesteps (one per batch row, or one for all)."""
        key = (original_samples.device, original_samples.dtype)
        if key not in self._ac_cache:  # move the table once per device and dtype, not once per call
            self._ac_cache[key] = self.alphas_cumprod.to(device=key[0], dtype=key[1])
        return add_noise(self._ac_cache[key], original_samples, noise, as_timestep_tensor(timesteps))

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """These schedulers feed the model the sample unscaled (kept for API parity)."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(dict(self.config), indent=2, sort_keys=True)}"


def _config_folder(name_or_path: str | os.PathLike, subfolder: str | None, kwargs: dict[str, Any]) -> Path:
    local = Path(name_or_path)
    if local.is_dir():
        return local / subfolder if subfolder else local
    # lazy: the hub layer is only needed for repo ids, and schedulers must import without it
    from kandi.loading.hub import resolve_component_dir

    return resolve_component_dir(
        str(name_or_path),
        subfolder,
        revision=kwargs.get("revision"),
        cache_dir=kwargs.get("cache_dir"),
        local_files_only=kwargs.get("local_files_only"),
        token=kwargs.get("token"),
    )
