"""What every kandi-vs-diffusers benchmark shares: settings, timing, result rows, random weights, cold
starts, peak memory in fresh processes, machine info and the main loop.

Weights are random: each model is built from its official config on the meta device, filled with
seeded N(0, 0.02) values (norm weights 1, biases of norms 0) and saved once with `save_pretrained`
into a cache folder; both libraries then load the SAME files. Every timed pair also compares the two
outputs (max abs diff), so a benchmark proves parity at full size too. Used by bench_k22.py,
bench_k21.py, bench_k3.py and bench_gpu.py (run them as `python bench/bench_x.py`: this folder is then
first on sys.path).
"""

from __future__ import annotations

import argparse
import gc
import importlib
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
FILL_STD = 0.02
SEED = 0
TIMESTEP = 500
PROMPT = "a red fox in a snowy forest, highly detailed"
GB = 2**30

# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    device: torch.device
    dtype_name: str
    repeats: int
    warmup: int
    cold_repeats: int
    size: int  # image side in pixels for the UNet (latents are size / 8)
    movq_sizes: tuple[int, ...]  # image sides of the MoVQ decode rows
    memory_sizes: tuple[int, ...]  # image sides of the peak-memory rows (tiled and untiled decode)
    steps: int  # denoising steps of the end-to-end rows (prior steps too)
    e2e_size: int  # image side of the end-to-end rows
    tiny_size: int
    tiny_steps: int
    tiny_repeats: int
    tiny_threads: int  # torch intra-op threads for the tiny pipeline on CPU (0: torch's default)
    weights: Path
    quick: bool
    kandi_dtype_name: str | None = None  # --kandi-dtype: kandi's own (opt-in bf16) against diffusers'
    untiled_max: int = 1024  # largest image side of an untiled MoVQ decode in the memory rows

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


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(doc: str, parts: tuple[str, ...], argv: list[str] | None = None,
               default_steps: int = 25) -> tuple[Settings, list[str], Path]:  # fmt: skip
    """Command line of a benchmark whose measurements are `parts`; `--quick` checks the script."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument(
        "--kandi-dtype",
        choices=sorted(DTYPES),
        help="run kandi in this dtype against diffusers in --dtype (e.g. bf16 vs fp32: the opt-in bf16 path, "
        "channels-last on a CPU with native bf16); the model rows (load_pair) only",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5 cpu, 10 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1 cpu, 3 cuda)")
    p.add_argument("--only", default=",".join(parts), help=f"comma list of {','.join(parts)}")
    p.add_argument("--quick", action="store_true", help="1 repeat, small sizes, 2 steps: checks the script")
    p.add_argument("--size", type=int, default=None, help="UNet image side (default 512; --quick 256)")
    p.add_argument("--movq-sizes", type=sizes, default=None, help="MoVQ decode sides (default 512,768,1024)")
    p.add_argument(
        "--memory-sizes", type=sizes, default=None, help="peak-memory sides (default 768,1024,2048)"
    )
    p.add_argument(
        "--untiled-max",
        type=int,
        default=1024,
        help="memory rows: largest side decoded untiled too (default 1024; 2048 needs about 17 GB free)",
    )
    p.add_argument("--steps", type=int, default=None, help=f"end-to-end steps (default {default_steps})")
    p.add_argument("--e2e-size", type=int, default=None, help="end-to-end image side (default 768)")
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
        "--out", type=Path, default=None, help="JSON results (default bench/out/<name>-<device>.json)"
    )
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if device.type == "cpu" and a.dtype != "fp32":
        print(f"note: {a.dtype} on CPU is supported by torch but slow; the reference figures are fp32")
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = sorted(set(only) - set(parts))
    if bad:
        p.error(f"--only: unknown part(s) {bad}; choose from {','.join(parts)}")
    for name in ("size", "steps", "e2e_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive int")
    cuda, q = device.type == "cuda", a.quick
    repeats = 1 if q else (a.repeats or (10 if cuda else 5))
    warmup = a.warmup if a.warmup is not None else (1 if q and cuda else 0 if q else 3 if cuda else 1)
    s = Settings(
        device=device,
        dtype_name=a.dtype,
        repeats=repeats,
        warmup=warmup,
        cold_repeats=min(repeats, 3),
        size=a.size or (256 if q else 512),
        movq_sizes=a.movq_sizes or ((256,) if q else (512, 768, 1024)),
        memory_sizes=a.memory_sizes or ((256, 512) if q else (768, 1024, 2048)),
        steps=a.steps or (2 if q else default_steps),
        e2e_size=a.e2e_size or (128 if q else 768),
        tiny_size=64,
        tiny_steps=5 if q else 25,
        tiny_repeats=repeats if q else max(repeats, 7),
        tiny_threads=a.tiny_threads if device.type == "cpu" else 0,
        weights=a.weights.resolve(),
        quick=q,
        kandi_dtype_name=a.kandi_dtype,
        untiled_max=a.untiled_max,
    )
    name = Path(sys.argv[0]).stem.removeprefix("bench_") if argv is None else "bench"
    out = a.out or OUT / f"results-{name}-{device.type}{'-quick' if q else ''}.json"
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


NAME_W = 46


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
    """Deterministic random values: N(0, FILL_STD) everywhere, norms (any class named *Norm*, T5's
    RMS norm too) at weight 1 / bias 0."""
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if "Norm" in type(m).__name__:
                for name, v in (("weight", 1.0), ("bias", 0.0)):
                    p = getattr(m, name, None)
                    if isinstance(p, torch.Tensor):
                        p.fill_(v)
                        done.add(id(p))
        for _, p in sorted(model.named_parameters()):
            if id(p) not in done:
                nn.init.normal_(p, std=FILL_STD, generator=g)
        if hasattr(model, "clip_std"):  # the prior's CLIP statistics: an identity de-normalisation
            model.clip_std.fill_(1.0)
            model.clip_mean.zero_()


def build(lib: str, cls_name: str, cfg: dict[str, Any]) -> nn.Module:
    """An empty (meta) model of class `cls_name` of module `lib` (diffusers, transformers, ...) from `cfg`."""
    cls = getattr(importlib.import_module(lib), cls_name)
    with torch.device("meta"):
        if hasattr(cls, "config_class") and hasattr(cls.config_class, "from_dict"):  # transformers models
            return cls(cls.config_class.from_dict(cfg))
        return cls.from_config(cfg)


def weights_dir(s: Settings, name: str, lib: str, cls_name: str, cfg: dict[str, Any]) -> Path:
    """The saved folder of random model `name` (class `cls_name` of `lib`); built once (meta device,
    filled, saved with save_pretrained) and reused while its config, seed and std are unchanged."""
    folder = s.weights / name
    stamp = {"config": cfg, "seed": SEED, "std": FILL_STD, "class": cls_name}
    stamp_file = folder / "bench-stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return folder
    print(f"  building random {cls_name} weights in {folder} (once) ...", flush=True)
    t0 = time.perf_counter()
    model = build(lib, cls_name, cfg).to_empty(device="cpu")
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


def config(file: str, **overrides: Any) -> dict[str, Any]:
    """An official config from tests/data/configs, with `overrides`."""
    return {**json.loads((CONFIGS / file).read_text()), **overrides}


def load_one(
    lib: str, cls_name: str, folder: Path, s: Settings, dtype: torch.dtype | None = None
) -> tuple[nn.Module, float]:
    """(model of `lib` (kandi or diffusers) class `cls_name` from `folder`, on the device, eval; seconds)."""
    module = importlib.import_module(lib)
    t0 = time.perf_counter()
    dtype = dtype or s.dtype
    model = getattr(module, cls_name).from_pretrained(str(folder), torch_dtype=dtype).to(s.device).eval()
    if lib == "kandi" and s.device.type == "cpu" and dtype == torch.bfloat16:  # the CLI's --dtype bf16 path
        from kandi import fast

        fast.check_cpu_dtype(torch.bfloat16)
        fast.use_bf16_layout(types.SimpleNamespace(model=model))
    sync(s.device)
    return model, time.perf_counter() - t0


def load_pair(
    classes: tuple[str, str], folder: Path, s: Settings
) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """(kandi model, diffusers model, load seconds) from the same folder; classes = (diffusers, kandi)."""
    k, tk = load_one("kandi", classes[1], folder, s, s.kdtype)
    d, td = load_one("diffusers", classes[0], folder, s)
    return k, d, {"kandi": tk, "diffusers": td}


# --------------------------------------------------------------------------------------- cold start

# The child of a cold start: everything it does is timed, from interpreter start to the first step's
# end. The bench module (argv) gives the model classes (MODELS) and the first call (cold_step).
COLD_CHILD = r"""
import sys, time
t0 = time.perf_counter()
bench_dir, module, part, lib, folder, device, dtype_name, size, out, warm = sys.argv[1:]
import torch
sys.path.insert(0, bench_dir)
bench = __import__(module)
cls_name = bench.MODELS[part][1 if lib == "kandi" else 0]
Model = getattr(__import__(lib), cls_name)
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
t1 = time.perf_counter()
model = Model.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
sync()
t2 = time.perf_counter()
with torch.inference_mode():
    y = bench.cold_step(model, int(size), torch.device(device), dtype)
