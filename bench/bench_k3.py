"""kandi vs diffusers on identical full-size Kandinsky 3 weights, one library's copy in memory at a time.

Random weights saved once by diffusers / transformers and loaded by both (see bench/common.py). The 3B
UNet is 12 GB in fp32, so the two copies are never held together: kandi's is loaded, timed and freed,
then diffusers' (the rows say "alone"); the MoVQ pair is small enough to interleave. The T5 is a smaller
config of the released class (T5EncoderModel, 4096 wide, T5_LAYERS of its 32 layers): the 8.6B encoder
would not fit beside the UNet here, and its time is one forward per prompt.

    python bench/bench_k3.py                       # CPU fp32: UNet, MoVQ, cold start, end to end
    python bench/bench_k3.py --quick               # checks the script: scaled-down configs, 2 steps
    python bench/bench_k3.py --only e2e --steps 5 --e2e-size 512

`--quick` scales every model down (same classes): its figures only show that the script works.
Results: bench/out/results-k3-<device>.json.
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
    Row,
    Settings,
    assemble_repo,
    bench_cold,
    bench_e2e,
    compare,
    config,
    dpm_scheduler,
    free,
    load_one,
    load_pair,
    memory_line,
    pair_row,
    parse_args,
    run,
    size_gb,
    tests_helpers,  # fmt: skip
    time_interleaved,
    weights_dir,
)

PARTS = ("unet", "movq", "cold", "e2e")
MODELS = {
    "unet": ("Kandinsky3UNet", "UNet3", "k3.unet.json"),
    "movq": ("VQModel", "MoVQ", "k3.movq.json"),
}
T5_LAYERS = 2
TEXT_ENCODER = ("transformers", "T5EncoderModel", "k3.text_encoder.json")
QUICK = {  # --quick: smaller configs of the same classes (a 1024-wide T5 and cross-attention)
    "unet": {
        "block_out_channels": [128, 256, 512, 1024],
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "encoder_hid_dim": 1024,
    },  # fmt: skip
    "text_encoder": {"num_layers": 1, "d_model": 1024, "d_ff": 2816, "num_heads": 16, "d_kv": 64},
}
TOKENS = 20  # text states per row (the pipeline cuts prompts to the longest + 1 tokens)


def folder_of(s: Settings, part: str) -> Path:
    lib, cls, file = ("diffusers", *MODELS[part][::2]) if part in MODELS else TEXT_ENCODER
    overrides = dict(QUICK.get(part, {})) if s.quick else {}
    if part == "text_encoder":  # saved untied: the filled embedding and `shared` differ
        overrides = {"num_layers": T5_LAYERS, **overrides, "tie_word_embeddings": False}
    return weights_dir(s, f"k3-{part}" + ("-quick" if s.quick else ""), lib, cls, config(file, **overrides))


# ------------------------------------------------------------------------------------------ measures


def unet_inputs(size: int, width: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """A guided pair: latents (2, 4, h, w), T5 states (2, TOKENS, width) and their mask."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)
    states = torch.randn(2, TOKENS, width, generator=g)
    mask = torch.zeros(2, TOKENS, dtype=torch.long)
    mask[0, :3], mask[1, :12] = 1, 1
    return {"sample": x.to(device, dtype), "timestep": torch.tensor(TIMESTEP, device=device),
            "encoder_hidden_states": states.to(device, dtype), "encoder_attention_mask": mask.to(device)}  # fmt: skip


