"""kandi vs diffusers on identical full-size Kandinsky 2.2 weights, in one run.

Random weights saved once by diffusers and loaded by both (see bench/common.py); every measurement
checks that the two outputs agree (max abs diff), so the benchmark also proves parity at full size.

    python bench/bench_k22.py                      # CPU fp32, everything
    python bench/bench_k22.py --quick              # validate the script (1 repeat, small sizes)
    python bench/bench_k22.py --device cuda --dtype fp16
    python bench/bench_k22.py --only unet,prior --repeats 5
    python bench/bench_k22.py --only memory        # peak RSS of MoVQ decodes, tiled and untiled
    python bench/bench_k22.py --only e2e --e2e-size 512 --steps 25   # one image, DDPM and DPM++ 2M

End to end: the decoder pipeline (full-size UNet and MoVQ, the repo's DDPM scheduler, or DPM++ 2M)
from fixed image embeddings, each library alone in a fresh process; the prior is timed per step above.

This is a script, not a test: it prints a table (ratio = diffusers / kandi, > 1 means kandi is faster)
and writes bench/out/results-k22-<device>.json. It exits 1 if any output pair disagrees or a part fails.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from common import (
    CONFIGS,
    OUT,
    PROMPT,
    ROOT,
    TIMESTEP,
    Report,
    Row,
    Settings,
    bench_cold,
    bench_e2e,
    compare,
    config,
    dpm_scheduler,
    load_pair,
    memory_line,
    pair_row,
    parse_args,
    peak_once,
    run,
    size_gb,
    sync,
    time_interleaved,
    weights_dir,
)

PARTS = ("unet", "movq", "prior", "cold", "movq-cold", "tiny", "memory", "e2e", "compile")
# component -> (diffusers class, kandi class, official config file)
MODELS = {
    "unet": ("UNet2DConditionModel", "UNet2", "k22-decoder.unet.json"),
    "movq": ("VQModel", "MoVQ", "k22-decoder.movq.json"),
    "prior": ("PriorTransformer", "Prior", "k22-prior.prior.json"),
}


def folder_of(s: Settings, part: str) -> Path:
    """The random full-size weights of `part` (built once)."""
    dcls, _, cfg_file = MODELS[part]
    return weights_dir(s, part, "diffusers", dcls, config(cfg_file))


def pair(part: str, s: Settings) -> tuple[Any, Any, dict[str, float]]:
    return load_pair(MODELS[part][:2], folder_of(s, part), s)


# ------------------------------------------------------------------------------------------ measures


# ------------------------------------------------------------------------------------------ measures


def unet_inputs(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A classifier-free-guidance pair: latents (2, 4, h, w), image embeds (2, 1280), timestep."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)
    emb = torch.randn(2, 1280, generator=g)
    t = torch.tensor(TIMESTEP, dtype=torch.int64)
    return x.to(device, dtype), emb.to(device, dtype), t.to(device)


def cold_step(model: Any, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The first call of a cold start (common.COLD_CHILD): one guided UNet step, or for the MoVQ one
    decode of a size x size image."""
    if hasattr(model, "quantize"):  # MoVQ / VQModel
        z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2))
        return model.decode(z.to(device, dtype), force_not_quantize=True).sample
    x, emb, t = unet_inputs(size, device, dtype)
    return model(
        x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}, return_dict=False
    )[0]


def bench_unet(s: Settings, report: Report) -> None:
    k, d, loads = pair("unet", s)
    report.info["load_unet_s"] = loads
    print(
        f"  loaded: kandi {loads['kandi']:.2f} s, diffusers {loads['diffusers']:.2f} s; {memory_line('unet')}"
    )
    x, emb, t = unet_inputs(s.size, s.device, s.dtype)
    added = {"image_embeds": emb}
    xk, kadded = x.to(s.kdtype), {"image_embeds": emb.to(s.kdtype)}  # --kandi-dtype
    with torch.inference_mode():
        cond = k.condition(kadded["image_embeds"])
    fns = {
        "d": lambda: d(x, t, encoder_hidden_states=None, added_cond_kwargs=added, return_dict=False)[0],
        "k": lambda: k(xk, t, encoder_hidden_states=None, added_cond_kwargs=kadded, return_dict=False)[0],
        "k_split": lambda: k.denoise(xk, t, cond),
    }
    times, outs, peaks = time_interleaved(fns, s)
    px = f"{s.size}x{s.size}"
    gb = size_gb(k, d)
    report.add(pair_row(f"unet step {px} (forward)", "k", "d", times, outs, peaks, s, "batch 2", gb))
    report.add(
        pair_row(
            f"unet step {px} (denoise, cond once)",
            "k_split",
            "d",
            times,
            outs,
            peaks,
            s,
            "kandi split API",
            gb,
        )
    )
    ctimes, _, _ = time_interleaved({"c": lambda: k.condition(kadded["image_embeds"])}, s)
    report.info["unet_condition_s"] = statistics.median(ctimes["c"])
    print(f"  kandi unet.condition() once per generation: {report.info['unet_condition_s'] * 1e3:.2f} ms")


