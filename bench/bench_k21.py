"""kandi vs diffusers on identical full-size Kandinsky 2.1 weights, in one run.

Random weights saved once by diffusers / transformers and loaded by both (see bench/common.py). The 2.1
MoVQ is the 2.2 one (same config); its peak-memory rows are bench_k22.py's.

    python bench/bench_k21.py                      # CPU fp32: UNet, MoVQ, prior, cold start, end to end
    python bench/bench_k21.py --quick              # checks the script: scaled-down configs, 2 steps
    python bench/bench_k21.py --only e2e --steps 5 --e2e-size 512

End to end: the combined 2.1 pipeline (prior + decoder, their text and image encoders full size, the
test suite's tokenizers), each library alone in a fresh process; "steps" applies to the prior and the
decoder. `--quick` scales every model down (same classes, fewer layers / channels): its figures only
show that the script works. Results: bench/out/results-k21-<device>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from common import (
    OUT,
    PROMPT,
    TIMESTEP,
    Report,
    Settings,
    assemble_repo,
    bench_cold,
    bench_e2e,
    config,
    dpm_scheduler,
    load_pair,
    pair_row,
    parse_args,
    run,
    size_gb,
    tests_helpers,
    time_interleaved,  # fmt: skip
    weights_dir,
)

PARTS = ("unet", "movq", "prior", "cold", "e2e")
# component -> (diffusers / transformers class, kandi class, official config file)
MODELS = {
    "unet": ("UNet2DConditionModel", "UNet2", "k21.unet.json"),
    "movq": ("VQModel", "MoVQ", "k21.movq.json"),
    "prior": ("PriorTransformer", "Prior", "k21-prior.prior.json"),
}
ENCODERS = {  # e2e only: (library, class, config file); kandi loads them with its own loader
    "text_encoder": (
        "diffusers.pipelines.kandinsky.text_encoder",
        "MultilingualCLIP",
        "k21.text_encoder.json",
    ),
    "prior_text_encoder": ("transformers", "CLIPTextModelWithProjection", "k21-prior.text_encoder.json"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection", "k21-prior.image_encoder.json"),
}
QUICK = {  # --quick: smaller configs of the same classes
    "unet": {"block_out_channels": [192, 384, 576, 768], "layers_per_block": 1},
    "prior": {"num_layers": 2},
    "text_encoder": {"num_hidden_layers": 2},
    "prior_text_encoder": {"num_hidden_layers": 2},
    "image_encoder": {"num_hidden_layers": 2},
}


def cfg_of(s: Settings, part: str, file: str) -> dict[str, Any]:
    return config(file, **(QUICK.get(part, {}) if s.quick else {}))


def folder_of(s: Settings, part: str) -> Path:
    lib, cls, file = ("diffusers", *MODELS[part][::2]) if part in MODELS else ENCODERS[part]
    name = f"k21-{part}" + ("-quick" if s.quick else "")
    return weights_dir(s, name, lib, cls, cfg_of(s, part, file))


def pair(part: str, s: Settings) -> tuple[Any, Any, dict[str, float]]:
    return load_pair(MODELS[part][:2], folder_of(s, part), s)


# ------------------------------------------------------------------------------------------ measures


def unet_inputs(size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """A guided pair: latents (2, 4, h, w), M-CLIP states (2, 77, 1024), text and image embeds (2, 768)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)
    states, text, image = (
        torch.randn(2, 77, 1024, generator=g),
        torch.randn(2, 768, generator=g),
        torch.randn(2, 768, generator=g),
    )
    cond = {"text_embeds": text.to(device, dtype), "image_embeds": image.to(device, dtype)}
    return {"sample": x.to(device, dtype), "timestep": torch.tensor(TIMESTEP, device=device),
            "encoder_hidden_states": states.to(device, dtype), "added_cond_kwargs": cond}  # fmt: skip


