"""kandi vs diffusers on identical full-size Kandinsky 2.2 weights, in one run.

Weights are random: each diffusers model is built from the official config on the meta device, filled
with seeded N(0, 0.02) values (norm weights 1, biases of norms 0) and saved once with `save_pretrained`
into a cache folder; both libraries then load the SAME safetensors files. Every measurement checks that
the two outputs agree (max abs diff), so the benchmark also proves parity at full size.

    python bench/bench_k22.py                      # CPU fp32, everything
    python bench/bench_k22.py --quick              # validate the script (1 repeat, 256x256)
    python bench/bench_k22.py --device cuda --dtype fp16
    python bench/bench_k22.py --only unet,prior --repeats 5

This is a script, not a test: it prints a table (ratio = diffusers / kandi, > 1 means kandi is faster)
and writes bench/out/results-<device>.json. It exits 1 if any output pair disagrees or a part fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "data" / "configs"
OUT = ROOT / "bench" / "out"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# agreement: max |kandi - diffusers| <= TOL * max |diffusers| (fp16/bf16 kernels may reorder sums)
TOL = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 8e-2}
PARTS = ("unet", "movq", "prior", "cold", "tiny")
FILL_STD = 0.02
SEED = 0
# component -> (diffusers class, kandi class, official config file)
MODELS = {
    "unet": ("UNet2DConditionModel", "UNet2", "k22-decoder.unet.json"),
    "movq": ("VQModel", "MoVQ", "k22-decoder.movq.json"),
    "prior": ("PriorTransformer", "Prior", "k22-prior.prior.json"),
}
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
TIMESTEP = 500
PROMPT = "a red fox in a snowy forest, highly detailed"


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    device: torch.device
    dtype_name: str
    repeats: int
    warmup: int
    cold_repeats: int
    size: int  # image side in pixels for the UNet and MoVQ (latents are size / 8)
    tiny_size: int
    tiny_steps: int
    tiny_repeats: int
    tiny_threads: int  # torch intra-op threads for the tiny pipeline on CPU (0: torch's default)
    weights: Path
    quick: bool
    kandi_dtype_name: str | None = None  # --kandi-dtype: kandi's own (opt-in bf16) against diffusers'

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def kdtype(self) -> torch.dtype:
        return DTYPES[self.kandi_dtype_name or self.dtype_name]

    @property
    def tol_name(self) -> str:
        """The looser of the two dtypes' output tolerances."""
        names = (self.dtype_name, self.kandi_dtype_name or self.dtype_name)
        return max(names, key=lambda n: TOL[n])

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def latent(self) -> int:
        return self.size // 8


def parse_args(argv: list[str] | None = None) -> tuple[Settings, list[str], Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument(
        "--kandi-dtype",
        choices=sorted(DTYPES),
        help="run kandi in this dtype against diffusers in --dtype (e.g. bf16 vs fp32: the opt-in bf16 path, "
        "channels-last on a CPU with native bf16); unet, movq and prior only",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5 cpu, 10 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1 cpu, 3 cuda)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="1 repeat, 256x256, 5 tiny steps: checks the script")
    p.add_argument(
        "--weights", type=Path, default=OUT / "weights", help="cache of the random full-size weights"
    )
    p.add_argument(
        "--tiny-threads",
        type=int,
        default=1,
        help="CPU threads for the tiny pipeline (default 1; 0: torch's default). Its ops take microseconds: "
        "intra-op threading only adds barriers, which swing its time 10x on a busy machine",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON results (default bench/out/results-<device>.json)"
    )
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if device.type == "cpu" and a.dtype != "fp32":
        print(f"note: {a.dtype} on CPU is supported by torch but slow; the reference figures are fp32")
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = sorted(set(only) - set(PARTS))
    if bad:
        p.error(f"--only: unknown part(s) {bad}; choose from {','.join(PARTS)}")
    cuda = device.type == "cuda"
    repeats = 1 if a.quick else (a.repeats or (10 if cuda else 5))
    warmup = (
        a.warmup if a.warmup is not None else (1 if a.quick and cuda else 0 if a.quick else 3 if cuda else 1)
    )
    s = Settings(
        device=device,
        dtype_name=a.dtype,
        repeats=repeats,
        warmup=warmup,
        cold_repeats=min(repeats, 3),
        size=256 if a.quick else 512,
        tiny_size=64,
        tiny_steps=5 if a.quick else 25,
        tiny_repeats=repeats if a.quick else max(repeats, 7),
        tiny_threads=a.tiny_threads if device.type == "cpu" else 0,
        weights=a.weights.resolve(),
        quick=a.quick,
        kandi_dtype_name=a.kandi_dtype,
    )
    suffix = "-quick" if a.quick else ""
    out = a.out or OUT / f"results-{device.type}{suffix}.json"
    return s, only, out


