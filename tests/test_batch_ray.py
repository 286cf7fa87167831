"""`kandi batch --ray` on a local Ray instance with 2 CPU workers: the same images, manifest and resume rules
as the local run, and a worker killed mid-job loses nothing (skipped only if Ray cannot start here)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_batch import TINY, done, manifest, models, pngs, run, write

JOB = [
    {"prompt": "a red cat"},
    {"prompt": "a blue dog", "negative_prompt": "blurry", "seed": 11},
    {"prompt": "a house", "num_images": 2},
    {"prompt": "a tall tower", "size": "32x64"},
    {"prompt": "a boat"},
    {"prompt": "a green frog", "output": "named/frog"},
]


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance with 2 CPUs; its workers inherit this environment. With --workers 2 each has
    one CPU and so one torch thread, as the tests' local runs (CPU pixels depend on the thread count)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'kandi[ray]')")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Ray cannot start on this machine: {e}")
    yield ray
    ray.shutdown()


def job_file(folder: Path, rows: list[dict]) -> Path:
    return write(folder / "job.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def test_ray_run_equals_the_local_run(ray_instance, k22_repos, capsys, tmp_path):
    job = job_file(tmp_path, JOB)
    args = ["batch", job, "--batch-size", "2", *models(k22_repos), *TINY]
    code, out, err = run(capsys, *args, "-o", tmp_path / "local")
    assert code == 0, err
    code, out, err = run(capsys, *args, "-o", tmp_path / "ray", "--ray", "--workers", "2")
    assert code == 0 and out.startswith("6 succeeded, 0 failed, 0 skipped"), err
    assert pngs(tmp_path / "ray") == pngs(tmp_path / "local")  # the same bytes: pixels and metadata
    key = lambda r: (r["index"], r["id"], r["outputs"], r["seeds"])  # noqa: E731
    assert sorted(map(key, manifest(tmp_path / "ray"))) == sorted(map(key, manifest(tmp_path / "local")))
    # the same resume rules: a rerun on Ray skips everything
    code, out, err = run(capsys, *args, "-o", tmp_path / "ray", "--ray", "--workers", "2")
    assert code == 0 and out.startswith("0 succeeded, 0 failed, 6 skipped"), err


def _busy_workers() -> list[int]:
    """Ray actor processes of kandi's batch workers that are running a chunk (by their process title)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::Worker.run"):
            pids.append(int(pid))
    return pids


def _finished(path: Path) -> int:
    try:
        return path.read_bytes().count(b'"status": "done"')
    except FileNotFoundError:
        return 0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the Ray worker processes in /proc")
def test_killing_a_worker_mid_job_loses_no_image_and_the_job_completes(
    ray_instance, k22_repos, capsys, tmp_path
):
    rows = [{"prompt": f"a red cat number {i}"} for i in range(8)]
    job = job_file(tmp_path, rows)
    args = ["batch", job, *models(k22_repos), *TINY, "--steps", "5"]
    assert run(capsys, *args, "-o", tmp_path / "local")[0] == 0
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            code=run(capsys, *args, "-o", tmp_path / "ray", "--ray", "--workers", "2")
        )
    )
    thread.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        busy = _busy_workers() if _finished(tmp_path / "ray" / "manifest.jsonl") else []
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    thread.join(timeout=300)
    assert killed is not None, "no busy worker to kill"
    code, out, err = result["code"]
    # (Ray itself prints the lost task and its retry to stdout before the summary)
    assert code == 0 and out.splitlines()[-1].startswith("8 succeeded, 0 failed, 0 skipped"), err
    ids = [r["id"] for r in done(tmp_path / "ray")]
    assert len(ids) == len(set(ids)) == 8  # every item once
    assert pngs(tmp_path / "ray") == pngs(tmp_path / "local")


def test_more_workers_than_cpus_is_a_usage_error(ray_instance, k22_repos, capsys, tmp_path):
    job = job_file(tmp_path, JOB[:1])
    code, out, err = run(
        capsys, "batch", job, "-o", tmp_path / "out", "--ray", "--workers", "3", *models(k22_repos)
    )
    assert code == 2 and "--workers 3: the Ray cluster has 2 CPUs" in err
