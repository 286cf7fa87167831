"""Time to one Kandinsky 2.2 image per sampler: diffusers' default (100 DDPM steps) against kandi's samplers.

A script, not a test. The decoder pipeline (UNet + MoVQ, full-size random weights made by bench_k22.py's
machinery and saved once by diffusers) runs end to end at 512x512, guidance 4, one image, from the same
image embeddings, in both libraries: diffusers' `KandinskyV22Pipeline` with its own default scheduler and
step count, and kandi's `KandinskyV22Pipeline` with each sampler asked for. The prior (25 UnCLIP steps
and the CLIP text encoder) is the same for every row, so it is not run here: `bench_k22.py` times one
prior step.

    python bench/bench_samplers.py                 # 512x512 on this machine (~40 min on 2 CPU cores)
    python bench/bench_samplers.py --quick         # 128x128, 4 steps each: checks the script runs
    python bench/bench_samplers.py --rows "DDPM:100,DPM++ 2M Karras:25"

Every row is one run (a full-size image costs minutes here); the rows run in the order given, so load on
the machine can still tilt one row: the table shows the 1-minute load average after each row. Speed per
step is the same for every sampler (one UNet call, two images for guidance); the sampler's own arithmetic
is a few tensor ops. Image quality of a sampler on real weights is not measured here: random weights make
noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_k22 as k22  # noqa: E402  (the shared weight cache and settings)
import common  # noqa: E402

DEFAULT_ROWS = "diffusers:100,DPM++ 2M Karras:25,DPM++ 2M Karras:20,UniPC:20,diffusers DPM++ 2M Karras:25"


def parse_rows(text: str) -> list[tuple[str, int]]:
    rows = []
    for item in text.split(","):
        name, _, steps = item.strip().rpartition(":")
        if not name or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"--rows: {item!r} is not SAMPLER:STEPS (e.g. 'DPM++ 2M Karras:25')")
        rows.append((name, int(steps)))
    return rows


def run_row(pipe, size: int, steps: int, device: torch.device) -> tuple[float, int]:
    """Seconds for one image, and the UNet evaluations it took (conv_in runs once per evaluation, in
    both libraries; a 2nd-order sampler evaluates about twice per step)."""
    emb, neg = k22.image_embeds(pipe.unet.dtype)
    calls = []
    hook = pipe.unet.conv_in.register_forward_hook(lambda *_: calls.append(1))
    t0 = time.perf_counter()
    out = pipe(
        image_embeds=emb.to(device),
        negative_image_embeds=neg.to(device),
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    common.sync(device)
    sec = time.perf_counter() - t0
    hook.remove()
    del out
    return sec, len(calls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows", default=DEFAULT_ROWS, help="comma list of SAMPLER:STEPS ('diffusers' = its default)"
    )
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="128x128 and at most 4 steps per row")
    p.add_argument("--weights", type=Path, default=k22.OUT / "weights")
    p.add_argument("--out", type=Path, default=k22.OUT / "samplers.json")
    a = p.parse_args(argv)
    rows = parse_rows(a.rows)
    size = 128 if a.quick else a.size
    device = torch.device(a.device)
    s, _, _ = common.parse_args(__doc__, k22.PARTS, ["--device", a.device, "--weights", str(a.weights)])

    import diffusers

    import kandi

    diffusers.utils.logging.set_verbosity_error()  # its accelerate hint and load bars are not figures
    from kandi.schedulers.names import make_sampler

    folder = k22.decoder_folder(s)
    base = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    pipes: dict[str, object] = {}  # one library's pipeline at a time: two full-size pairs need ~11 GB

    def pipe(lib: str):
        if lib not in pipes:
            pipes.clear()
            gc.collect()
            cls = (diffusers if lib == "diffusers" else kandi).KandinskyV22Pipeline
            pipes[lib] = cls.from_pretrained(folder).to(device)
            pipes[lib].set_progress_bar_config(disable=True)
        return pipes[lib]

    results = []
    ref_time = None
    for name, steps in rows:
        steps = min(steps, 4) if a.quick else steps
        if name == "diffusers" or name.startswith("diffusers "):
            dpipe = pipe("diffusers")
            if name != "diffusers":  # diffusers' own class for a kandi sampler name (right on 2.2 for DPM++)
                ours = make_sampler(name.removeprefix("diffusers "), base)
                dpipe.scheduler = getattr(diffusers, type(ours).__name__).from_config(dict(ours.config))
            label = f"diffusers {type(dpipe.scheduler).__name__}" + (
                f" ({name[10:]})" if name != "diffusers" else ""
            )
            with torch.inference_mode():
                sec, calls = run_row(dpipe, size, steps, device)
            ref_time = sec if name == "diffusers" else ref_time
        else:
            try:
                sampler = make_sampler(name, base)
            except ValueError as e:
                print(f"  skip {name}: {e}")
                continue
            kpipe = pipe("kandi")
            kpipe.scheduler = sampler
            label = f"kandi {name}"
            with torch.inference_mode():
                sec, calls = run_row(kpipe, size, steps, device)
        load = os.getloadavg()[0]
        results.append({"row": label, "steps": steps, "unet_calls": calls, "seconds": sec, "load": load})
        print(
            f"  {label:38s} {steps:4d} steps {calls:4d} UNet calls {sec:9.1f} s   load {load:.2f}", flush=True
        )

    print(
        f"\n| decoder run, {size}x{size}, 1 image, CFG 4 | steps | UNet calls | seconds | vs diffusers default | load |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{ref_time / r['seconds']:.2f}x" if ref_time else "-"
        print(
            f"| {r['row']} | {r['steps']} | {r['unet_calls']} | {r['seconds']:.1f} | {ratio} | {r['load']:.2f} |"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"size": size, "device": str(device), "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
