"""`kandi batch`: run a job's requests, resumably, on this machine (or, via `batch_ray`, on a Ray cluster).

The output folder holds the images and `manifest.jsonl`, one JSON line per finished item (its id, output
names and seeds) or failed one (its error). Only the driver process writes there, and in this order: each
image atomically (a temporary file, fsync, rename), then the item's manifest line (append, flush, fsync).
So a kill at any moment leaves every recorded item whole, and a rerun skips exactly the items whose latest
line says done and whose files are there, redoes the rest (overwriting a half-finished item's images)
and removes leftover temporary files. A lock on the manifest keeps a second run off the same folder.

Workers (`Worker`, one here or one per Ray actor) load each model once and make a chunk of requests at a
time: text-to-image items of one model and size go through the decoder together (see
`pipelines.k22_batch`); the chunks are fixed by the job file alone, so a resumed run batches exactly
as an uninterrupted one and makes the same pixels.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import DEFAULT_MODEL
from ..engine import Engine, Image, Plan
from ..engine.run import run_batch
from ..errors import KandiError
from .job import ROLES, Request, engine_request, one_line

MANIFEST = "manifest.jsonl"
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what `_write_atomic` (and write_png) leave if killed


# -------------------------------------------------------------------------------------- output folder


@dataclass
class Outcome:
    """What a worker made of one request: its PNGs (name, bytes, seed), or its error."""

    id: str
    files: list[tuple[str, bytes, int]] = field(default_factory=list)
    error: str | None = None


class OutputFolder:
    """The job's output folder: its manifest (read on opening, appended to) and atomic image writes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = folder / MANIFEST
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.manifest, "a+b")  # noqa: SIM115 (held open: it carries the lock)
        except OSError as e:
            raise OSError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None
        self._lock()
        self.records = self._read()
        self._remove_temporary()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KandiError(f"another kandi batch is writing to {self.folder}: wait for it to end") from None

    def _read(self) -> dict[str, dict[str, Any]]:
        """The latest manifest line of each item id; a torn last line (a kill mid-append) is cut off."""
        self._file.seek(0)
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self._file.truncate(end)
        records = {}
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                records[rec["id"]] = rec
        return records

    def _remove_temporary(self) -> None:
        for path in self.folder.rglob(".*.tmp"):
            if TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)

    def job_seed(self) -> int | None:
        """The job seed of the latest run recorded here, if any."""
        seeds = [r["job_seed"] for r in self.records.values() if isinstance(r.get("job_seed"), int)]
        return seeds[-1] if seeds else None

    def done(self, req: Request) -> bool:
        rec = self.records.get(req.id)
        return bool(
            rec and rec.get("status") == "done" and all((self.folder / n).is_file() for n in rec["outputs"])
        )

    def record(self, req: Request, outcome: Outcome, job_seed: int) -> None:
        """Write the outcome's images, then its manifest line: after a crash, a line means whole images."""
        for name, data, _ in outcome.files:
            _write_atomic(self.folder / name, data)
        rec = {"id": req.id, "index": req.index, "line": req.line, "prompt": req.prompt, "job_seed": job_seed}
        if outcome.error is None:
            rec |= {
                "status": "done",
                "outputs": [f[0] for f in outcome.files],
                "seeds": [f[2] for f in outcome.files],
            }
        else:
            rec |= {"status": "failed", "error": outcome.error}
        rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._file.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[req.id] = rec

    def close(self) -> None:
        self._file.close()


