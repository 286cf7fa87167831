"""Shared fixtures: tiny random Kandinsky repos saved by diffusers, and an offline HF cache holding them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# tests never reach the network: every model comes from a temporary folder or cache built by the tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tiny  # noqa: E402
import torch  # noqa: E402

# The tiny test models gain nothing from intra-op threads, and on a small shared machine extra threads
# contend with other processes (a tiny conv goes from ~0.2 ms to ~40 ms under load). A fixed count also
# keeps pixels comparable between runs (CPU kernels may round differently with another thread count).
torch.set_num_threads(1)

OFFICIAL = {
    "prior": "kandinsky-community/kandinsky-2-2-prior",
    "decoder": "kandinsky-community/kandinsky-2-2-decoder",
    "inpaint": "kandinsky-community/kandinsky-2-2-decoder-inpaint",
    "controlnet": "kandinsky-community/kandinsky-2-2-controlnet-depth",
}


@pytest.fixture(scope="session")
def k22_repos(tmp_path_factory) -> dict[str, Path]:
    """{"prior": folder, "decoder": folder}: tiny 2.2 repos written by diffusers' save_pretrained."""
    return tiny.save_k22_repos(tmp_path_factory.mktemp("k22"))


@pytest.fixture(scope="session")
def k22_edit_repos(tmp_path_factory) -> dict[str, Path]:
    """{"inpaint": folder, "controlnet": folder}: the tiny 2.2 inpainting and ControlNet decoders."""
    return tiny.save_k22_edit_repos(tmp_path_factory.mktemp("k22edit"))


@pytest.fixture(scope="session")
def k22_cache(tmp_path_factory, k22_repos, k22_edit_repos) -> Path:
    """A Hugging Face hub cache holding the tiny repos under the official 2.2 ids."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repos = {**k22_repos, **k22_edit_repos}
    for key, repo_id in OFFICIAL.items():
        tiny.install_in_cache(cache, repo_id, repos[key])
    return cache


@pytest.fixture
def offline_hub(monkeypatch, k22_cache) -> Path:
    """Offline mode pointed at `k22_cache` (for this process and for subprocesses via the environment)."""
    tiny.diffusers_to_kandi_env(monkeypatch, k22_cache)
    return k22_cache


OFFICIAL_K21 = {
    "prior": "kandinsky-community/kandinsky-2-1-prior",
    "decoder": "kandinsky-community/kandinsky-2-1",
    "inpaint": "kandinsky-community/kandinsky-2-1-inpaint",
}


@pytest.fixture(scope="session")
def k21_repos(tmp_path_factory) -> dict[str, Path]:
    """{"prior", "decoder", "inpaint"}: tiny 2.1 repos written by diffusers' save_pretrained (official layout)."""
    return tiny.save_k21_repos(tmp_path_factory.mktemp("k21"))


@pytest.fixture(scope="session")
def k21_cache(tmp_path_factory, k21_repos) -> Path:
    """A Hugging Face hub cache (its own, apart from `k22_cache`) holding the tiny repos under the 2.1 ids."""
    cache = tmp_path_factory.mktemp("hf21") / "hub"
    for key, repo_id in OFFICIAL_K21.items():
        tiny.install_in_cache(cache, repo_id, k21_repos[key])
    return cache


@pytest.fixture
def k21_offline_hub(monkeypatch, k21_cache) -> Path:
    """Offline mode pointed at `k21_cache` (for this process and for subprocesses via the environment)."""
    tiny.diffusers_to_kandi_env(monkeypatch, k21_cache)
    return k21_cache


@pytest.fixture(scope="session")
def k3_repo(tmp_path_factory) -> Path:
    """The tiny Kandinsky 3 repo written by diffusers' save_pretrained (plain and fp16-variant weights)."""
    return tiny.save_k3_repo(tmp_path_factory.mktemp("k3"))


@pytest.fixture(scope="session")
def k3_cache(tmp_path_factory, k3_repo) -> Path:
    """A Hugging Face hub cache (its own) holding the tiny repo as kandinsky-community/kandinsky-3."""
    cache = tmp_path_factory.mktemp("hf3") / "hub"
    tiny.install_in_cache(cache, tiny.K3_REPO_ID, k3_repo)
    return cache


@pytest.fixture
def k3_offline_hub(monkeypatch, k3_cache) -> Path:
    """Offline mode pointed at `k3_cache` (for this process and for subprocesses via the environment)."""
    tiny.diffusers_to_kandi_env(monkeypatch, k3_cache)
    return k3_cache
