"""Find model folders: local paths, or Hugging Face Hub ids through huggingface_hub's cache.

Only the files a load needs are fetched: configs, tokenizer files, the model card, and for each
component one set of weights (safetensors before .bin; the requested variant such as `fp16` when the
repo has it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CheckpointError, ModelNotFoundError

WEIGHT_EXTS = (".safetensors", ".bin")
# Big files that no kandi load reads; never downloaded.
SKIP_EXTS = {".ckpt", ".pt", ".pth", ".onnx", ".onnx_data", ".msgpack", ".h5", ".pb", ".gguf", ".png", ".jpg",
             ".jpeg", ".webp", ".gif"}  # fmt: skip

_WEIGHT_RE = re.compile(
    r"^(?P<stem>[A-Za-z_]+)(?:\.(?P<v1>[A-Za-z0-9_]+))?(?P<shard>-\d{5}-of-\d{5})?"
    r"(?:\.(?P<v2>[A-Za-z0-9_]+))?(?P<ext>\.safetensors|\.bin)$"
)
_INDEX_RE = re.compile(
    r"^(?P<stem>[A-Za-z_]+)(?P<ext>\.safetensors|\.bin)\.index(?:\.(?P<v>[A-Za-z0-9_]+))?\.json$"
)
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class WeightSet:
    """One loadable set of weights inside a component folder."""

    ext: str  # ".safetensors" or ".bin"
    variant: str | None
    files: tuple[str, ...]  # weight files (shards in index order)
    index: str | None  # the shard index json, if sharded


def _classify(name: str) -> tuple[str, str | None, bool] | None:
    """(ext, variant, is_index) of a weights or index file name, None for anything else."""
    m = _INDEX_RE.match(name)
    if m:
        return m["ext"], m["v"], True
    m = _WEIGHT_RE.match(name)
    if m:
        return m["ext"], m["v1"] or m["v2"], False
    return None


def weight_sets(names: list[str]) -> list[WeightSet]:
    """Group the file names of one folder into loadable weight sets."""
    groups: dict[tuple[str, str | None], dict] = {}
    for n in sorted(names):
        c = _classify(n)
        if c is None:
            continue
        ext, variant, is_index = c
        g = groups.setdefault((ext, variant), {"files": [], "index": None})
        if is_index:
            g["index"] = n
        else:
            g["files"].append(n)
    return [WeightSet(ext, v, tuple(g["files"]), g["index"]) for (ext, v), g in groups.items() if g["files"]]


def choose_weights(names: list[str], variant: str | None) -> WeightSet | None:
    """Pick the weights to load: the asked variant if present, else the plain files; safetensors first.

    A folder holding only one variant (e.g. only `*.fp16.safetensors`) is loaded from that variant, since
    there is nothing else to load.
    """
    sets = weight_sets(names)
    order = [variant, None] if variant else [None]
    for want in order:
        for ext in WEIGHT_EXTS:
            for s in sets:
                if s.ext == ext and s.variant == want:
                    return s
    variants = {s.variant for s in sets}
    if len(variants) == 1:
        return sorted(sets, key=lambda s: WEIGHT_EXTS.index(s.ext))[0]
    return None


def offline(local_files_only: bool | None = None) -> bool:
    if local_files_only:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID_RE.match(name)) and not name.startswith((".", "/", "~"))


def _needed_files(files: list[str], variant: str | None, subfolders: list[str] | None) -> list[str]:
    """Choose which files of a hub repo to fetch."""
    by_dir: dict[str, list[str]] = {}
    for f in files:
        p = PurePosixPath(f)
        by_dir.setdefault(str(p.parent), []).append(p.name)
    keep: list[str] = []
    for d, names in by_dir.items():
        if subfolders is not None and d not in subfolders and d != ".":
            continue
        chosen = choose_weights(names, variant)
        wanted = set()
        if chosen is not None:
            wanted = set(chosen.files) | ({chosen.index} if chosen.index else set())
        for n in names:
            ext = os.path.splitext(n)[1].lower()
            is_weight = _classify(n) is not None
            if (is_weight and n in wanted) or (not is_weight and ext not in SKIP_EXTS):
                keep.append(n if d == "." else f"{d}/{n}")
    return keep


def resolve_repo_dir(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    variant: str | None = None,
    subfolders: list[str] | None = None,
    role: str = "decoder_repo",
) -> Path:
    """Local folder for a path, hub id or short model name, downloading what is missing unless offline.

    Hub ids are matched without regard to letter case, as the Hub does (the diffusers docs write
    `kandinsky-community/Kandinsky-2-1-prior`); a short name such as `kandinsky-2.1` stands for the
    official repo of `role` (see `kandi.configs.short_name_repo`).
    """
    from ..configs import short_name_repo

    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    name = str(name_or_path)
    name = short_name_repo(name, role) or name
    if not looks_like_repo_id(name):
        raise ModelNotFoundError(
            f"{name!r} is neither a folder nor a Hugging Face model id (owner/name, e.g. "
            "kandinsky-community/kandinsky-2-2-decoder)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    spelled = cached_spelling(name, cache_dir)
    name = spelled or name
    if offline(local_files_only):
        try:
            return Path(
                snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=True)
            )
        except LocalEntryNotFoundError:
            raise ModelNotFoundError(
                f"{name} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1 or "
                f"local_files_only=True): download it once while online, e.g. `kandi download {name}`"
            ) from None
    return _download(name, revision, cache_dir, token, variant, subfolders, known=spelled is not None)


def cached_spelling(name: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The letter case under which the HF cache holds repo `name`, if it holds it in any case."""
    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    want = "models--" + name.replace("/", "--")
    if (cache / want).is_dir():
        return name
    if not cache.is_dir():
        return None
    for p in cache.iterdir():
        if p.name.lower() == want.lower() and p.is_dir():
            return p.name[len("models--") :].replace("--", "/", 1)
    return None


