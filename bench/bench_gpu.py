"""The whole kandi-vs-diffusers set on one CUDA device, in about 8 minutes, written to BENCHMARKS.md.

For Kandinsky 2.1, 2.2 and 3, in fp16 and bf16: UNet step (guided batch 2, at the family's native size),
MoVQ decode (512, 768, 1024 px), prior step (2.x), each eager and under torch.compile (inductor,
default mode; the compile time is the first call, reported on its own), and one 2.2 image end to end
(combined pipeline, 25 prior + 50 decoder steps, 768 px, eager). Peak VRAM per call is
torch.cuda.max_memory_allocated after a reset, plus the model's weights. Models are full size with
random weights, built on the device (no files): each diffusers model is filled with seeded N(0, 0.02)
values and kandi's copy loads its state dict, so both run the same weights and the outputs are compared.

    python bench/bench_gpu.py                     # on a CUDA machine: the table goes into BENCHMARKS.md
    python bench/bench_gpu.py --no-compile        # eager only (about 2 minutes)
    python bench/bench_gpu.py --dry-run           # anywhere: tiny configs on the CPU, fp32, one run each,
                                                  # table to bench/out/gpu-dry-run.md (checks the script)

Without CUDA (and without --dry-run) it exits 2 with a message before doing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    CONFIGS,
    DTYPES,
    OUT,
    PROMPT,
    ROOT,
    Report,
    Settings,
    format_row,
    free,
    machine_info,
    pair_row,
    quiet_libraries,  # fmt: skip
    size_gb,
    sync,
    table_header,
    tests_helpers,
    time_interleaved,
)
from torch import nn

BENCHMARKS = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench_gpu.py: start -->", "<!-- bench_gpu.py: end -->"
# family -> part -> (diffusers class, kandi class, official config, (tiny config, component) for --dry-run)
SPECS: dict[str, dict[str, tuple[str, str, str, tuple[str, str]]]] = {
    "k21": {
        "unet": ("UNet2DConditionModel", "UNet2", "k21.unet.json", ("tiny-k21", "unet")),
        "movq": ("VQModel", "MoVQ", "k21.movq.json", ("tiny-k21", "movq")),
        "prior": ("PriorTransformer", "Prior", "k21-prior.prior.json", ("tiny-k21-prior", "prior")),
    },
    "k22": {
        "unet": ("UNet2DConditionModel", "UNet2", "k22-decoder.unet.json", ("tiny-k22-decoder", "unet")),
        "movq": ("VQModel", "MoVQ", "k22-decoder.movq.json", ("tiny-k22-decoder", "movq")),
        "prior": ("PriorTransformer", "Prior", "k22-prior.prior.json", ("tiny-k22-prior", "prior")),
    },
    "k3": {
        "unet": ("Kandinsky3UNet", "UNet3", "k3.unet.json", ("tiny-k3", "unet")),
        "movq": ("VQModel", "MoVQ", "k3.movq.json", ("tiny-k3", "movq")),
    },
}
NATIVE = {"k21": 768, "k22": 768, "k3": 1024}
TIMESTEP = 500


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="a CUDA device (default cuda)")
    p.add_argument("--dtypes", default="fp16,bf16", help="comma list of fp16, bf16")
    p.add_argument("--families", default="k22,k21,k3", help="comma list of k21, k22, k3")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument(
        "--compile-families",
        default="k22",
        help="families whose rows also run under torch.compile, in the first dtype only (default k22: "
        "compiling every model in both dtypes takes far more than 8 minutes)",
    )
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--dry-run", action="store_true", help="tiny configs on the CPU in fp32: checks the script"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="markdown file for the table (default BENCHMARKS.md)"
    )
    a = p.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False); "
              "use --dry-run to check the script on the CPU", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    for name, allowed in (("dtypes", ("fp16", "bf16")), ("families", tuple(SPECS))):
        bad = sorted(set(getattr(a, name).split(",")) - set(allowed))
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {','.join(allowed)}")
    return a


def settings(a: argparse.Namespace, dtype_name: str) -> Settings:
    dry = a.dry_run
    return Settings(device=torch.device("cpu" if dry else a.device), dtype_name="fp32" if dry else dtype_name,
                    repeats=1 if dry else a.repeats, warmup=0 if dry else 3, cold_repeats=1, size=64 if dry else 768,
                    movq_sizes=(32, 64) if dry else (512, 768, 1024), memory_sizes=(), steps=2 if dry else 50,
                    e2e_size=64 if dry else 768, tiny_size=64, tiny_steps=2, tiny_repeats=1, tiny_threads=0,
                    weights=OUT / "weights", quick=dry)  # fmt: skip


# ------------------------------------------------------------------------------------------ models


def spec_config(family: str, part: str, dry: bool) -> dict[str, Any]:
    _, _, official, (tiny, comp) = SPECS[family][part]
    if dry:
        return json.loads((CONFIGS / f"{tiny}.json").read_text())["components"][comp]["kwargs"]
    return json.loads((CONFIGS / official).read_text())


def fill_(model: nn.Module) -> None:
    """Seeded N(0, 0.02) on the model's own device (norm weights 1, biases 0), as common.fill_."""
    torch.manual_seed(0)
    done: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if "Norm" in type(m).__name__:
                for name, v in (("weight", 1.0), ("bias", 0.0)):
                    p = getattr(m, name, None)
                    if isinstance(p, torch.Tensor):
                        p.fill_(v)
                        done.add(id(p))
        for p in model.parameters():
            if id(p) not in done:
                p.normal_(0.0, 0.02)
        if hasattr(model, "clip_std"):
            model.clip_std.fill_(1.0)
            model.clip_mean.zero_()