sync()
t3 = time.perf_counter()
warm_s = []
for _ in range(int(warm)):  # later calls in this process: each library with its own process settings
    a = time.perf_counter()
    with torch.inference_mode():
        bench.cold_step(model, int(size), torch.device(device), dtype)
    sync()
    warm_s.append(time.perf_counter() - a)
torch.save(y.float().cpu(), out)
print("COLD", t1 - t0, t2 - t1, t3 - t2, *warm_s, flush=True)
"""


def read_through(path: Path) -> None:
    """Read the files of a folder once so every cold start begins with them in the page cache (fair to both)."""
    for f in sorted(path.iterdir()) if path.is_dir() else [path]:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFUSERS_NO_ADVISORY_WARNINGS": "1", "TQDM_DISABLE": "1"}


def cold_once(
    module: str, part: str, lib: str, folder: Path, s: Settings, out: Path, warm: int = 0
) -> dict[str, Any]:
    read_through(folder)
    argv = [sys.executable, "-c", COLD_CHILD, str(ROOT / "bench"), module, part, lib, str(folder),
            str(s.device), s.dtype_name, str(s.size), str(out), str(warm)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    total = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("COLD ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(
            f"cold start of {lib} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
        )
    imp, load, step, *warm_s = (float(v) for v in line.split()[1:])
    return {"total": total - sum(warm_s), "import": imp, "load": load, "step": step, "warm": warm_s}


def bench_cold(
    module: str, part: str, folder: Path, s: Settings, report: Report, what: str, warm: int = 2
) -> None:
    """Cold start rows: a fresh process imports the library, loads `part` and runs its first call;
    then `warm` more calls in that process give the "own process" row: the step as a user's process
    runs it, with the process-wide settings each library makes (kandi keeps freed memory, see
    kandi.fast.keep_freed_memory), which the in-process rows cannot show (both share one allocator)."""
    tmp = OUT / "cold"
    tmp.mkdir(parents=True, exist_ok=True)
    libs = ("kandi", "diffusers")
    runs: dict[str, list[dict[str, float]]] = {lib: [] for lib in libs}
    for _ in range(min(s.warmup, 1)):  # one untimed start each: .pyc files and the libraries' pages cached
        for lib in libs:
            cold_once(module, part, lib, folder, s, tmp / f"{lib}.pt")
    for i in range(s.cold_repeats):
        for lib in libs if i % 2 == 0 else libs[::-1]:
            runs[lib].append(cold_once(module, part, lib, folder, s, tmp / f"{lib}.pt", warm))
            got = runs[lib][-1]
            print(f"  cold {lib}: " + ", ".join(f"{k} {v:.2f} s" for k, v in got.items() if k != "warm")
                  + "; then " + ", ".join(f"{v:.2f}" for v in got["warm"]) + " s", flush=True)  # fmt: skip
    diff, ref, ok = compare("cold start", torch.load(tmp / "kandi.pt", weights_only=True),
                            torch.load(tmp / "diffusers.pt", weights_only=True), s.dtype_name)  # fmt: skip
    labels = {"total": f"cold start total ({what})", "import": "  cold: import", "load": f"  cold: load {part}",
              "step": f"  cold: first {part} call"}  # fmt: skip
    for key, label in labels.items():
        row = Row(label, [r[key] for r in runs["kandi"]], [r[key] for r in runs["diffusers"]])
        if key == "total":
            row.diff, row.ref, row.ok, row.note = diff, ref, ok, "fresh process, weights in page cache"
        report.add(row)
    if warm:
        row = Row(f"{part} call, own process ({what}, calls 2-{warm + 1})",
                  [v for r in runs["kandi"] for v in r["warm"]], [v for r in runs["diffusers"] for v in r["warm"]],
                  note="each library alone in a fresh process, with its own process settings")  # fmt: skip
        report.add(row)


# -------------------------------------------------------------------------------------- peak memory

# The child of a peak-memory case: load the model, reset the kernel's peak-RSS mark (VmHWM) by writing 5
# to /proc/self/clear_refs, run the call once, and report VmHWM minus the RSS before the call: the memory
# the call itself needed, in a process whose allocator has no pages cached from other cases.
PEAK_CHILD = r"""
import sys, time
bench_dir, module, case, out = sys.argv[1:]
import torch
sys.path.insert(0, bench_dir)
bench = __import__(module)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":")) * 1024
run = bench.peak_case(case)  # loads what the case needs, returns the call to measure
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
t0 = time.perf_counter()
with torch.inference_mode():
    y = run()
