"""`kandi serve` under load, on loopback against a real server process (the tiny random 2.2 models).

The bursts run bench/bench_serve.py's own code, so the test and the benchmark in BENCHMARKS.md check
the same things: every request is answered, with a 200 carrying the image of its own seed or an honest
429 (Retry-After and a JSON error); the queue drains; the server's counts match what the clients saw.
Then clients that go away: their jobs are cancelled and free their places.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _bench() -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the script by its path
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _bench()
# the server's most steps: a cancel (noticed within about a second) lands long before the end (about
# 12 s here for one image; jobs that must outlive a test make several images)
LONG_STEPS = 200


@pytest.fixture(scope="module")
def servers(k22_repos: dict[str, Path]) -> Iterator[tuple[Any, Any]]:
    """(small, roomy): one worker with 4 waiting places, which 32 clients overflow at once, and one
    worker with 32 places, room for every one of 32 clients' requests."""
    small = bench.ServerProcess(k22_repos["decoder"], k22_repos["prior"], workers=1, queue=4)
    roomy = bench.ServerProcess(k22_repos["decoder"], k22_repos["prior"], workers=1, queue=32)
    try:
        # launched together: a start is mostly imports and loading, which overlap on two cores
        small.launch()
        roomy.launch()
        yield small.start(), roomy.start()
    finally:
        small.close()
        roomy.close()


@pytest.fixture(scope="module")
def small(servers: tuple[Any, Any]) -> Any:
    return servers[0]


@pytest.fixture(scope="module")
def roomy(servers: tuple[Any, Any]) -> Any:
    return servers[1]


def _passed(burst: Any) -> None:
    assert burst.problems() == [], "\n".join(burst.problems())
    assert burst.lost == 0 and burst.other == 0
    assert burst.ok + sum(o.status == 429 for o in burst.outcomes) == burst.load.requests


def test_burst_over_a_small_queue_gets_honest_429s(small: Any) -> None:
    burst = bench.run_burst(small, bench.Load(requests=200, concurrency=32), warmup=1)
    _passed(burst)
    assert burst.rejected > 0, "32 clients against 1 worker + 4 places never got a 429"
    # the first 4 always find a waiting place, whatever the worker has picked up yet
    assert burst.ok >= 4, f"only {burst.ok} requests were served"
    assert burst.delta() == {"completed": burst.ok, "failed": 0, "cancelled": 0, "rejected": burst.rejected}
    assert burst.after["running"] == 0 and burst.after["waiting"] == 0
    # refused at once, not after waiting for a place: a 429 takes far less than a served request
    assert bench.percentile(burst.latencies(rejected=True), 50) < bench.percentile(burst.latencies(), 50)


def test_burst_within_the_queue_gets_no_429(roomy: Any) -> None:
    # 32 clients with one request each in flight never hold more than the 1 running + 32 waiting places
    burst = bench.run_burst(roomy, bench.Load(requests=64, concurrency=32, steps=1, prior_steps=1), warmup=1)
    _passed(burst)
    assert burst.ok == 64 and burst.rejected == 0
    assert burst.delta() == {"completed": 64, "failed": 0, "cancelled": 0, "rejected": 0}


def test_clients_that_retry_429s_are_all_served(small: Any) -> None:
    load = bench.Load(requests=32, concurrency=32, steps=1, prior_steps=1, retry=True, seed0=5000)
    burst = bench.run_burst(small, load, warmup=0)
    _passed(burst)
    assert burst.ok == 32 and burst.rejected > 0
    assert max(o.attempts for o in burst.outcomes) > 1


# ------------------------------------------------------------------------------------------ disconnects


def _post_raw(server: Any, body: dict[str, Any], query: str = "") -> socket.socket:
    """Send a txt2img request on a bare socket and return without reading the answer."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (f"POST /v1/txt2img{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")  # fmt: skip
    s.sendall(head.encode() + data)
    return s


def _until(server: Any, ok: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
    """The first queue state (GET /health) for which `ok` holds, polled for up to `timeout` s; else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = bench.health(server.url)
        if ok(q):
            return q
        time.sleep(0.05)
    return None