# ------------------------------------------------------------------------------------------- results


@dataclass
class Row:
    name: str
    kandi: list[float]
    diffusers: list[float]
    diff: float | None = None  # max |kandi - diffusers| of the outputs
    ref: float | None = None  # max |diffusers output|
    ok: bool = True
    kandi_peak_gb: float | None = None
    diffusers_peak_gb: float | None = None
    note: str = ""

    @property
    def kandi_s(self) -> float:
        return statistics.median(self.kandi)

    @property
    def diffusers_s(self) -> float:
        return statistics.median(self.diffusers)

    @property
    def ratio(self) -> float:
        return self.diffusers_s / self.kandi_s

    @property
    def ratio_min(self) -> float:
        """The ratio of the best runs: less sensitive than the medians to other load on the machine."""
        return min(self.diffusers) / min(self.kandi)

    def to_json(self) -> dict[str, Any]:
        medians = {"kandi_s": self.kandi_s, "diffusers_s": self.diffusers_s}
        return {**asdict(self), **medians, "ratio": self.ratio, "ratio_min": self.ratio_min}


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    loadavg: list[tuple[float, float, float]] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.loadavg.append(os.getloadavg())
        print(format_row(row), flush=True)


def compare(name: str, a: torch.Tensor, b: torch.Tensor, dtype_name: str) -> tuple[float, float, bool]:
    """(max |a - b|, max |b|, agree?) for kandi output `a` and diffusers output `b`."""
    a, b = torch.as_tensor(a).float().cpu(), torch.as_tensor(b).float().cpu()
    if a.shape != b.shape:
        print(f"  !! {name}: shapes differ, kandi {tuple(a.shape)} vs diffusers {tuple(b.shape)}")
        return float("inf"), float(b.abs().max()), False
    diff, ref = float((a - b).abs().max()), float(b.abs().max())
    ok = bool(torch.isfinite(a).all()) and diff <= TOL[dtype_name] * max(ref, 1e-6)
    if not ok:
        print(f"  !! {name}: outputs disagree: max|diff| {diff:.3g} vs max|ref| {ref:.3g}")
    return diff, ref, ok


NAME_W = 40


def format_row(r: Row) -> str:
    diff = "-" if r.diff is None else f"{r.diff:.2e}"
    mem = ""
    if r.kandi_peak_gb is not None:
        mem = f" {r.kandi_peak_gb:7.2f} {r.diffusers_peak_gb:7.2f}"
    times = f"{r.kandi_s:9.3f} {r.diffusers_s:11.3f} {r.ratio:6.2f}x {r.ratio_min:6.2f}x"
    return f"{r.name:{NAME_W}s} {times} {diff:>9s}{mem}  {r.note}".rstrip()


def table_header(cuda: bool) -> str:
    mem = f" {'GB kandi':>7s} {'GB diff':>7s}" if cuda else ""
    cols = f"{'kandi s':>9s} {'diffusers s':>11s} {'ratio':>7s} {'best':>7s} {'max|diff|':>9s}"
    head = f"{'measurement':{NAME_W}s} {cols}{mem}"
    return head + "\n" + "-" * len(head)


# ------------------------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rss_gb() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def memory_line(tag: str) -> str:
    return f"  [{tag}] rss {rss_gb():.1f} GB, peak rss {peak_rss_gb():.1f} GB, load {os.getloadavg()[0]:.2f}"


def time_interleaved(
    fns: dict[str, Callable[[], Any]], s: Settings, repeats: int | None = None
) -> tuple[dict[str, list[float]], dict[str, Any], dict[str, float | None]]:
    """Warm up each fn, then time `s.repeats` rounds, alternating the order every round (so slow drift
    of the machine's load hits both libraries alike). Returns times, last outputs and, on CUDA, the
    peak GPU memory each call allocated on top of what was allocated before it (GB)."""
    names = list(fns)
    outs: dict[str, Any] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float | None] = {n: None for n in names}
    with torch.inference_mode():
        for _ in range(s.warmup):
            for n in names:
                outs[n] = fns[n]()
        sync(s.device)
        for i in range(s.repeats if repeats is None else repeats):
            for n in names if i % 2 == 0 else names[::-1]:
                sync(s.device)
                if s.cuda:
                    torch.cuda.reset_peak_memory_stats(s.device)
                    base = torch.cuda.memory_allocated(s.device)
                t0 = time.perf_counter()
                outs[n] = fns[n]()
                sync(s.device)
                times[n].append(time.perf_counter() - t0)
                if s.cuda:
                    gb = (torch.cuda.max_memory_allocated(s.device) - base) / 2**30
                    peaks[n] = max(peaks[n] or 0.0, gb)
    return times, outs, peaks