def pair(family: str, part: str, s: Settings) -> tuple[nn.Module, nn.Module]:
    """(kandi model, diffusers model) with the same random weights, on the device in s.dtype, eval."""
    import diffusers

    import kandi

    dcls, kcls, _, _ = SPECS[family][part]
    cfg = spec_config(family, part, s.quick)
    with torch.device(s.device):
        d = getattr(diffusers, dcls).from_config(cfg)
        fill_(d)
        k = getattr(kandi, kcls).from_config(d.config)
    k.load_state_dict(getattr(kandi, kcls).convert_state_dict(d.state_dict()), strict=True)
    return k.to(dtype=s.dtype).eval(), d.to(dtype=s.dtype).eval()


# ------------------------------------------------------------------------------------------ inputs


def unet_kwargs(family: str, cfg: Any, s: Settings, size: int) -> dict[str, Any]:
    """A guided batch-2 step's inputs, sized from the model's config."""
    g = torch.Generator().manual_seed(1)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(s.device, s.dtype)  # noqa: E731
    kw: dict[str, Any] = {"sample": rnd(2, cfg.in_channels, size // 8, size // 8),
                          "timestep": torch.tensor(TIMESTEP, device=s.device)}  # fmt: skip
    if family == "k22":
        kw |= {
            "encoder_hidden_states": None,
            "added_cond_kwargs": {"image_embeds": rnd(2, cfg.encoder_hid_dim)},
        }
    elif family == "k21":
        embeds = {
            "text_embeds": rnd(2, cfg.cross_attention_dim),
            "image_embeds": rnd(2, cfg.cross_attention_dim),
        }
        kw |= {"encoder_hidden_states": rnd(2, 77, cfg.encoder_hid_dim), "added_cond_kwargs": embeds}
    else:
        mask = torch.zeros(2, 20, dtype=torch.long, device=s.device)
        mask[0, :3], mask[1, :12] = 1, 1
        kw |= {"encoder_hidden_states": rnd(2, 20, cfg.encoder_hid_dim), "encoder_attention_mask": mask}
    return kw


def prior_kwargs(cfg: Any, s: Settings) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    n, dim = cfg.num_embeddings, cfg.embedding_dim
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, :2], mask[1, : min(12, n)] = True, True
    kw = {"hidden_states": torch.randn(2, dim, generator=g), "proj_embedding": torch.randn(2, dim, generator=g),
          "encoder_hidden_states": torch.randn(2, n, dim, generator=g)}  # fmt: skip
    kw = {k: v.to(s.device, s.dtype) for k, v in kw.items()}
    return kw | {"timestep": torch.tensor(TIMESTEP, device=s.device), "attention_mask": mask.to(s.device)}


# ------------------------------------------------------------------------------------------- rows