def bench_compile(s: Settings, report: Report) -> None:
    """kandi's opt-in `enable_compile()` path (torch.compile of `unet.denoise`, inductor) against
    diffusers' eager UNet; the first call's compile time is reported on its own."""
    import time
    from types import SimpleNamespace

    from kandi import fast

    k, d, _ = pair("unet", s)
    x, emb, t = unet_inputs(s.size, s.device, s.dtype)
    fast.compile_models(SimpleNamespace(unet=k))
    with torch.inference_mode():
        cond = k.condition(emb)
        t0 = time.perf_counter()
        k.denoise(x, t, cond)
        sync(s.device)
        report.info["compile_first_call_s"] = time.perf_counter() - t0
    print(f"  first compiled call (compiles): {report.info['compile_first_call_s']:.1f} s", flush=True)
    fns = {
        "d": lambda: d(
            x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}, return_dict=False
        )[0],
        "k": lambda: k.denoise(x, t, cond),
    }
    times, outs, peaks = time_interleaved(fns, s)
    label = f"unet step {s.size}x{s.size} (kandi torch.compile, diffusers eager)"
    note = f"inductor; first call {report.info['compile_first_call_s']:.0f} s"
    report.add(pair_row(label, "k", "d", times, outs, peaks, s, note, size_gb(k, d)))


