"""The benchmark scripts stay runnable: bench_gpu.py refuses to run without CUDA and its --dry-run
(tiny configs on the CPU) fills a table; the CPU benches' argument checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench_path(monkeypatch):
    """bench/ on sys.path; the libraries' logging and progress bars as they were afterwards (a bench
    quiets diffusers and transformers for its whole process, which must not leak into other tests)."""
    import diffusers
    import transformers

    monkeypatch.syspath_prepend(str(BENCH))
    logs = [lib.utils.logging for lib in (diffusers, transformers)]
    saved = [(log.get_verbosity(), log.is_progress_bar_enabled()) for log in logs]
    yield
    for log, (level, bars) in zip(logs, saved):
        log.set_verbosity(level)
        (log.enable_progress_bar if bars else log.disable_progress_bar)()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_gpu_without_cuda_exits_2_with_a_clear_message() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "needs a CUDA device" in proc.stderr and "--dry-run" in proc.stderr


def test_bench_gpu_dry_run_fills_its_table_between_markers(bench_path, tmp_path) -> None:
    import bench_gpu

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nkept\n")
    assert bench_gpu.main(["--dry-run", "--families", "k3", "--out", str(out)]) == 0
    first = out.read_text()
    assert first.startswith("# Benchmarks\n\nkept\n") and first.count(bench_gpu.START) == 1
    assert "| k3 fp32 unet step 64² eager |" in first and "| k3 fp32 movq decode 64² eager |" in first
    assert bench_gpu.main(["--dry-run", "--families", "k3", "--out", str(out)]) == 0
    assert out.read_text().count(bench_gpu.START) == 1  # replaced, not appended again


def test_bench_arguments_are_checked(bench_path) -> None:
    import common

    with pytest.raises(SystemExit):
        common.parse_args("doc", ("unet", "movq"), ["--only", "unet,nope"])
    s, only, _ = common.parse_args(
        "doc", ("unet", "movq"), ["--quick", "--steps", "3", "--movq-sizes", "64,128"]
    )
    assert only == ["unet", "movq"] and s.steps == 3 and s.movq_sizes == (64, 128) and s.repeats == 1