def _canonical_id(name: str, token) -> str:
    """The Hub's own spelling of a repo id (ids are case-insensitive there; the cache is not)."""
    from huggingface_hub import model_info

    try:
        return model_info(name, token=token).id or name
    except Exception:  # the id itself is checked by the listing that follows
        return name


def _download(name: str, revision, cache_dir, token, variant, subfolders, known: bool = False) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if not known:  # first download: store it under the Hub's spelling, whatever case was typed
        name = _canonical_id(name, token)
    try:
        files = list_repo_files(name, revision=revision, token=token)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelNotFoundError(
            f"unknown model id {name!r}: no such repository{f' at revision {revision}' if revision else ''} on the "
            "Hugging Face Hub (or it is private and no token was given)"
        ) from None
    except Exception as e:  # network down: fall back to what the cache holds
        try:
            return Path(
                snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=True)
            )
        except LocalEntryNotFoundError:
            raise ModelNotFoundError(
                f"cannot reach the Hugging Face Hub to fetch {name} ({type(e).__name__}) and it is not in the cache"
            ) from None
    allow = _needed_files(files, variant, subfolders)
    return Path(
        snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=allow)
    )


def resolve_component_dir(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    variant: str | None = None,
) -> Path:
    """The folder of one component (e.g. a repo's `unet/`), checked to exist."""
    subs = [subfolder] if subfolder else ["."]
    root = resolve_repo_dir(
        name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        variant=variant,
        subfolders=subs,
        # a short model name: the prior's parts live in the prior repo
        role="prior_repo" if subfolder in ("prior", "image_encoder", "image_processor") else "decoder_repo",
    )
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise CheckpointError(f"{name_or_path} has no {subfolder!r} folder (expected {folder})")
    return folder


def connected_repos(folder: Path) -> dict[str, str]:
    """Repos named in the model card front matter (`prior: [repo]`), as diffusers' connected pipes read them."""
    card = folder / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return {}
    import yaml

    try:
        data = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    for key in ("prior",):
        v = data.get(key) if isinstance(data, dict) else None
        if isinstance(v, list) and v and isinstance(v[0], str):
            out[key] = v[0]
        elif isinstance(v, str):
            out[key] = v
    return out