def bench_movq(s: Settings, report: Report, part: str = "movq") -> None:
    """MoVQ decode rows at each of s.movq_sizes (kandi untiled: the same computation as diffusers)."""
    k, d, loads = pair(part, s)
    k.disable_tiling()
    report.info[f"load_{part}_s"] = loads
    for size in s.movq_sizes:
        g = torch.Generator().manual_seed(2)
        z = torch.randn(1, 4, size // 8, size // 8, generator=g).to(s.device, s.dtype)
        fns = {
            "d": lambda z=z: d.decode(z, force_not_quantize=True).sample,
            "k": lambda z=z: k.decode(z.to(s.kdtype), force_not_quantize=True).sample,
        }
        times, outs, peaks = time_interleaved(fns, s)
        label = f"movq decode -> {size}x{size}"
        report.add(pair_row(label, "k", "d", times, outs, peaks, s, "batch 1", size_gb(k, d)))


def prior_inputs(s: Settings) -> dict[str, torch.Tensor]:
    """Guided prior step: [uncond "", cond prompt] with their CLIP text masks (77 tokens)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, :2] = True  # "" -> <start> <end>
    mask[1, :12] = True
    tensors = {
        "hidden_states": torch.randn(2, 1280, generator=g),
        "proj_embedding": torch.randn(2, 1280, generator=g),
        "encoder_hidden_states": torch.randn(2, 77, 1280, generator=g),
    }
    out = {k: v.to(s.device, s.dtype) for k, v in tensors.items()}
    out["timestep"] = torch.tensor(TIMESTEP, dtype=torch.int64, device=s.device)
    out["attention_mask"] = mask.to(s.device)
    return out


def bench_prior(s: Settings, report: Report) -> None:
    k, d, loads = pair("prior", s)
    report.info["load_prior_s"] = loads
    kw = prior_inputs(s)
    kkw = {n: v.to(s.kdtype) if v.is_floating_point() else v for n, v in kw.items()}  # --kandi-dtype
    fns = {
        "d": lambda: d(**kw).predicted_image_embedding,
        "k": lambda: k(**kkw).predicted_image_embedding,
    }
    times, outs, peaks = time_interleaved(fns, s)
    report.add(pair_row("prior step (77 tokens)", "k", "d", times, outs, peaks, s, "batch 2", size_gb(k, d)))


def bench_unet_cold(s: Settings, report: Report) -> None:
    bench_cold("bench_k22", "unet", folder_of(s, "unet"), s, report, f"unet, {s.size}x{s.size}")


def bench_movq_cold(s: Settings, report: Report) -> None:
    bench_cold("bench_k22", "movq", folder_of(s, "movq"), s, report, f"movq decode, {s.size}x{s.size}")


def tiny_repos() -> dict[str, Path]:
    """The tiny 2.2 prior + decoder repos of the test suite, saved once under bench/out/tiny."""
    root = OUT / "tiny"
    paths = {"prior": root / "k22-prior", "decoder": root / "k22-decoder"}
    if all((p / "model_index.json").is_file() for p in paths.values()):
        return paths
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny  # tests/tiny.py: diffusers-built random components, diffusers' own test sizes

    shutil.rmtree(root, ignore_errors=True)
    return tiny.save_k22_repos(root)


def combined(lib: Any, paths: dict[str, Path], s: Settings) -> Any:
    """A KandinskyV22CombinedPipeline of `lib` (kandi or diffusers) from the saved prior and decoder repos."""
    prior = lib.KandinskyV22PriorPipeline.from_pretrained(str(paths["prior"]), torch_dtype=s.dtype)
    decoder = lib.KandinskyV22Pipeline.from_pretrained(str(paths["decoder"]), torch_dtype=s.dtype)
    parts = {**decoder.components, **{"prior_" + k: v for k, v in prior.components.items()}}
    pipe = lib.KandinskyV22CombinedPipeline(**parts).to(s.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_tiny(s: Settings, report: Report) -> None:
    import diffusers

    import kandi

    paths = tiny_repos()
    pipes = {"k": combined(kandi, paths, s), "d": combined(diffusers, paths, s)}
    kw = {
        "prompt": PROMPT,
        "height": s.tiny_size,
        "width": s.tiny_size,
        "num_inference_steps": s.tiny_steps,
        "prior_num_inference_steps": s.tiny_steps,
        "output_type": "np",
    }

    def make(name: str) -> Any:
        return pipes[name](**kw, generator=torch.Generator().manual_seed(0)).images

    threads = torch.get_num_threads()
    if s.tiny_threads:
        torch.set_num_threads(s.tiny_threads)
    try:
        fns = {"d": lambda: make("d"), "k": lambda: make("k")}
        times, outs, peaks = time_interleaved(fns, s, s.tiny_repeats)
    finally:
        torch.set_num_threads(threads)
    label = f"tiny pipeline {s.tiny_size}x{s.tiny_size} ({s.tiny_steps}+{s.tiny_steps} steps)"
    note = "combined, end to end" + (f", {s.tiny_threads} thread(s)" if s.tiny_threads else "")
    report.add(pair_row(label, "k", "d", times, outs, peaks, s, note))


# -------------------------------------------------------------------------------------- peak memory


def decoder_folder(s: Settings) -> Path:
    """A diffusers-layout KandinskyV22Pipeline folder whose unet/ and movq/ are the cached random weights."""
    root = s.weights / "k22-decoder-pipeline"
    root.mkdir(parents=True, exist_ok=True)
    for part in ("unet", "movq"):
        link = root / part
        if not link.exists():
            link.symlink_to(folder_of(s, part), target_is_directory=True)
    sched = root / "scheduler"
    sched.mkdir(exist_ok=True)
    shutil.copy(CONFIGS / "k22-decoder.scheduler.json", sched / "scheduler_config.json")
    shutil.copy(CONFIGS / "k22-decoder.model_index.json", root / "model_index.json")
    return root


def image_embeds(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's output a decoder run starts from: one image embedding and a zero negative."""
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 1280, generator=g, dtype=dtype), torch.zeros(1, 1280, dtype=dtype)