def pair_row(
    name: str,
    kandi: str,
    diffusers: str,
    times: dict[str, list[float]],
    outs: dict[str, Any],
    peaks: dict[str, float | None],
    s: Settings,
    note: str = "",
    weights_gb: tuple[float, float] = (0.0, 0.0),
) -> Row:
    """A kandi-vs-diffusers row; GPU peak = the model's own weights + what its call allocated on top."""
    diff, ref, ok = compare(name, outs[kandi], outs[diffusers], s.tol_name)
    pk, pd = peaks[kandi], peaks[diffusers]
    if pk is not None and pd is not None:
        pk, pd = pk + weights_gb[0], pd + weights_gb[1]
    return Row(name, times[kandi], times[diffusers], diff, ref, ok, pk, pd, note)


def size_gb(*models: nn.Module) -> tuple[float, ...]:
    """Bytes of parameters and buffers of each model, in GB."""
    return tuple(
        sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) / 2**30 for m in models
    )


# ------------------------------------------------------------------------------------------- weights


def fill_(model: nn.Module, seed: int) -> None:
    """Deterministic random values: N(0, FILL_STD) everywhere, norms at weight 1 / bias 0."""
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm | nn.LayerNorm):
                for p, v in ((m.weight, 1.0), (m.bias, 0.0)):
                    if p is not None:
                        p.fill_(v)
                        done.add(id(p))
        for _, p in sorted(model.named_parameters()):
            if id(p) not in done:
                nn.init.normal_(p, std=FILL_STD, generator=g)
        if hasattr(model, "clip_std"):  # the prior's CLIP statistics: an identity de-normalisation
            model.clip_std.fill_(1.0)
            model.clip_mean.zero_()


