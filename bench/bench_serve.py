"""`kandi serve` under load: a burst of concurrent txt2img requests against a real server process.

The server runs as a subprocess (`python -m kandi serve ... --no-ui`) on loopback; clients are tasks of
one httpx.AsyncClient, each sending its next request as soon as the previous one is answered, so at most
`--concurrency` requests are in flight. By default the models are the tiny random 2.2 prior and decoder
of the test suite (64x64, 2 prior + 2 decoder steps), so the figures measure the server's queueing and
HTTP overhead, not model speed.

    python bench/bench_serve.py                              # 200 requests, 32 clients, workers 1, queue 32
    python bench/bench_serve.py --workers 1 --queue 4        # a small queue: honest 429s
    python bench/bench_serve.py --workers 1 --queue 4 --retry   # clients retry 429s: all served
    python bench/bench_serve.py --decoder DIR --prior DIR --size 512 --steps 25 --json

Checked after every burst (the script exits 1 if one fails): every request got an HTTP response; every
response is a 200 with the image of its own seed, or a 429 with Retry-After and a JSON error; the queue
drains to 0 running and 0 waiting; and the server's own counts (GET /health) moved by exactly what the
clients saw. tests/test_server_load.py runs the same code in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT = "a red fox in a snowy forest"
COUNTERS = ("completed", "failed", "cancelled", "rejected")


# ------------------------------------------------------------------------------------------ the server


def tiny_repos() -> dict[str, Path]:
    """The tiny random 2.2 prior + decoder of the test suite, saved once: bench_k22.py's (imported here, late,
    because it imports torch)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_k22 import tiny_repos as saved

    return saved()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m kandi serve` on a free loopback port; `start()` returns once GET /health answers."""

    def __init__(self, decoder: Path, prior: Path | None, workers: int, queue: int, threads: int = 1,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.decoder, self.prior, self.workers, self.queue = decoder, prior, workers, queue
        self.threads, self.extra = threads, extra
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log = tempfile.NamedTemporaryFile("w+", prefix="kandi-serve-", suffix=".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "kandi", "serve", "-m", str(self.decoder), "--port", str(port),
               "--offline", "--no-ui", "--workers", str(self.workers), "--queue", str(self.queue)]  # fmt: skip
        return cmd + (["--prior", str(self.prior)] if self.prior else []) + list(self.extra)

    def launch(self) -> ServerProcess:
        """Start the process on a free port without waiting for it (`start()` waits)."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        if self.threads > 0:
            # tiny models gain nothing from intra-op threads; on a small machine the extra threads of
            # every worker fight over the cores (a 64x64 step went from 60 ms to 700 ms here under load)
            env["OMP_NUM_THREADS"] = str(self.threads)
        self.port = free_port()
        self._log.seek(0)
        self._log.truncate()
        self.proc = subprocess.Popen(self.command(self.port), env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        return self

    def start(self, timeout: float = 120) -> ServerProcess:
        """Launch (unless `launch()` was called) and return once GET /health answers."""
        for attempt in range(3):  # a free port can be taken by someone else before the server binds it
            if self.proc is None or attempt:
                self.launch()
            if self._wait_healthy(timeout):
                return self
            if "address already in use" not in self.log_tail().lower():
                break
        self.stop()
        raise RuntimeError(f"kandi serve did not start; its output ends with:\n{self.log_tail()}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-chars:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def memory_kb(pid: int, key: str = "VmRSS") -> int | None:
    """A process's resident memory in kB from /proc (VmRSS now, VmHWM its peak); None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def health(url: str) -> dict[str, Any]:
    """The server's queue state (GET /health)."""
    r = httpx.get(f"{url}/health", timeout=10)
    r.raise_for_status()
    return r.json()["queue"]


def wait_drained(url: str, timeout: float = 10) -> tuple[dict[str, Any], float | None]:
    """(queue state, seconds until 0 running and 0 waiting, or None if it did not drain in `timeout`)."""
    t0 = time.monotonic()
    while True:
        q = health(url)
        if q["running"] == 0 and q["waiting"] == 0:
            return q, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return q, None
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ the clients


@dataclass
class Load:
    """What the clients send: `requests` txt2img requests (seeds seed0, seed0+1, ...), `concurrency` at once."""

    requests: int = 200
    concurrency: int = 32
    size: int = 64
    steps: int = 2
    prior_steps: int = 2
    seed0: int = 1000
    retry: bool = False  # on 429 wait Retry-After seconds and send the same request again
    timeout: float = 300  # per request (with its retries): a request past it counts as lost

    def body(self, i: int) -> dict[str, Any]:
        return {"prompt": PROMPT, "width": self.size, "height": self.size, "steps": self.steps,
                "prior_steps": self.prior_steps, "seed": self.seed0 + i}  # fmt: skip


@dataclass
class Outcome:
    """One request as its client saw it (the last attempt, when 429s were retried)."""

    index: int
    status: int | None = None  # None: no HTTP response (connection error or timeout)
    error: str | None = None  # the transport error, or what is wrong with the response
    latency_s: float = 0.0  # the last attempt
    total_s: float = 0.0  # from the first attempt to the last answer
    attempts: int = 0
    rejected_latency_s: list[float] = field(default_factory=list)  # each 429 answer's latency
    bad_429: int = 0  # 429s without a positive Retry-After or a JSON error


def check_429(r: httpx.Response) -> tuple[int | None, bool]:
    """(Retry-After in seconds or None, whether the body is a JSON error with a message)."""
    retry = r.headers.get("retry-after", "")
    seconds = int(retry) if retry.isdigit() and int(retry) > 0 else None
    try:
        body = r.json()
        good = isinstance(body.get("error", {}).get("message"), str)
    except (ValueError, AttributeError):
        good = False
    return seconds, good


def check_200(r: httpx.Response, seed: int) -> str | None:
    """What is wrong with a 200 answer to the request of `seed` (None: its one PNG, of its seed)."""
    try:
        body = r.json()
        if body.get("seeds") != [seed] or len(body.get("images", [])) != 1:
            return f"200 with seeds {body.get('seeds')}, expected [{seed}]"
        if not base64.b64decode(body["images"][0]["png_base64"]).startswith(PNG_MAGIC):
            return "200 whose image is not a PNG"
    except (ValueError, KeyError, TypeError) as e:
        return f"200 with an unreadable body ({type(e).__name__})"
    return None


async def one_request(client: httpx.AsyncClient, load: Load, i: int) -> Outcome:
    out = Outcome(i)
    t_first = time.perf_counter()
    while True:
        out.attempts += 1
        t0 = time.perf_counter()
        left = load.timeout - (t0 - t_first)
        try:
            r = await client.post("/v1/txt2img", json=load.body(i), timeout=max(left, 0.1))
        except httpx.HTTPError as e:  # no HTTP response: lost
            out.status, out.error = None, f"{type(e).__name__}: {e}"
            break
        now = time.perf_counter()
        out.status, out.latency_s = r.status_code, now - t0
        if r.status_code == 200:
            out.error = check_200(r, load.seed0 + i)
            break
        if r.status_code != 429:
            out.error = f"HTTP {r.status_code}: {r.text[:200]}"
            break
        out.rejected_latency_s.append(out.latency_s)
        retry_after, good = check_429(r)
        if retry_after is None or not good:
            out.bad_429 += 1
        if not load.retry or now - t_first + (retry_after or 1) > load.timeout:
            break
        await asyncio.sleep(retry_after or 1)
    out.total_s = time.perf_counter() - t_first
    return out


async def fire(url: str, load: Load) -> tuple[list[Outcome], float]:
    """Send the load; (each request's outcome, wall seconds from the first send to the last answer)."""
    pending = iter(range(load.requests))
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=load.concurrency, max_keepalive_connections=load.concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def worker() -> None:
            # one client: its next request goes out when the previous one is answered
            for i in pending:
                outcomes.append(await one_request(client, load, i))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        wall = time.perf_counter() - t0
    return sorted(outcomes, key=lambda o: o.index), wall


# ------------------------------------------------------------------------------------------ one burst


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (a value that was measured); None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


@dataclass
class Burst:
    """A burst's outcomes with the server's state around it."""

    load: Load
    outcomes: list[Outcome]
    wall_s: float
    before: dict[str, Any]  # GET /health queue state just before the burst
    after: dict[str, Any]  # ... once drained (or when the wait gave up)
    drain_s: float | None  # seconds from the last answer to 0 running and 0 waiting; None: never
    rss_before_kb: int | None
    rss_after_kb: int | None
    rss_peak_kb: int | None  # VmHWM: the server's peak since it started

    def count(self, status: int | None) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> int:
        return self.count(200)

    @property
    def rejected(self) -> int:
        """429 answers (with retries, several per request)."""
        return sum(len(o.rejected_latency_s) for o in self.outcomes)

    @property
    def lost(self) -> int:
        return self.count(None)

    @property
    def other(self) -> int:
        return sum(o.status not in (200, 429, None) for o in self.outcomes)

    @property
    def throughput(self) -> float:
        """Images served per second of the burst."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def latencies(self, rejected: bool = False) -> list[float]:
        if rejected:
            return [t for o in self.outcomes for t in o.rejected_latency_s]
        return [o.latency_s for o in self.outcomes if o.status == 200]

    def delta(self) -> dict[str, int]:
        return {k: self.after[k] - self.before[k] for k in COUNTERS}

    def problems(self) -> list[str]:
        """Every way the burst fell short; empty when all checks hold."""
        p = []
        if len(self.outcomes) != self.load.requests:
            p.append(f"{len(self.outcomes)} outcomes for {self.load.requests} requests")
        if self.lost:
            first = next(o for o in self.outcomes if o.status is None)
            p.append(f"{self.lost} requests got no HTTP response (first: {first.error})")
        if self.other:
            first = next(o for o in self.outcomes if o.status not in (200, 429, None))
            p.append(f"{self.other} answers were neither 200 nor 429 (first: {first.error})")
        bad = [o for o in self.outcomes if o.status == 200 and o.error]
        if bad:
            p.append(f"{len(bad)} bad 200 answers (first: {bad[0].error})")
        if sum(o.bad_429 for o in self.outcomes):
            p.append(f"{sum(o.bad_429 for o in self.outcomes)} 429s lacked Retry-After or a JSON error")
        if self.load.retry and self.ok != self.load.requests:
            p.append(f"with retries only {self.ok} of {self.load.requests} requests were served")
        if self.drain_s is None:
            p.append(f"the queue did not drain: {self.after}")
        want = {"completed": self.ok, "failed": 0, "cancelled": 0, "rejected": self.rejected}
        if self.delta() != want:
            p.append(f"server counts moved by {self.delta()}, the clients saw {want}")
        return p

    def to_json(self) -> dict[str, Any]:
        lat = {f"p{p}": percentile(self.latencies(), p) for p in (50, 95, 99)}
        lat429 = {f"p{p}": percentile(self.latencies(True), p) for p in (50, 99)}
        tries = [o.attempts for o in self.outcomes]
        return {"load": asdict(self.load), "wall_s": self.wall_s, "ok": self.ok, "rejected_429": self.rejected,
                "other": self.other, "lost": self.lost, "throughput_images_per_s": self.throughput,
                "latency_200_s": lat | {"max": max(self.latencies(), default=None)},
                "latency_429_s": lat429 | {"max": max(self.latencies(True), default=None)},
                "attempts": sum(o.attempts for o in self.outcomes),
                "attempts_per_request": {f"p{p}": percentile(tries, p) for p in (50, 95, 99)}
                | {"max": max(tries, default=None)},
                "rss_kb": {"before": self.rss_before_kb, "after": self.rss_after_kb, "peak": self.rss_peak_kb},
                "drain_s": self.drain_s, "server_before": self.before, "server_after": self.after,
                "server_delta": self.delta(), "problems": self.problems()}  # fmt: skip


def run_burst(server: ServerProcess, load: Load, warmup: int = 2, drain_timeout: float = 10) -> Burst:
    """Warm the server up (the first requests allocate), then fire `load` and wait for the queue to drain."""
    for k in range(warmup):  # seeds apart from the burst's; not counted in the burst
        httpx.post(f"{server.url}/v1/txt2img", json=load.body(-1 - k), timeout=120).raise_for_status()
    before = health(server.url)
    rss_before = memory_kb(server.pid)
    outcomes, wall = asyncio.run(fire(server.url, load))
    after, drain = wait_drained(server.url, drain_timeout)
    return Burst(load, outcomes, wall, before, after, drain, rss_before, memory_kb(server.pid),
                 memory_kb(server.pid, "VmHWM"))  # fmt: skip


# ------------------------------------------------------------------------------------------ report


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MiB"


def report(b: Burst, server: ServerProcess, command: str) -> str:
    ld, lat, lat429 = b.load, b.latencies(), b.latencies(True)
    d = b.delta()
    lines = [
        f"kandi serve under load: {ld.requests} requests from {ld.concurrency} concurrent clients"
        f"{' (retrying 429s)' if ld.retry else ''}; server --workers {server.workers} --queue {server.queue};"
        f" {ld.size}x{ld.size}, {ld.prior_steps} prior + {ld.steps} decoder steps",
        "",
        "| figure | value |",
        "|---|---|",
        f"| answers | {b.ok} x 200, {b.rejected} x 429, {b.other} other, {b.lost} without response"
        f" ({sum(o.attempts for o in b.outcomes)} attempts) |",
        f"| throughput | {b.throughput:.2f} images/s ({b.ok} in {b.wall_s:.2f} s) |",
        f"| latency of 200s (s) | p50 {_s(percentile(lat, 50))}, p95 {_s(percentile(lat, 95))},"
        f" p99 {_s(percentile(lat, 99))}, max {_s(max(lat, default=None))} |",
        f"| latency of 429s (s) | p50 {_s(percentile(lat429, 50))}, p99 {_s(percentile(lat429, 99))},"
        f" max {_s(max(lat429, default=None))} |",
    ]
    if ld.retry:
        total = [o.total_s for o in b.outcomes if o.status == 200]
        tries = [o.attempts for o in b.outcomes]
        lines.append(f"| request to image, with retries (s) | p50 {_s(percentile(total, 50))},"
                     f" p95 {_s(percentile(total, 95))}, p99 {_s(percentile(total, 99))} |")  # fmt: skip
        lines.append(f"| attempts per request | p50 {percentile(tries, 50)}, p95 {percentile(tries, 95)},"
                     f" max {max(tries)} |")  # fmt: skip
    lines += [
        f"| server RSS | before {_mib(b.rss_before_kb)}, after {_mib(b.rss_after_kb)},"
        f" peak {_mib(b.rss_peak_kb)} |",
        f"| queue after the burst | {b.after['running']} running, {b.after['waiting']} waiting; drained"
        f" {'never' if b.drain_s is None else f'in {b.drain_s:.2f} s'} after the last answer |",
        f"| server counts (delta) | completed +{d['completed']}, rejected +{d['rejected']},"
        f" failed +{d['failed']}, cancelled +{d['cancelled']} |",
        "",
        f"command: {command}",
        "checks: " + ("all passed" if not b.problems() else "FAILED\n  - " + "\n  - ".join(b.problems())),
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "httpx": httpx.__version__, "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--decoder", type=Path, help="decoder folder or repo (default: the tiny random 2.2 decoder)"
    )
    p.add_argument("--prior", type=Path, help="prior folder (default: the tiny one with the tiny decoder)")
    p.add_argument("-n", "--requests", type=int, default=200, help="requests in the burst (default 200)")
    p.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--workers", type=int, default=1, help="the server's --workers (default 1)")
    p.add_argument("--queue", type=int, default=32, help="the server's --queue (default 32)")
    p.add_argument("--size", type=int, default=64, help="image width and height (default 64)")
    p.add_argument("--steps", type=int, default=2, help="decoder steps (default 2)")
    p.add_argument("--prior-steps", type=int, default=2, help="prior steps (default 2)")
    p.add_argument("--retry", action="store_true", help="clients retry 429s after Retry-After until served")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS for the server (default 1; 0: leave the environment's)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2, help="requests before the burst, not counted (default 2)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--out", type=Path, help="also write the JSON results to this file")
    a = p.parse_args(argv)
    if a.decoder is None:
        repos = tiny_repos()
        a.decoder, a.prior = repos["decoder"], a.prior or repos["prior"]
    load = Load(a.requests, a.concurrency, a.size, a.steps, a.prior_steps, retry=a.retry)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None  # other work on the machine
    command = " ".join(shlex.quote(x) for x in ["python", "bench/bench_serve.py", *(argv or sys.argv[1:])])
    with ServerProcess(a.decoder, a.prior, a.workers, a.queue, a.threads) as server:
        burst = run_burst(server, load, a.warmup)
        text = report(burst, server, command)
        server_cmd = " ".join(shlex.quote(x) for x in server.command(server.port))
        if burst.problems():  # the server's own account of what went wrong (tracebacks of 500s)
            print(f"server output (last 8000 characters):\n{server.log_tail(8000)}", file=sys.stderr)
    results = {**burst.to_json(), "command": command, "server_command": server_cmd, "workers": a.workers,
               "queue": a.queue, "threads": a.threads, "machine": machine() | {"loadavg_start": load_start}}  # fmt: skip
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        print(text)
        print(f"server: {server_cmd}")
    return 1 if burst.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