def e2e_case(c: dict[str, Any]) -> Any:
    """One image from the decoder pipeline (UNet + MoVQ, full size) given the image embeddings."""
    import importlib

    lib = importlib.import_module(c["lib"])
    pipe = lib.KandinskyV22Pipeline.from_pretrained(c["folder"])
    if c["sampler"] == "dpm":
        pipe.scheduler = dpm_scheduler(c["lib"], pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    emb, neg = image_embeds()
    kw = {"height": c["size"], "width": c["size"], "num_inference_steps": c["steps"], "output_type": "np"}
    return lambda: torch.from_numpy(
        pipe(
            image_embeds=emb, negative_image_embeds=neg, **kw, generator=torch.Generator().manual_seed(0)
        ).images
    )


def bench_k22_e2e(s: Settings, report: Report) -> None:
    case = {"folder": str(decoder_folder(s))}
    bench_e2e("bench_k22", s, report, case, "decoder pipeline (UNet + MoVQ), from image embeddings", "DDPM")


def peak_case(case: str) -> Any:
    """The call a peak-memory child measures (common.PEAK_CHILD): a MoVQ decode described by `case`
    (JSON: lib, folder, size, tiled), with its model loaded and its latent drawn beforehand; or, for
    kind "e2e", one image from the decoder pipeline."""
    c = json.loads(case)
    if c.get("kind") == "e2e":
        return e2e_case(c)
    import importlib

    lib = importlib.import_module(c["lib"])
    model = getattr(lib, "VQModel" if c["lib"] == "diffusers" else "MoVQ").from_pretrained(c["folder"]).eval()
    if c["lib"] == "kandi":
        model.enable_tiling() if c["tiled"] else model.disable_tiling()
    n = c["size"] // 8
    z = torch.randn(1, 4, n, n, generator=torch.Generator().manual_seed(2))
    return lambda: model.decode(z, force_not_quantize=True).sample


def bench_memory(s: Settings, report: Report, module: str = "bench_k22", part: str = "movq") -> None:
    """Peak RSS of one MoVQ decode per size, each in a fresh process (CPU only: /proc/self/status): kandi
    tiled (enable_tiling() defaults) at every size; kandi untiled up to UNTILED_MAX px; diffusers (no
    tiling; the same computation as kandi untiled) at the first size only, to check that claim.
    Untiled decodes run up to --untiled-max px (default 1024: 2048x2048 needs about 17 GB)."""
    if s.cuda:
        print("  memory rows measure CPU RSS: skipped on CUDA (bench_gpu.py reports peak VRAM)")
        return
    folder = str(folder_of(s, part))
    tmp = OUT / "peak"
    tmp.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(s.memory_sizes):
        cases = (
            [("kandi", True)]
            + [("kandi", False)] * (size <= s.untiled_max)
            + [("diffusers", False)] * (i == 0)
        )
        got, outs = {}, {}
        for lib, tiled in cases:
            key = f"{lib}{'-tiled' if tiled else ''}"
            case = json.dumps({"lib": lib, "folder": folder, "size": size, "tiled": tiled})
            got[key] = peak_once(module, case, tmp / f"{key}.pt")
            outs[key] = torch.load(tmp / f"{key}.pt", weights_only=True)
            print(f"  {size}x{size} {key}: {got[key]}", flush=True)
        add_memory_rows(report, f"{part} decode {size}x{size}", got, outs, s)


def add_memory_rows(report: Report, label: str, got: dict[str, dict[str, float]], outs: dict[str, Any],
                    s: Settings) -> None:  # fmt: skip
    """Rows (seconds, outputs compared where there is a reference) and report.info["memory"] entries."""
    mem = report.info.setdefault("memory", {})
    for key, ref in (("kandi", "diffusers"), ("kandi-tiled", "kandi")):
        if key not in got:
            continue
        mem[f"{label} {key}"] = dict(got[key])
        if ref not in got:
            report.add(Row(f"{label} {key}", [got[key]["seconds"]], [float("nan")],
                           note=f"peak RSS of the call: {got[key]['delta_gb']:.2f} GB"))  # fmt: skip
            continue
        if key == "kandi-tiled":  # tiles normalise with their own statistics: close, not equal (tiling.py)
            diff, mx = float((outs[key] - outs[ref]).abs().max()), float(outs[ref].abs().max())
            ok = bool(torch.isfinite(outs[key]).all()) and outs[key].shape == outs[ref].shape
        else:
            diff, mx, ok = compare(f"{label} {key}", outs[key], outs[ref], s.dtype_name)
        mean = float((outs[key] - outs[ref]).abs().mean())
        gk, gd = got[key]["delta_gb"], got[ref]["delta_gb"]
        note = f"peak RSS of the call: {gk:.2f} GB vs {gd:.2f} GB ({gk / gd:.2f}x); mean|diff| {mean:.2e}"
        report.add(Row(f"{label} {key} vs {ref}", [got[key]["seconds"]], [got[ref]["seconds"]], diff, mx, ok,
                       note=note))  # fmt: skip
        mem[f"{label} {key}"].update(vs=ref, max_diff=diff, mean_diff=mean)
    if "diffusers" in got:
        mem[f"{label} diffusers"] = got["diffusers"]


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    s, only, out_path = parse_args(__doc__, PARTS, argv)
    steps = {"unet": bench_unet, "movq": bench_movq, "prior": bench_prior, "cold": bench_unet_cold,
             "movq-cold": bench_movq_cold, "tiny": bench_tiny, "memory": bench_memory, "e2e": bench_k22_e2e,
             "compile": bench_compile}  # fmt: skip
    return run(s, only, out_path, steps, f"; tiny pipeline {s.tiny_repeats} runs")


if __name__ == "__main__":
    sys.exit(main())