def weights_dir(s: Settings, part: str) -> Path:
    """The saved diffusers folder of `part`; built (meta device, filled, saved) on first use."""
    import diffusers

    dcls_name, _, cfg_file = MODELS[part]
    cfg = json.loads((CONFIGS / cfg_file).read_text())
    folder = s.weights / part
    stamp = {"config": cfg, "seed": SEED, "std": FILL_STD}
    stamp_file = folder / "bench-stamp.json"
    if (folder / WEIGHTS_FILE).is_file() and stamp_file.is_file():
        if json.loads(stamp_file.read_text()) == stamp:
            return folder
    print(f"  building random full-size {dcls_name} weights in {folder} (once) ...", flush=True)
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = getattr(diffusers, dcls_name).from_config(cfg)
    model = model.to_empty(device="cpu")
    fill_(model, SEED)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    gc.collect()
    (tmp / "bench-stamp.json").write_text(json.dumps(stamp, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"  ... done in {time.perf_counter() - t0:.1f} s; {memory_line('after save')}", flush=True)
    return folder


def load_pair(part: str, folder: Path, s: Settings) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """(kandi model, diffusers model, load seconds) from the same folder, on the device, in eval mode."""
    import diffusers

    import kandi

    dcls_name, kcls_name, _ = MODELS[part]
    t0 = time.perf_counter()
    k = getattr(kandi, kcls_name).from_pretrained(str(folder), torch_dtype=s.kdtype).to(s.device).eval()
    if s.device.type == "cpu" and s.kdtype == torch.bfloat16:  # the CLI's --dtype bf16 path
        from kandi import fast

        fast.check_cpu_dtype(torch.bfloat16)
        fast.use_bf16_layout(types.SimpleNamespace(model=k))
    sync(s.device)
    t1 = time.perf_counter()
    d = getattr(diffusers, dcls_name).from_pretrained(str(folder), torch_dtype=s.dtype).to(s.device).eval()
    sync(s.device)
    t2 = time.perf_counter()
    return k, d, {"kandi": t1 - t0, "diffusers": t2 - t1}


# ------------------------------------------------------------------------------------------ measures


def unet_inputs(s: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A classifier-free-guidance pair: latents (2, 4, h, w), image embeds (2, 1280), timestep."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, s.latent, s.latent, generator=g)
    emb = torch.randn(2, 1280, generator=g)
    t = torch.tensor(TIMESTEP, dtype=torch.int64)
    return x.to(s.device, s.dtype), emb.to(s.device, s.dtype), t.to(s.device)


def bench_unet(s: Settings, report: Report) -> None:
    folder = weights_dir(s, "unet")
    k, d, loads = load_pair("unet", folder, s)
    report.info["load_unet_s"] = loads
    print(
        f"  loaded: kandi {loads['kandi']:.2f} s, diffusers {loads['diffusers']:.2f} s; {memory_line('unet')}"
    )
    x, emb, t = unet_inputs(s)
    added = {"image_embeds": emb}
    xk, kadded = x.to(s.kdtype), {"image_embeds": emb.to(s.kdtype)}
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


def bench_movq(s: Settings, report: Report) -> None:
    folder = weights_dir(s, "movq")
    k, d, loads = load_pair("movq", folder, s)
    report.info["load_movq_s"] = loads
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, s.latent, s.latent, generator=g).to(s.device, s.dtype)
    fns = {
        "d": lambda: d.decode(z, force_not_quantize=True).sample,
        "k": lambda: k.decode(z.to(s.kdtype), force_not_quantize=True).sample,
    }
    times, outs, peaks = time_interleaved(fns, s)
    label = f"movq decode -> {s.size}x{s.size}"
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
    folder = weights_dir(s, "prior")
    k, d, loads = load_pair("prior", folder, s)
    report.info["load_prior_s"] = loads
    kw = prior_inputs(s)
    kkw = {n: v.to(s.kdtype) if v.is_floating_point() else v for n, v in kw.items()}
    fns = {
        "d": lambda: d(**kw).predicted_image_embedding,
        "k": lambda: k(**kkw).predicted_image_embedding,
    }
    times, outs, peaks = time_interleaved(fns, s)
    report.add(pair_row("prior step (77 tokens)", "k", "d", times, outs, peaks, s, "batch 2", size_gb(k, d)))


# the child of a cold start: everything it does is timed, from interpreter start to the first step's end
COLD_CHILD = r"""
import sys, time
t0 = time.perf_counter()
lib, folder, device, dtype_name, latent, timestep, out = sys.argv[1:]
import torch
if lib == "kandi":
    from kandi import UNet2 as Model
else:
    from diffusers import UNet2DConditionModel as Model
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
t1 = time.perf_counter()
model = Model.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
sync()
t2 = time.perf_counter()
g = torch.Generator().manual_seed(1)  # the inputs of bench_k22.unet_inputs
n = int(latent)
x = torch.randn(2, 4, n, n, generator=g).to(device, dtype)
emb = torch.randn(2, 1280, generator=g).to(device, dtype)
t = torch.tensor(int(timestep), dtype=torch.int64, device=device)
with torch.inference_mode():
    y = model(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}, return_dict=False)[0]
sync()
t3 = time.perf_counter()
torch.save(y.float().cpu(), out)
print("COLD", t1 - t0, t2 - t1, t3 - t2, flush=True)
"""


def read_through(path: Path) -> None:
    """Read a file once so that every cold start begins with it in the OS page cache (fair to both)."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def cold_once(lib: str, folder: Path, s: Settings, out: Path) -> dict[str, float]:
    read_through(folder / WEIGHTS_FILE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFUSERS_NO_ADVISORY_WARNINGS": "1", "TQDM_DISABLE": "1"}
    argv = [
        sys.executable,
        "-c",
        COLD_CHILD,
        lib,
        str(folder),
        str(s.device),
        s.dtype_name,
        str(s.latent),
        str(TIMESTEP),
        str(out),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    total = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("COLD ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(
            f"cold start of {lib} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
        )
    imp, load, step = (float(v) for v in line.split()[1:])
    return {"total": total, "import": imp, "load": load, "step": step}


def bench_cold(s: Settings, report: Report) -> None:
    folder = weights_dir(s, "unet")
    tmp = OUT / "cold"
    tmp.mkdir(parents=True, exist_ok=True)
    libs = ("kandi", "diffusers")
    runs: dict[str, list[dict[str, float]]] = {lib: [] for lib in libs}
    for _ in range(min(s.warmup, 1)):  # one untimed start each: .pyc files and the libraries' pages cached
        for lib in libs:
            cold_once(lib, folder, s, tmp / f"{lib}.pt")
    for i in range(s.cold_repeats):
        for lib in libs if i % 2 == 0 else libs[::-1]:
            runs[lib].append(cold_once(lib, folder, s, tmp / f"{lib}.pt"))
            print(
                f"  cold {lib}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[lib][-1].items()), flush=True
            )
    diff, ref, ok = compare(
        "cold start", torch.load(tmp / "kandi.pt"), torch.load(tmp / "diffusers.pt"), s.dtype_name
    )
    px = f"{s.size}x{s.size}"
    labels = {
        "total": f"cold start total (unet, {px})",
        "import": "  cold: import",
        "load": "  cold: load unet",
        "step": "  cold: first unet step",
    }
    for key, label in labels.items():
        row = Row(label, [r[key] for r in runs["kandi"]], [r[key] for r in runs["diffusers"]])
        if key == "total":
            row.diff, row.ref, row.ok, row.note = diff, ref, ok, "fresh process, weights in page cache"
        report.add(row)


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

    def run(name: str) -> Any:
        return pipes[name](**kw, generator=torch.Generator().manual_seed(0)).images

    threads = torch.get_num_threads()
    if s.tiny_threads:
        torch.set_num_threads(s.tiny_threads)
    try:
        fns = {"d": lambda: run("d"), "k": lambda: run("k")}
        times, outs, peaks = time_interleaved(fns, s, s.tiny_repeats)
    finally:
        torch.set_num_threads(threads)
    label = f"tiny pipeline {s.tiny_size}x{s.tiny_size} ({s.tiny_steps}+{s.tiny_steps} steps)"
    note = "combined, end to end" + (f", {s.tiny_threads} thread(s)" if s.tiny_threads else "")
    report.add(pair_row(label, "k", "d", times, outs, peaks, s, note))


# ---------------------------------------------------------------------------------------------- main


def machine_info(s: Settings) -> dict[str, Any]:
    import diffusers

    import kandi

    cpu = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), ""
        )
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "kandi": kandi.__version__,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 2**20, 1),
        "device": str(s.device),
        "dtype": s.dtype_name,
        "kandi_dtype": s.kandi_dtype_name or s.dtype_name,
        "repeats": s.repeats,
        "warmup": s.warmup,
        "cold_repeats": s.cold_repeats,
        "size": s.size,
        # allocator and threading settings change the CPU figures (see BENCHMARKS.md)
        "env": {
            k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "MKL_", "LD_PRELOAD"))
        },
    }
    if s.cuda:
        info["gpu"] = torch.cuda.get_device_name(s.device)
        info["cuda"] = torch.version.cuda
    return info


def main(argv: list[str] | None = None) -> int:
    s, only, out_path = parse_args(argv)
    import diffusers
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' torch_dtype -> dtype rename
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    report = Report(info=machine_info(s))
    report.loadavg.append(os.getloadavg())
    print(json.dumps(report.info))
    print(f"\n{table_header(s.cuda)}", flush=True)
    steps: dict[str, Callable[[Settings, Report], None]] = {
        "unet": bench_unet,
        "movq": bench_movq,
        "prior": bench_prior,
        "cold": bench_cold,
        "tiny": bench_tiny,
    }
    errors = {}
    for part in PARTS:
        if part not in only:
            continue
        try:
            steps[part](s, report)  # its models die with its frame: one full-size pair alive at a time
        except Exception as e:  # one failing part must not lose the figures of the others
            traceback.print_exc()
            errors[part] = f"{type(e).__name__}: {e}"
        free(s.device)
        print(memory_line(f"{part} done, freed"), flush=True)
    wall = time.perf_counter() - start
    report.loadavg.append(os.getloadavg())
    print(f"\n{table_header(s.cuda)}")
    for r in report.rows:
        print(format_row(r))
    loads = [la[0] for la in report.loadavg]
    print(
        f"\nratio = diffusers / kandi (> 1: kandi faster), of the medians of {s.repeats} runs (cold start "
        f"{s.cold_repeats}, tiny pipeline {s.tiny_repeats}) after {s.warmup} warm-up; best = ratio of the minima"
    )
    print(
        f"wall {wall:.0f} s, peak RSS {peak_rss_gb():.1f} GB, 1-min load average {min(loads):.2f}..{max(loads):.2f}"
    )
    report.info.update(wall_s=wall, peak_rss_gb=peak_rss_gb(), loadavg_samples=report.loadavg, errors=errors)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**report.info, "rows": [r.to_json() for r in report.rows]}, indent=1))
    print(f"results: {out_path}")
    failed = [r.name for r in report.rows if not r.ok]
    if failed:
        print(f"OUTPUTS DISAGREE: {failed}")
    if errors:
        print(f"FAILED: {errors}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