def cold_step(model: Any, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The first call of a cold start (common.COLD_CHILD): one guided UNet step."""
    return model(**unet_inputs(size, model.config.encoder_hid_dim, device, dtype), return_dict=False)[0]


def bench_unet(s: Settings, report: Report) -> None:
    """UNet step: each library's copy alone (loaded, timed, freed), then the outputs compared."""
    folder = folder_of(s, "unet")
    times, outs, gb = {}, {}, {}
    for key, lib, cls in (("k", "kandi", MODELS["unet"][1]), ("d", "diffusers", MODELS["unet"][0])):
        model, load_s = load_one(lib, cls, folder, s)
        kw = unet_inputs(s.size, model.config.encoder_hid_dim, s.device, s.dtype)
        t, o, _ = time_interleaved({key: lambda m=model, kw=kw: m(**kw, return_dict=False)[0]}, s)
        times[key], outs[key], gb[key] = t[key], o[key].float().cpu(), size_gb(model)[0]
        print(f"  {lib}: loaded in {load_s:.1f} s; {memory_line('unet ' + lib)}", flush=True)
        del model, o
        free(s.device)
    diff, ref, ok = compare("unet", outs["k"], outs["d"], s.dtype_name)
    note = f"batch 2, {TOKENS} tokens; each copy alone ({gb['k']:.1f} GB of weights)"
    report.add(
        Row(f"unet step {s.size}x{s.size} (forward)", times["k"], times["d"], diff, ref, ok, note=note)
    )


def bench_movq(s: Settings, report: Report) -> None:
    k, d, _ = load_pair(MODELS["movq"][:2], folder_of(s, "movq"), s)
    k.disable_tiling()  # the same computation as diffusers at every size
    for size in s.movq_sizes:
        z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2)).to(
            s.device, s.dtype
        )
        fns = {"d": lambda z=z: d.decode(z).sample, "k": lambda z=z: k.decode(z).sample}
        times, outs, peaks = time_interleaved(fns, s)
        report.add(pair_row(f"movq decode -> {size}x{size}", "k", "d", times, outs, peaks, s, "batch 1, quantized",
                            size_gb(k, d)))  # fmt: skip


def bench_unet_cold(s: Settings, report: Report) -> None:
    bench_cold("bench_k3", "unet", folder_of(s, "unet"), s, report, f"unet, {s.size}x{s.size}")


# -------------------------------------------------------------------------------------- end to end


def repo(s: Settings) -> dict[str, str]:
    """The Kandinsky 3 repo: the tiny test repo (tokenizer, scheduler) with full-size models linked in."""
    tiny = OUT / "tiny-k3"
    if not (tiny / "kandinsky-3" / "model_index.json").is_file():
        tests_helpers().save_k3_repo(tiny)
    full = {part: folder_of(s, part) for part in ("unet", "movq", "text_encoder")}
    return {
        "repo": str(assemble_repo(tiny / "kandinsky-3", OUT / f"e2e-k3{'-quick' if s.quick else ''}", full))
    }


def peak_case(case: str) -> Any:
    """The call a fresh child measures (common.PEAK_CHILD): one image from Kandinsky3Pipeline."""
    import importlib

    c = json.loads(case)
    lib = importlib.import_module(c["lib"])
    pipe = lib.Kandinsky3Pipeline.from_pretrained(c["repo"])
    if c["sampler"] == "dpm":
        pipe.scheduler = dpm_scheduler(c["lib"], pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kw = {"height": c["size"], "width": c["size"], "num_inference_steps": c["steps"], "output_type": "np"}
    return lambda: torch.from_numpy(pipe(PROMPT, **kw, generator=torch.Generator().manual_seed(0)).images)


def bench_k3_e2e(s: Settings, report: Report) -> None:
    what = "Kandinsky3Pipeline, " + (
        "scaled-down models (--quick)" if s.quick else f"3B UNet, T5 {T5_LAYERS} layers"
    )
    bench_e2e("bench_k3", s, report, repo(s), what, "DDPM (the repo's)")


def main(argv: list[str] | None = None) -> int:
    s, only, out_path = parse_args(__doc__, PARTS, argv)
    steps = {"unet": bench_unet, "movq": bench_movq, "cold": bench_unet_cold, "e2e": bench_k3_e2e}
    return run(s, only, out_path, steps, "; unet rows: each library alone, not interleaved")


if __name__ == "__main__":
    sys.exit(main())