seconds = time.perf_counter() - t0
peak = status("VmHWM")
torch.save(y.float().cpu(), out)
print("PEAK", peak - base, peak, seconds, flush=True)
"""


def peak_once(module: str, case: str, out: Path) -> dict[str, float]:
    """{"delta_gb", "peak_gb", "seconds"} of one case of `module.peak_case` in a fresh process (CPU)."""
    argv = [sys.executable, "-c", PEAK_CHILD, str(ROOT / "bench"), module, case, str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(
            f"peak case {case} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
        )
    delta, peak, seconds = (float(v) for v in line.split()[1:])
    return {"delta_gb": delta / GB, "peak_gb": peak / GB, "seconds": seconds}


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
        "steps": s.steps,
        # allocator and threading settings change the CPU figures (see BENCHMARKS.md)
        "env": {
            k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "MKL_", "LD_PRELOAD"))
        },
    }
    if s.cuda:
        info["gpu"] = torch.cuda.get_device_name(s.device)
        info["cuda"] = torch.version.cuda
    return info


def quiet_libraries() -> None:
    import diffusers
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' torch_dtype -> dtype rename
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def run(s: Settings, only: list[str], out_path: Path, steps: dict[str, Callable[[Settings, Report], None]],
        footnote: str = "") -> int:  # fmt: skip
    """Run the parts in `only` (in `steps` order), print the table, write the JSON; 1 if anything failed."""
    quiet_libraries()
    start = time.perf_counter()
    report = Report(info=machine_info(s))
    report.loadavg.append(os.getloadavg())
    print(json.dumps(report.info))
    print(f"\n{table_header(s.cuda)}", flush=True)
    errors = {}
    for part, fn in steps.items():
        if part not in only:
            continue
        try:
            fn(s, report)  # its models die with its frame: one full-size pair alive at a time
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
    print(f"\nratio = diffusers / kandi (> 1: kandi faster), of the medians of {s.repeats} runs (cold start "
          f"{s.cold_repeats}) after {s.warmup} warm-up; best = ratio of the minima{footnote}")  # fmt: skip
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


# ----------------------------------------------------------------------------------- end to end


def assemble_repo(
    tiny_repo: Path, dest: Path, full: dict[str, Path], edits: dict[str, dict] | None = None
) -> Path:
    """A pipeline repo: the test suite's tiny repo (tokenizers, scheduler, model_index.json) with the
    model folders in `full` replaced by links to full-size random weights; `edits` patch JSON files
    (path in the repo -> keys), e.g. the image processor's crop size for a full-size CLIP."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(tiny_repo, dest, symlinks=True)
    for name, folder in full.items():
        shutil.rmtree(dest / name)
        (dest / name).symlink_to(folder, target_is_directory=True)
    for rel, keys in (edits or {}).items():
        f = dest / rel
        f.write_text(json.dumps({**json.loads(f.read_text()), **keys}, indent=1))
    return dest