def cold_step(model: Any, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The first call of a cold start (common.COLD_CHILD): one guided UNet step."""
    return model(**unet_inputs(size, device, dtype), return_dict=False)[0]


def bench_unet(s: Settings, report: Report) -> None:
    k, d, loads = pair("unet", s)
    report.info["load_unet_s"] = loads
    kw = unet_inputs(s.size, s.device, s.dtype)
    fns = {"d": lambda: d(**kw, return_dict=False)[0], "k": lambda: k(**kw, return_dict=False)[0]}
    times, outs, peaks = time_interleaved(fns, s)
    report.add(pair_row(f"unet step {s.size}x{s.size} (forward)", "k", "d", times, outs, peaks, s, "batch 2",
                        size_gb(k, d)))  # fmt: skip


def bench_movq(s: Settings, report: Report) -> None:
    k, d, loads = pair("movq", s)
    k.disable_tiling()  # the same computation as diffusers at every size
    for size in s.movq_sizes:
        z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2)).to(
            s.device, s.dtype
        )
        fns = {"d": lambda z=z: d.decode(z).sample, "k": lambda z=z: k.decode(z).sample}
        times, outs, peaks = time_interleaved(fns, s)
        report.add(pair_row(f"movq decode -> {size}x{size}", "k", "d", times, outs, peaks, s, "batch 1, quantized",
                            size_gb(k, d)))  # fmt: skip


def bench_prior(s: Settings, report: Report) -> None:
    k, d, loads = pair("prior", s)
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, :2], mask[1, :12] = True, True  # "" and a 10-token prompt
    kw = {"hidden_states": torch.randn(2, 768, generator=g), "proj_embedding": torch.randn(2, 768, generator=g),
          "encoder_hidden_states": torch.randn(2, 77, 768, generator=g)}  # fmt: skip
    kw = {n: v.to(s.device, s.dtype) for n, v in kw.items()}
    kw |= {"timestep": torch.tensor(TIMESTEP, device=s.device), "attention_mask": mask.to(s.device)}
    fns = {"d": lambda: d(**kw).predicted_image_embedding, "k": lambda: k(**kw).predicted_image_embedding}
    times, outs, peaks = time_interleaved(fns, s)
    report.add(pair_row("prior step (77 tokens)", "k", "d", times, outs, peaks, s, "batch 2", size_gb(k, d)))


def bench_unet_cold(s: Settings, report: Report) -> None:
    bench_cold("bench_k21", "unet", folder_of(s, "unet"), s, report, f"unet, {s.size}x{s.size}")


# -------------------------------------------------------------------------------------- end to end


def repos(s: Settings) -> dict[str, str]:
    """The prior and decoder repos: the tiny test repos with full-size models linked in."""
    tiny_root = OUT / "tiny-k21"
    if not (tiny_root / "k21" / "model_index.json").is_file():
        tests_helpers().save_k21_repos(tiny_root)
    tag = "-quick" if s.quick else ""
    crop = {"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224}}
    prior = assemble_repo(tiny_root / "k21-prior", OUT / f"e2e-k21-prior{tag}",
                          {"prior": folder_of(s, "prior"), "text_encoder": folder_of(s, "prior_text_encoder"),
                           "image_encoder": folder_of(s, "image_encoder")},
                          {"image_processor/preprocessor_config.json": crop})  # fmt: skip
    decoder = assemble_repo(tiny_root / "k21", OUT / f"e2e-k21{tag}",
                            {"unet": folder_of(s, "unet"), "movq": folder_of(s, "movq"),
                             "text_encoder": folder_of(s, "text_encoder")})  # fmt: skip
    return {"prior": str(prior), "decoder": str(decoder)}


def peak_case(case: str) -> Any:
    """The call a fresh child measures (common.PEAK_CHILD): one image from the combined pipeline."""
    import importlib

    c = json.loads(case)
    lib = importlib.import_module(c["lib"])
    prior = lib.KandinskyPriorPipeline.from_pretrained(c["prior"])
    decoder = lib.KandinskyPipeline.from_pretrained(c["decoder"])
    parts = {**decoder.components, **{"prior_" + n: v for n, v in prior.components.items()}}
    if c["sampler"] == "dpm":
        parts["scheduler"] = dpm_scheduler(c["lib"], decoder.scheduler.config)
    pipe = lib.KandinskyCombinedPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    kw = {"height": c["size"], "width": c["size"], "num_inference_steps": c["steps"],
          "prior_num_inference_steps": c["steps"], "output_type": "np"}  # fmt: skip
    return lambda: torch.from_numpy(pipe(PROMPT, **kw, generator=torch.Generator().manual_seed(0)).images)


def bench_k21_e2e(s: Settings, report: Report) -> None:
    what = "combined 2.1 pipeline" + (", scaled-down models (--quick)" if s.quick else ", full-size models")
    bench_e2e("bench_k21", s, report, repos(s), what, "DDIM (the repo's)")


def main(argv: list[str] | None = None) -> int:
    s, only, out_path = parse_args(__doc__, PARTS, argv)
    steps = {"unet": bench_unet, "movq": bench_movq, "prior": bench_prior, "cold": bench_unet_cold,
             "e2e": bench_k21_e2e}  # fmt: skip
    return run(s, only, out_path, steps)


if __name__ == "__main__":
    sys.exit(main())