def timed_pair(label: str, k: Callable[[], Any], d: Callable[[], Any], s: Settings, report: Report,
               weights: tuple[float, float], note: str) -> None:  # fmt: skip
    t0 = time.perf_counter()
    with torch.inference_mode():  # the first calls: where torch.compile compiles
        k(), d()
    sync(s.device)
    first = time.perf_counter() - t0
    times, outs, peaks = time_interleaved({"k": k, "d": d}, s)
    report.add(
        pair_row(label, "k", "d", times, outs, peaks, s, f"{note}; first calls {first:.1f} s", weights)
    )


def bench_family(family: str, s: Settings, report: Report, compile_modes: list[bool]) -> None:
    tag = f"{family} {s.dtype_name}"
    for part in SPECS[family]:
        k, d = pair(family, part, s)
        gb = size_gb(k, d)
        for compiled in compile_modes:
            mode = "compile" if compiled else "eager"
            kf, df = (torch.compile(k), torch.compile(d)) if compiled else (k, d)
            if part == "unet":
                size = 64 if s.quick else NATIVE[family]
                kw = unet_kwargs(family, k.config, s, size)
                timed_pair(f"{tag} unet step {size}² {mode}", lambda kf=kf, kw=kw: kf(**kw, return_dict=False)[0],
                           lambda df=df, kw=kw: df(**kw, return_dict=False)[0], s, report, gb, "batch 2")  # fmt: skip
            elif part == "prior":
                kw = prior_kwargs(k.config, s)
                timed_pair(f"{tag} prior step {mode}", lambda kf=kf, kw=kw: kf(**kw).predicted_image_embedding,
                           lambda df=df, kw=kw: df(**kw).predicted_image_embedding, s, report, gb, "batch 2")  # fmt: skip
            else:
                bench_decode(tag, mode, k, d, compiled, s, report, gb)
        del k, d
        free(s.device)