def tests_helpers() -> Any:
    """tests/tiny.py (its tokenizer and repo builders)."""
    sys.path.insert(0, str(ROOT / "tests"))
    return importlib.import_module("tiny")


def dpm_scheduler(lib: str, config: Any) -> Any:
    """DPM++ 2M (DPMSolverMultistepScheduler, diffusers' defaults) of `lib` from a scheduler config."""
    if lib == "diffusers":
        import diffusers

        return diffusers.DPMSolverMultistepScheduler.from_config(config)
    from kandi.schedulers.dpm import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(dict(config))


def bench_e2e(
    module: str, s: Settings, report: Report, case: dict[str, Any], what: str, default: str
) -> None:
    """Time to one image (models loaded; prompt encoding, denoising and decode timed) and the peak RSS
    of the whole process, each library alone in a fresh process (never both copies in memory), for the
    default sampler and DPM++ 2M."""
    tmp = OUT / "e2e"
    tmp.mkdir(parents=True, exist_ok=True)
    for sampler in ("default", "dpm"):
        got, outs = {}, {}
        for lib in ("kandi", "diffusers"):
            c = json.dumps(
                {**case, "kind": "e2e", "lib": lib, "sampler": sampler, "steps": s.steps, "size": s.e2e_size}
            )
            got[lib] = peak_once(module, c, tmp / f"{lib}.pt")
            outs[lib] = torch.load(tmp / f"{lib}.pt", weights_only=True)
            print(f"  e2e {sampler} {lib}: {got[lib]}", flush=True)
        diff, ref, ok = compare(f"e2e {sampler}", outs["kandi"], outs["diffusers"], s.dtype_name)
        name = default if sampler == "default" else "DPM++ 2M"
        label = f"one image {s.e2e_size}x{s.e2e_size}, {name} {s.steps} steps"
        note = (f"{what}; alone in a fresh process: peak RSS {got['kandi']['peak_gb']:.1f} GB vs "
                f"{got['diffusers']['peak_gb']:.1f} GB")  # fmt: skip
        report.add(
            Row(label, [got["kandi"]["seconds"]], [got["diffusers"]["seconds"]], diff, ref, ok, note=note)
        )
        report.info.setdefault("e2e", {})[label] = got
