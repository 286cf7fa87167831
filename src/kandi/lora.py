"""LoRA (Hu et al. 2021, low-rank adapters) for the Kandinsky 2.2 decoder UNet and prior and the Kandinsky 3 UNet.

A LoRA adds `scale * up @ down` to a layer's weight W. kandi keeps W as it is and adds the product at run
time, y = W x + sum_a scale_a * up_a(down_a(x)), from a forward hook on each targeted Linear / Conv2d; the
LoRA tensors are non-persistent buffers of that layer, so they follow `.to()` and stay out of
`state_dict()`. `fuse` merges them into W (keeping a copy of W, so `unfuse` restores its exact bits).

Files read: the attention-processor layout the diffusers Kandinsky 2.2 training examples save
(`down_blocks.1.attentions.0.processor.to_q_lora.down.weight`, `add_k_proj_lora`, no alpha), diffusers'
`LoRACompatibleLinear` layout (`...to_q.lora.down.weight`), and PEFT / kohya-dotted keys
(`...to_q.lora_A.weight` / `lora_B`, or `lora_down` / `lora_up`, with an optional `...to_q.alpha`), with or
without a `unet.` / `prior.` / `base_model.model.` prefix. Our attribute names are diffusers' module
names, so a key's module path is the layer's path in kandi's model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "pytorch_lora_weights.bin",
                "adapter_model.bin")  # fmt: skip
LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# prefixes that name the model a key belongs to, by the kandi model it goes to
MODEL_PREFIXES = {"unet": ("unet.",), "prior": ("prior.", "prior_prior.", "transformer.")}
_OUTER_PREFIXES = ("base_model.model.",)

_ATTN_PROC = re.compile(
    r"^(?P<mod>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out|add_k_proj|add_v_proj)_lora\.(?P<part>down|up)\.weight$"
)
_COMPAT = re.compile(r"^(?P<mod>.+)\.lora\.(?P<part>down|up)\.weight$")
_PEFT = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_\-]+)?\.weight$")
_ALPHA = re.compile(r"^(?P<mod>.+)\.alpha$")
_DOWN_PARTS = ("down", "lora_A", "lora_down")


@dataclass
class LoraPair:
    """One layer's adapter: down (r, in[, k, k]), up (out, r[, 1, 1]) and the alpha of PEFT / kohya files."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def mult(self) -> float:
        """alpha / rank (1 without alpha, as the diffusers attention-processor files mean it)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


# ------------------------------------------------------------------------------------------ reading


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file: .safetensors, or a torch .bin/.pt/.pth read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"LoRA file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types on a damaged file
            raise ValueError(f"LoRA file {path} is not a readable safetensors file ({e})") from None
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles with code in them, or no torch file at all
            raise ValueError(f"LoRA file {path} cannot be read safely as a torch state dict ({e})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"LoRA file {path} does not hold a flat dict of tensors")
        return sd
    raise ValueError(f"LoRA file {path} has suffix {path.suffix!r}; accepted: {', '.join(LORA_SUFFIXES)}")


def resolve_lora_path(name_or_path: str | os.PathLike, weight_name: str | None = None, **hub: Any) -> Path:
    """A LoRA file from a file, a folder (its `weight_name`, or the training scripts' file name) or a hub id."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_file():
        return path
    if path.is_dir():
        names = [weight_name] if weight_name else list(WEIGHT_NAMES)
        for n in names:
            if (path / n).is_file():
                return path / n
        found = sorted(p.name for p in path.iterdir() if p.suffix in LORA_SUFFIXES)
        if not weight_name and len(found) == 1:
            return path / found[0]
        raise ValueError(
            f"no LoRA file {' or '.join(names)} in {path} (it has: {found or 'no weight files'})"
        )
    from .loading.hub import looks_like_repo_id

    if not looks_like_repo_id(str(name_or_path)):
        raise ValueError(f"LoRA {str(name_or_path)!r} is neither a file, a folder nor a Hugging Face repo id")
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    for n in [weight_name] if weight_name else list(WEIGHT_NAMES):
        try:
            return Path(hf_hub_download(str(name_or_path), n, **hub))
        except Exception as e:  # not in that repo under that name: try the next usual name
            last = e
    raise ValueError(f"no LoRA weights found in the Hub repo {name_or_path} ({last})")


def _peft_alpha(path: Path) -> float | None:
    """lora_alpha from a PEFT adapter_config.json beside the weights (PEFT keeps alpha there, not in them)."""
    cfg = path.with_name("adapter_config.json")
    if not cfg.is_file():
        return None
    try:
        alpha = json.loads(cfg.read_text()).get("lora_alpha")
    except (OSError, json.JSONDecodeError):
        return None
    return float(alpha) if isinstance(alpha, int | float) else None


def load_state_dict(source: str | os.PathLike | dict, weight_name: str | None = None,
                    **hub: Any) -> tuple[dict[str, torch.Tensor], float | None, str]:  # fmt: skip
    """(tensors, PEFT default alpha, a name for messages) from a path, folder, hub id or a ready dict."""
    if isinstance(source, dict):
        return dict(source), None, "the LoRA state dict"
    path = resolve_lora_path(source, weight_name, **hub)
    return read_lora_file(path), _peft_alpha(path), f"LoRA file {path.name}"


def split_by_model(sd: dict[str, torch.Tensor]) -> dict[str | None, dict[str, torch.Tensor]]:
    """The keys grouped by the model their prefix names ("unet", "prior"), None for unprefixed keys."""
    groups: dict[str | None, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        for outer in _OUTER_PREFIXES:
            key = key.removeprefix(outer)
        owner = None
        for model, prefixes in MODEL_PREFIXES.items():
            p = next((p for p in prefixes if key.startswith(p)), None)
            if p is not None:
                owner, key = model, key[len(p) :]
                break
        groups.setdefault(owner, {})[key] = t
    return groups


def parse_lora(sd: dict[str, torch.Tensor], default_alpha: float | None = None,
               what: str = "the LoRA file") -> dict[str, LoraPair]:  # fmt: skip
    """Layer path -> LoraPair from keys of any accepted style (prefixes already removed)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    bad = []
    for key, t in sd.items():
        if m := _ATTN_PROC.match(key):
            proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
            parts.setdefault(f"{m['mod']}.{proj}", {})[m["part"]] = t
        elif m := (_COMPAT.match(key) or _PEFT.match(key)):
            parts.setdefault(m["mod"], {})["down" if m["part"] in _DOWN_PARTS else "up"] = t
        elif m := _ALPHA.match(key):
            alphas[m["mod"]] = float(t.item())
        else:
            bad.append(key)
    if bad:
        hint = " (DoRA magnitudes are not supported)" if any("magnitude" in k for k in bad) else ""
        raise ValueError(
            f"{what} has keys that are no LoRA weights: {_first(bad)}{hint}; accepted: "
            "'<layer>.processor.to_q_lora.down.weight', '<layer>.lora_A.weight' / 'lora_B', "
            "'<layer>.lora_down.weight' / 'lora_up' with '<layer>.alpha', '<layer>.lora.down.weight'"
        )
    half = [k for k, p in parts.items() if len(p) != 2]
    if half:
        raise ValueError(f"{what} has a down or up matrix without its other half for layers {_first(half)}")
    pairs = {k: LoraPair(p["down"], p["up"], alphas.get(k, default_alpha)) for k, p in parts.items()}
    for k, p in pairs.items():
        if p.down.ndim not in (2, 4) or p.up.ndim != p.down.ndim or p.up.shape[1] != p.down.shape[0]:
            raise ValueError(
                f"{what}: layer {k} has down {tuple(p.down.shape)} and up {tuple(p.up.shape)}, "
                "which are not the two factors of one low-rank update"
            )
    return pairs


def _first(keys: Sequence[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def misfits(model: nn.Module, pairs: dict[str, LoraPair]) -> list[str]:
    """The layer paths of `pairs` that name no Linear/Conv2d of `model` or whose shapes do not fit it."""
    layers = dict(model.named_modules())
    out = []
    for k, p in pairs.items():
        layer = layers.get(k)
        if not isinstance(layer, nn.Linear | nn.Conv2d) or not _fits(layer, p):
            out.append(k)
    return out


def _fits(layer: nn.Module, p: LoraPair) -> bool:
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return p.down.ndim == 2 and p.down.shape[1] == w.shape[1] and p.up.shape[0] == w.shape[0]
    return (
        p.down.ndim == 4
        and layer.groups == 1
        and p.down.shape[1:] == w.shape[1:]
        and p.up.shape[0] == w.shape[0]
        and p.up.shape[2:] == (1, 1)
    )


def check_fit(model: nn.Module, pairs: dict[str, LoraPair], what: str, model_name: str) -> None:
    """ValueError naming the first keys of `what` that do not fit `model`."""
    if not pairs:
        raise ValueError(f"{what} holds no LoRA weights for the {model_name}")
    bad = misfits(model, pairs)
    if bad:
        raise ValueError(
            f"{what} does not fit this {model_name}: {len(bad)} of its {len(pairs)} layers name no layer "
            f"of it or have other shapes, first {_first(bad)}"
        )


# --------------------------------------------------------------------------------- applying to layers


@dataclass
class _Adapter:
    down: str  # buffer names on the layer
    up: str
    mult: float


class _LoraState:
    """What one layer holds: its adapters, the active ones with their scales, and W while fused."""

    def __init__(self, layer: nn.Module) -> None:
        self.adapters: dict[str, _Adapter] = {}
        self.active: dict[str, float] = {}
        self.original: torch.Tensor | None = None
        self.counter = 0
        # prepend: runs before an offload hook that moves the layer (and its LoRA buffers) away
        self.hook = layer.register_forward_hook(_add_delta, prepend=True)


def _state(layer: nn.Module) -> _LoraState | None:
    return layer.__dict__.get("_kandi_lora")


def _add_delta(layer: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    st = _state(layer)
    if st is None or st.original is not None or not st.active:
        return out
    x = args[0]
    for name, scale in st.active.items():
        a = st.adapters[name]
        down, up = getattr(layer, a.down), getattr(layer, a.up)
        if isinstance(layer, nn.Conv2d):
            h = F.conv2d(x, down, None, layer.stride, layer.padding, layer.dilation)
            out = out + F.conv2d(h, up) * (scale * a.mult)
        else:
            out = out + F.linear(F.linear(x, down), up) * (scale * a.mult)
    return out


def add_adapter(model: nn.Module, pairs: dict[str, LoraPair], name: str, scale: float = 1.0) -> None:
    """Attach `pairs` (checked to fit) to `model`'s layers as adapter `name`, active at `scale`."""
    layers = dict(model.named_modules())
    if any((st := _state(layers[k])) is not None and st.original is not None for k in pairs):
        raise ValueError("this model has a fused LoRA: call unfuse_lora() before loading another one")
    if name in adapter_names(model):
        raise ValueError(f"adapter name {name!r} is already in use; pass another adapter_name")
    for k, p in pairs.items():
        layer = layers[k]
        st = _state(layer)
        if st is None:
            st = _LoraState(layer)
            layer.__dict__["_kandi_lora"] = st
        w = layer.weight
        down, up = f"lora_down_{st.counter}", f"lora_up_{st.counter}"
        st.counter += 1
        layer.register_buffer(down, p.down.to(device=w.device, dtype=w.dtype), persistent=False)
        layer.register_buffer(up, p.up.to(device=w.device, dtype=w.dtype), persistent=False)
        st.adapters[name] = _Adapter(down, up, p.mult)
        st.active[name] = float(scale)


def _lora_layers(model: nn.Module) -> Iterable[tuple[nn.Module, _LoraState]]:
    for m in model.modules():
        st = _state(m)
        if st is not None:
            yield m, st


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter loaded into `model`, in load order."""
    names: dict[str, None] = {}
    for _, st in _lora_layers(model):
        names.update(dict.fromkeys(st.adapters))
    return list(names)


def active_adapters(model: nn.Module) -> dict[str, float]:
    """The adapters `model` applies and their scales."""
    out: dict[str, float] = {}
    for _, st in _lora_layers(model):
        out.update(st.active)
    return out


def is_fused(model: nn.Module) -> bool:
    return any(st.original is not None for _, st in _lora_layers(model))


def set_adapters(model: nn.Module, names: Sequence[str], weights: Sequence[float] | None = None) -> None:
    """Apply only the adapters `names`, each at its weight (1.0 without weights); unknown names: ValueError."""
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise ValueError(f"got {len(names)} adapter names but {len(weights)} weights")
    unknown = [n for n in names if n not in adapter_names(model)]
    if unknown:
        raise ValueError(f"no LoRA adapter named {_first(unknown)}; loaded: {adapter_names(model) or 'none'}")
    if is_fused(model):
        raise ValueError("the LoRA is fused into the weights: call unfuse_lora() before set_adapters()")
    chosen = dict(zip(names, (float(w) for w in weights)))
    for _, st in _lora_layers(model):
        st.active = {n: w for n, w in chosen.items() if n in st.adapters}


def _delta(layer: nn.Module, st: _LoraState, scale: float) -> torch.Tensor:
    """sum over active adapters of scale * weight_a * alpha_a/r_a * up_a @ down_a, in float32."""
    total = torch.zeros(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
    for name, w in st.active.items():
        a = st.adapters[name]
        down, up = getattr(layer, a.down).float(), getattr(layer, a.up).float()
        if down.ndim == 4:
            prod = torch.einsum("or,rikl->oikl", up.flatten(1), down)
        else:
            prod = up @ down
        total += prod * (scale * w * a.mult)
    return total


@torch.no_grad()
def fuse(model: nn.Module, lora_scale: float = 1.0) -> None:
    """Merge the active adapters into the weights, W <- W + lora_scale * delta; W is kept to unfuse."""
    for layer, st in _lora_layers(model):
        if st.original is None and st.active:
            st.original = layer.weight.detach().clone()
            layer.weight += _delta(layer, st, lora_scale).to(layer.weight.dtype)


@torch.no_grad()
def unfuse(model: nn.Module) -> None:
    """The weights as they were before `fuse`, bit for bit; the adapters apply at run time again."""
    for layer, st in _lora_layers(model):
        if st.original is not None:
            layer.weight.copy_(st.original)
            st.original = None


def unload(model: nn.Module, names: Sequence[str] | None = None) -> None:
    """Remove adapters (all without `names`). Fused weights stay as fused (diffusers' behaviour)."""
    for layer, st in list(_lora_layers(model)):
        for n in list(st.adapters) if names is None else [n for n in names if n in st.adapters]:
            a = st.adapters.pop(n)
            st.active.pop(n, None)
            delattr(layer, a.down)
            delattr(layer, a.up)
        if not st.adapters:
            st.hook.remove()
            del layer.__dict__["_kandi_lora"]


# -------------------------------------------------------------------------------- loading into models


def load_into(models: dict[str, nn.Module], source: str | os.PathLike | dict, weight_name: str | None = None,
              adapter_name: str | None = None, scale: float = 1.0, **hub: Any) -> dict[str, str]:  # fmt: skip
    """Load one LoRA into the named `models` ("unet" and/or "prior"); returns {model name: adapter name}.

    Keys with a `unet.` / `prior.` prefix go to that model; unprefixed keys go to the first model they fit
    (the UNet before the prior). Everything is checked before any layer is changed.
    """
    sd, alpha, what = load_state_dict(source, weight_name, **hub)
    plan: dict[str, dict[str, LoraPair]] = {}
    for owner, group in split_by_model(sd).items():
        pairs = parse_lora(group, alpha, what)
        if owner is not None and owner not in models and len(models) == 1:
            owner = next(iter(models))  # a model's own load_attn_procs: the prefix names that model
        if owner is not None:
            if owner not in models:
                raise ValueError(f"{what} has weights for the {owner}, which this pipeline does not have")
            check_fit(models[owner], pairs, what, _model_name(models[owner]))
        else:
            fits = [n for n, m in models.items() if pairs and not misfits(m, pairs)]
            if not fits:
                first = next(iter(models.values()))
                check_fit(first, pairs, what, _model_name(first))
            owner = fits[0]
        plan.setdefault(owner, {}).update(pairs)
    name = adapter_name or _default_name(models, plan)
    for owner, pairs in plan.items():
        add_adapter(models[owner], pairs, name, scale)
    return dict.fromkeys(plan, name)


def _model_name(model: nn.Module) -> str:
    return {"UNet2": "Kandinsky 2.x UNet", "UNet3": "Kandinsky 3 UNet", "Prior": "prior"}.get(
        type(model).__name__, type(model).__name__
    )


def _default_name(models: dict[str, nn.Module], plan: dict[str, Any]) -> str:
    used = {n for owner in plan for n in adapter_names(models[owner])}
    k = 0
    while f"default_{k}" in used:
        k += 1
    return f"default_{k}"


def lora_models(models: Any) -> dict[str, nn.Module]:
    """The models a LoRA can target in a K22Models / K3Models (or anything with `unet` / `prior`)."""
    out = {}
    for name in ("unet", "prior"):
        m = getattr(models, name, None)
        if isinstance(m, nn.Module):
            out[name] = m
    return out


def apply_loras(models: Any, loras: Sequence[tuple[str | os.PathLike, float]],
                keep_loaded: int = 8) -> list[dict[str, Any]]:  # fmt: skip
    """What the engine calls before each request: exactly the LoRA files `loras` [(path, scale), ...] apply.

    Files already loaded (same content hash) are reused; others are loaded. Adapters not asked for stay
    loaded but inactive, up to `keep_loaded` of them (the oldest are dropped beyond that). `loras=[]`
    turns LoRA off. A file is checked against the models before it changes any of them. Returns what the
    image metadata records, per file: {"name" (file stem), "path", "scale", "hash" (full sha256, as
    `lora_hash`), "short_hash" (A1111's 12 characters)}.
    """
    targets = lora_models(models)
    wanted: dict[str, tuple[Path, float]] = {}
    for path, scale in loras:
        p = Path(path)
        name = f"{p.stem}-{lora_short_hash(p)}"
        wanted[name] = (p, wanted.get(name, (p, 0.0))[1] + float(scale))
    for m in targets.values():
        if is_fused(m):
            unfuse(m)
    loaded = {n for m in targets.values() for n in adapter_names(m)}
    for name, (p, _) in wanted.items():
        if name not in loaded:
            load_into(targets, p, adapter_name=name)
    for m in targets.values():
        have = adapter_names(m)
        spare = [n for n in have if n not in wanted]
        unload(m, spare[: max(0, len(spare) - keep_loaded)])
        mine = [n for n in wanted if n in have]
        set_adapters(m, mine, [wanted[n][1] for n in mine])
    return [
        {
            "name": p.stem,
            "path": str(p),
            "scale": scale,
            "hash": lora_hash(p),
            "short_hash": lora_short_hash(p),
        }
        for p, scale in wanted.values()
    ]


# -------------------------------------------------------------------------------- hashes, prompts, files

_HASHES: dict[tuple[str, int, int], str] = {}
_PROMPT_LORA = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's LoRA hash (full sha256 hex): of the bytes after the header for .safetensors (the "addnet"
    hash, so editing the metadata does not change it), of the whole file otherwise."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            if p.suffix == ".safetensors":
                n = int.from_bytes(f.read(8), "little")
                f.seek(8 + n)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def lora_short_hash(path: str | os.PathLike) -> str:
    """The 12-character hash A1111 writes in `Lora hashes`."""
    return lora_hash(path)[:12]


def format_lora_hashes(items: Sequence[tuple[str, str]]) -> str:
    """The value of A1111's `Lora hashes` field: "name: hash, name: hash" (pngmeta.quote quotes it)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in items)


def parse_lora_hashes(text: str) -> dict[str, str]:
    """`Lora hashes` back into {name: short hash}."""
    out = {}
    for part in text.split(","):
        name, sep, h = part.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = h.strip()
    return out


def extract_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A1111 prompt syntax: `<lora:name:0.8>` tags out of the prompt, as (prompt, [(name, scale)])."""
    found = []
    for m in _PROMPT_LORA.finditer(prompt):
        text = (m[2] or "1").strip() or "1"
        try:
            scale = float(text)
        except ValueError:
            raise ValueError(f"LoRA tag {m[0]!r}: the weight {text!r} is not a number") from None
        found.append((m[1].strip(), scale))
    return _PROMPT_LORA.sub("", prompt).strip(), found


def list_loras(folder: str | os.PathLike) -> list[dict[str, str]]:
    """The LoRA files of a folder (and its subfolders), as A1111's /sdapi/v1/loras lists them."""
    root = Path(folder)
    if not root.is_dir():
        return []
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in LORA_SUFFIXES)
    return [{"name": p.stem, "alias": p.stem, "path": str(p)} for p in files]


def find_lora(name: str, folder: str | os.PathLike) -> Path:
    """The file of `<lora:name:...>` in the LoRA folder; ValueError listing what is there if none."""
    items = list_loras(folder)
    for item in items:
        if item["name"] == name:
            return Path(item["path"])
    names = ", ".join(i["name"] for i in items) or "none"
    raise ValueError(f"no LoRA named {name!r} in {folder} (there: {names})")