def _long(seed: int, images: int = 1) -> dict[str, Any]:
    return bench.Load().body(0) | {"steps": LONG_STEPS, "seed": seed, "num_images": images}


def _drain(server: Any) -> dict[str, Any]:
    q, drained = bench.wait_drained(server.url, timeout=120)
    assert drained is not None, f"the queue did not drain: {q}"
    return q


def test_client_gone_while_running_cancels_the_job(small: Any) -> None:
    before = _drain(small)
    s = _post_raw(small, _long(7000))
    try:
        # let it run a few steps first: the cancel must stop a job under way
        assert _until(small, lambda q: q["running"] == 1, 30) is not None, "the job never started"
        time.sleep(0.5)
    finally:
        s.close()
    closed = time.monotonic()
    q = _until(small, lambda q: q["running"] == 0, 120)
    took = time.monotonic() - closed
    assert q is not None
    assert q["cancelled"] == before["cancelled"] + 1 and q["completed"] == before["completed"], (
        f"the job ran on to its end {took:.1f} s after its client left: {q}"
    )
    assert took < 5, f"the cancel took {took:.1f} s"


def test_client_gone_while_waiting_frees_its_place(small: Any) -> None:
    before = _drain(small)
    # a job to hold the worker, started by id so it can be cancelled whatever happens to disconnects
    r = httpx.post(f"{small.url}/v1/jobs/txt2img", json=_long(7100, images=4), timeout=30)
    assert r.status_code == 202, r.text
    holder = r.json()["job_id"]
    try:
        assert _until(small, lambda q: q["running"] == 1, 30) is not None
        s = _post_raw(small, _long(7101))
        try:
            assert _until(small, lambda q: q["waiting"] == 1, 10) is not None, "the request never queued"
        finally:
            s.close()
        q = _until(small, lambda q: q["waiting"] == 0, 5)
        assert q is not None, "the waiting place was still taken 5 s after its client left"
        assert q["cancelled"] == before["cancelled"] + 1 and q["running"] == 1
    finally:
        httpx.delete(f"{small.url}/v1/jobs/{holder}", timeout=30)
    q = _drain(small)
    assert q["cancelled"] == before["cancelled"] + 2 and q["completed"] == before["completed"]


def test_stream_closed_while_running_cancels_the_job(small: Any) -> None:
    before = _drain(small)
    with httpx.Client(base_url=small.url, timeout=30) as client:
        with client.stream("POST", "/v1/txt2img?stream=true", json=_long(7200, images=4)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():  # leave once the job has made a step
                if line.startswith("data:") and json.loads(line[5:]).get("status") == "running":
                    break
    closed = time.monotonic()
    q = _until(small, lambda q: q["running"] == 0, 120)
    took = time.monotonic() - closed
    assert q is not None
    assert q["cancelled"] == before["cancelled"] + 1 and q["completed"] == before["completed"], q
    assert took < 5, f"the cancel took {took:.1f} s"


# ------------------------------------------------------------------------------------------ workers > 1


def test_prompts_encode_the_same_from_concurrent_workers(k22_repos: dict[str, Path]) -> None:
    import threading

    import torch

    from kandi.engine import Engine
    from kandi.pipelines.k22 import encode_prior_text

    engine = Engine([str(k22_repos["decoder"])], "cpu", None, None, True, str(k22_repos["prior"])).load()
    _, m = engine.models(engine.default, "decoder")
    cpu = torch.device("cpu")
    prompts = ["a red fox in a snowy forest at dawn, highly detailed", "a cat", ""]

    def encode(p: str) -> Any:
        return encode_prior_text(m.tokenizer, m.text_encoder, [p], None, 1, True, cpu)

    want = {p: encode(p) for p in prompts}
    wrong: list[str] = []

    def worker(p: str) -> None:  # what each server worker does at the start of a request
        for _ in range(150):
            try:
                got = encode(p)
                same = all(torch.equal(getattr(got, f), getattr(want[p], f)) for f in vars(got))
            except RuntimeError as e:
                wrong.append(f"{p!r}: {e}")
                return
            if not same:
                wrong.append(f"{p!r}: a different conditioning than alone")
                return

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a race that needs a switch at one spot shows in ms
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == [], wrong