def _write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path` whole or not at all: a temporary file in the same folder, fsync, then rename (which
    replaces a half-finished item's earlier image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class Runtime:
    """How every worker runs: the same for each (sent to Ray actors)."""

    device: str | None = None
    dtype: str | None = None
    variant: str | None = None
    offline: bool = False
    batch_size: int = 1
    compile: bool = False


Step = Callable[[Any], None]  # receives each Progress event


class Worker:
    """Makes chunks of requests on an engine that holds one model at a time (the last one used)."""

    def __init__(self, runtime: Runtime, threads: int | None = None, show_downloads: bool = False) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.runtime = runtime
        self.engine = Engine([], runtime.device, runtime.dtype, runtime.variant, runtime.offline, keep=1,
                             downloads=show_downloads, compile=runtime.compile)  # fmt: skip
        self._broken: dict[tuple[str, str | None], str] = {}  # models that failed to load: not tried again

    def run(self, chunk: list[Request], step: Step | None = None) -> list[Outcome]:
        """Outcomes of the chunk's requests (those not to be written come back without images)."""
        from ..pipelines.k22_tasks import K22Models

        try:
            label, models = self._models(chunk[0])
        except Exception as e:  # noqa: BLE001 (a model that cannot load fails its items, not the job)
            self._broken[chunk[0].model] = _describe(e)
            return [Outcome(r.id, error=self._broken[chunk[0].model]) for r in chunk]
        if len(chunk) > 1 and isinstance(models, K22Models) and all(r.command == "generate" for r in chunk):
            try:
                return self._batched(chunk, step)
            except Exception:  # noqa: BLE001 (one bad item should not fail its batch: each alone says which)
                pass
        return [self._single(r, step) for r in chunk]

    def _models(self, req: Request) -> tuple[str, Any]:
        if req.model in self._broken:
            raise KandiError(self._broken[req.model])
        entry = self.engine.add(req.args.get("model") or DEFAULT_MODEL, req.args.get("prior"))
        return entry.label, self.engine.models(entry.label, ROLES.get(req.command, "decoder"))[1]

    def _plan(self, req: Request) -> tuple[Any, Plan]:
        """The item's Plan (input files opened), exactly as its kandi command makes it."""
        return self.engine.plan(engine_request(req))

    def _single(self, req: Request, step: Step | None) -> Outcome:
        try:
            entry, p = self._plan(req)
            images = list(self.engine.run(entry.label, p, step, info=_batch_info(req, 1)))
            return self._outcome(req, images)
        except Exception as e:  # noqa: BLE001 (recorded in the manifest; the job goes on)
            return Outcome(req.id, error=_describe(e))

    def _batched(self, chunk: list[Request], step: Step | None) -> list[Outcome]:
        planned = [self._plan(r) for r in chunk]
        label = planned[0][0].label
        model, models = self.engine.models(label, "decoder")
        for _, p in planned:
            p.model = model
        infos = [_batch_info(r, len(chunk)) for r in chunk]
        made = run_batch(models, [p for _, p in planned], self.runtime.variant, step, infos)
        return [self._outcome(req, images) for req, images in zip(chunk, made)]

    @staticmethod
    def _outcome(req: Request, images: list[Image]) -> Outcome:
        """The item's PNGs, with the metadata `kandi COMMAND` writes (so --from-png works)."""
        if not req.write:
            return Outcome(req.id)
        return Outcome(req.id, [(name, im.png, im.seed) for name, im in zip(req.names, images)])


def _batch_info(req: Request, size: int) -> dict[str, Any]:
    """What the kandi chunk adds for a batch item: its index and the decoder batch it was made in."""
    return {"batch": {"index": req.index, "size": size}}


def _describe(e: BaseException) -> str:
    """An error as one line; unexpected kinds keep their type name (a bug should look like one)."""
    text = one_line(e)
    expected = isinstance(e, KandiError | ValueError | TypeError | OSError)
    return text if expected else f"{type(e).__name__}: {text}"


# ------------------------------------------------------------------------------------------ the driver


def chunks(requests: Iterable[Request], batch_size: int) -> list[list[Request]]:
    """Runnable requests in chunks: one model's together (loaded once), batches of one group, in job order.

    Fixed by the job alone (never by what is done), so every run batches each item with the same others.
    """
    groups: dict[tuple, dict[tuple, list[Request]]] = {}
    for req in requests:
        if req.error is None:
            groups.setdefault(req.model, {}).setdefault(req.group, []).append(req)
    out = []
    for by_group in groups.values():
        for members in by_group.values():
            out += [members[k : k + batch_size] for k in range(0, len(members), batch_size)]
    return out


@dataclass
class Summary:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0

    def line(self) -> str:
        return f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped"


class Driver:
    """Writes outcomes as they come (images, then the manifest line), counts them and shows progress."""

    def __init__(self, output: OutputFolder, requests: list[Request], job_seed: int, bar: bool) -> None:
        self.output, self.job_seed = output, job_seed
        self.summary = Summary()
        self.todo: dict[str, Request] = {}
        for req in requests:
            if req.error is None and output.done(req):
                req.write = False
                self.summary.skipped += 1
            else:
                self.todo[req.id] = req
        self.bar = _bar(len(self.todo)) if bar else None

    def start(self) -> None:
        """The items that cannot run (malformed lines, bad requests) are recorded first."""
        for req in list(self.todo.values()):
            if req.error is not None:
                self.take(req, Outcome(req.id, error=req.error))

    def take(self, req: Request, outcome: Outcome) -> None:
        if not req.write:
            return
        self.output.record(req, outcome, self.job_seed)
        if outcome.error is None:
            self.summary.succeeded += 1
        else:
            self.summary.failed += 1
            self._say(f"{req.where} failed: {outcome.error}")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.summary.failed} failed", refresh=False)
            self.bar.update()

    def step(self, event: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"{event.stage} {event.step}/{event.total}, {self.summary.failed} failed"
            )

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="kandi batch", unit="item", file=sys.stderr, dynamic_ncols=True)


def run_local(driver: Driver, requests: list[Request], runtime: Runtime, show: bool) -> None:
    """Every chunk on this machine, one after the other."""
    worker = Worker(runtime, show_downloads=show)
    step = driver.step if show else None
    for chunk in chunks(requests, runtime.batch_size):
        if not any(r.write for r in chunk):
            continue
        for req, outcome in zip(chunk, worker.run(chunk, step)):
            driver.take(req, outcome)
