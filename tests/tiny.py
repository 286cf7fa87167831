"""Tiny random Kandinsky components (diffusers' own test sizes), saved as diffusers repos and HF caches.

diffusers is the oracle: components are built with diffusers / transformers, saved in diffusers layout,
and kandi loads the saved folders. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

CONFIGS = Path(__file__).parent / "data" / "configs"
DECODER_CARD = (
    "---\nlicense: apache-2.0\nprior:\n- kandinsky-community/kandinsky-2-2-prior\n---\n# tiny test repo\n"
)


def tiny_kwargs(name: str, component: str) -> dict:
    spec = json.loads((CONFIGS / f"{name}.json").read_text())["components"][component]
    return {k: v for k, v in spec["kwargs"].items() if not k.startswith("_")}


def _byte_chars() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest above 255
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer with a byte-level vocabulary (514 ids, no merges), max length 77."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _jitter(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Random weights everywhere, so that zero-initialised layers do not hide bugs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def k22_prior_components(workdir: Path, seed: int = 0) -> dict:
    import diffusers
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    prior = diffusers.PriorTransformer(**tiny_kwargs("tiny-k22-prior", "prior"))
    _jitter(prior)
    with torch.no_grad():
        prior.clip_std.copy_(torch.ones_like(prior.clip_std) + 0.1 * torch.rand_like(prior.clip_std))
        prior.clip_mean.copy_(0.1 * torch.randn_like(prior.clip_mean))
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(**tiny_kwargs("tiny-k22-prior", "image_encoder"))
    )
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(**tiny_kwargs("tiny-k22-prior", "text_encoder"))
    )
    return {
        "prior": prior.eval(),
        "image_encoder": image_encoder.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(workdir / "clip_vocab"),
        "scheduler": diffusers.UnCLIPScheduler(**tiny_kwargs("tiny-k22-prior", "scheduler")),
        "image_processor": CLIPImageProcessor(**tiny_kwargs("tiny-k22-prior", "image_processor")),
    }


def k22_decoder_components(seed: int = 0, scheduler: str = "ddpm", config: str = "tiny-k22-decoder") -> dict:
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**tiny_kwargs(config, "unet"))
    movq = diffusers.VQModel(**tiny_kwargs(config, "movq"))
    _jitter(unet)
    _jitter(movq, 0.02)
    if scheduler == "ddpm":  # the official 2.2 decoder scheduler config
        sched = diffusers.DDPMScheduler.from_config(
            json.loads((CONFIGS / "k22-decoder.scheduler.json").read_text())
        )
    else:
        sched = diffusers.DDIMScheduler(**tiny_kwargs(config, "scheduler"))
    return {"unet": unet.eval(), "scheduler": sched, "movq": movq.eval()}


def save_k22_repos(root: Path) -> dict[str, Path]:
    """diffusers-saved prior and decoder repos (decoder with the model card naming its prior)."""
    import diffusers

    prior = diffusers.KandinskyV22PriorPipeline(**k22_prior_components(root))
    decoder = diffusers.KandinskyV22Pipeline(**k22_decoder_components())
    paths = {"prior": root / "k22-prior", "decoder": root / "k22-decoder"}
    prior.save_pretrained(paths["prior"])
    decoder.save_pretrained(paths["decoder"])
    (paths["decoder"] / "README.md").write_text(DECODER_CARD)
    return paths


def save_k22_edit_repos(root: Path) -> dict[str, Path]:
    """diffusers-saved inpainting (9-channel UNet) and ControlNet (hint UNet, 4-level MoVQ) decoders."""
    import diffusers

    inpaint = diffusers.KandinskyV22InpaintPipeline(**k22_decoder_components(1, "ddpm", "tiny-k22-inpaint"))
    control = diffusers.KandinskyV22ControlnetPipeline(
        **k22_decoder_components(2, "ddim", "tiny-k22-controlnet")
    )
    paths = {"inpaint": root / "k22-decoder-inpaint", "controlnet": root / "k22-controlnet-depth"}
    inpaint.save_pretrained(paths["inpaint"])
    control.save_pretrained(paths["controlnet"])
    (paths["inpaint"] / "README.md").write_text(DECODER_CARD)
    return paths


def install_in_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """Place `folder` in a Hugging Face hub cache under `repo_id`, as a download would."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def offline_env(cache: Path) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "hf_home")}


def diffusers_to_kandi_env(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub (already imported) at `cache`, offline."""
    import huggingface_hub.constants as c

    for k, v in offline_env(cache).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    os.makedirs(cache, exist_ok=True)