def bench_decode(tag: str, mode: str, k: Any, d: Any, compiled: bool, s: Settings, report: Report,
                 gb: tuple[float, float]) -> None:  # fmt: skip
    k.disable_tiling()  # the same computation as diffusers
    kdec, ddec = (torch.compile(k.decode), torch.compile(d.decode)) if compiled else (k.decode, d.decode)
    factor = 2 ** (len(k.config.block_out_channels) - 1)
    for size in s.movq_sizes:
        z = torch.randn(1, 4, size // factor, size // factor, generator=torch.Generator().manual_seed(2))
        z = z.to(s.device, s.dtype)
        timed_pair(f"{tag} movq decode {size}² {mode}", lambda z=z: kdec(z).sample, lambda z=z: ddec(z).sample,
                   s, report, gb, "batch 1")  # fmt: skip


def k22_pipelines(s: Settings) -> tuple[Any, Any]:
    """(kandi, diffusers) KandinskyV22CombinedPipeline with the same random weights; the CLIP encoders,
    tokenizer and image processor (transformers objects) are shared."""
    import diffusers
    import transformers

    import kandi

    tiny = tests_helpers()
    unet_k, unet_d = pair("k22", "unet", s)
    movq_k, movq_d = pair("k22", "movq", s)
    prior_k, prior_d = pair("k22", "prior", s)
    if s.quick:
        shared = tiny.k22_prior_components(OUT / "gpu-dry-run-vocab")
        shared = {n: shared[n] for n in ("text_encoder", "image_encoder", "tokenizer", "image_processor")}
    else:
        cfg = lambda name: json.loads((CONFIGS / f"k22-prior.{name}.json").read_text())  # noqa: E731
        with torch.device(s.device):
            text = transformers.CLIPTextModelWithProjection(
                transformers.CLIPTextConfig.from_dict(cfg("text_encoder"))
            )
            image = transformers.CLIPVisionModelWithProjection(
                transformers.CLIPVisionConfig.from_dict(cfg("image_encoder"))
            )
        fill_(text), fill_(image)
        shared = {"text_encoder": text, "image_encoder": image, "tokenizer": tiny.clip_tokenizer(OUT / "gpu-vocab"),
                  "image_processor": transformers.CLIPImageProcessor(**cfg("image_processor"))}  # fmt: skip
    for n in ("text_encoder", "image_encoder"):
        shared[n] = shared[n].to(s.device, s.dtype).eval()
    prior_sched = json.loads((CONFIGS / "k22-prior.scheduler.json").read_text())
    dec_sched = json.loads((CONFIGS / "k22-decoder.scheduler.json").read_text())
    pipes = []
    for lib, unet, movq, prior in ((kandi, unet_k, movq_k, prior_k), (diffusers, unet_d, movq_d, prior_d)):
        pipe = lib.KandinskyV22CombinedPipeline(
            unet=unet, scheduler=lib.DDPMScheduler.from_config(dec_sched), movq=movq, prior_prior=prior,
            prior_scheduler=lib.UnCLIPScheduler.from_config(prior_sched),
            **{f"prior_{n}": v for n, v in shared.items()},
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        pipes.append(pipe)
    return pipes[0], pipes[1]


def bench_e2e(s: Settings, report: Report) -> None:
    k, d = k22_pipelines(s)
    prior_steps = max(2, s.steps // 2)  # UnCLIP needs 2 or more
    kw = {"height": s.e2e_size, "width": s.e2e_size, "num_inference_steps": s.steps,
          "prior_num_inference_steps": prior_steps, "output_type": "pt"}  # fmt: skip

    def make(pipe: Any) -> Callable[[], Any]:
        return lambda: pipe(PROMPT, **kw, generator=torch.Generator().manual_seed(0)).images

    label = f"k22 {s.dtype_name} one image {s.e2e_size}², {prior_steps} prior + {s.steps} decoder steps eager"
    timed_pair(label, make(k), make(d), s, report, (0.0, 0.0), "combined pipeline; VRAM: what the call adds")


# ---------------------------------------------------------------------------------------------- main


def markdown(report: Report, a: argparse.Namespace, wall: float) -> str:
    info = report.info
    head = (f"Command `{info['command']}`, {info['date']}, {info.get('gpu', 'CPU (dry run)')}, CUDA "
            f"{info.get('cuda')}, torch {info['torch']}, diffusers {info['diffusers']}, wall {wall:.0f} s.")  # fmt: skip
    rows = ["| measurement | kandi s | diffusers s | ratio | best | max abs diff | VRAM GB kandi / diffusers | note |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in report.rows:
        vram = "-" if r.kandi_peak_gb is None else f"{r.kandi_peak_gb:.2f} / {r.diffusers_peak_gb:.2f}"
        rows.append(f"| {r.name} | {r.kandi_s:.4f} | {r.diffusers_s:.4f} | {r.ratio:.2f}x | {r.ratio_min:.2f}x | "
                    f"{r.diff:.2e} | {vram} | {r.note} |")  # fmt: skip
    return "\n".join([START, "", head, "", *rows, "", END])


def write_table(text: str, path: Path) -> None:
    """Replace the previous bench_gpu.py table in `path` (between its markers), else append it."""
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n## GPU: bench/bench_gpu.py\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    quiet_libraries()
    start = time.perf_counter()
    compile_modes = [False] + ([] if a.no_compile or a.dry_run else [True])  # CPU inductor: minutes per model
    dtypes = ["fp32"] if a.dry_run else a.dtypes.split(",")
    report = Report(info=machine_info(settings(a, dtypes[0])))
    print(json.dumps(report.info))
    print(table_header(not a.dry_run))
    failed = []
    for dtype_name in dtypes:
        s = settings(a, dtype_name)
        assert s.dtype in DTYPES.values()
        for family in a.families.split(","):
            compiled = dtype_name == dtypes[0] and family in a.compile_families.split(",")
            try:
                bench_family(family, s, report, compile_modes if compiled else [False])
            except Exception as e:  # one failing family must not lose the others' figures
                failed.append(f"{family} {dtype_name}: {type(e).__name__}: {e}")
                print(f"  !! {failed[-1]}", flush=True)
        if "k22" in a.families.split(","):
            try:
                bench_e2e(s, report)
            except Exception as e:
                failed.append(f"k22 e2e {dtype_name}: {type(e).__name__}: {e}")
                print(f"  !! {failed[-1]}", flush=True)
    wall = time.perf_counter() - start
    for r in report.rows:
        print(format_row(r))
    out = a.out or (OUT / "gpu-dry-run.md" if a.dry_run else BENCHMARKS)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(markdown(report, a, wall), out)
    print(f"table written to {out}; wall {wall:.0f} s")
    bad = [r.name for r in report.rows if not r.ok]
    for msg in failed + [f"outputs disagree: {n}" for n in bad]:
        print("FAILED:", msg)
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
