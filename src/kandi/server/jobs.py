"""A bounded job queue: a fixed number of worker threads run the model work; when every slot and every
waiting place is taken, `submit` refuses at once (the API answers 429) instead of piling requests up.

A job is cancelled between two denoising steps (client gone, interrupt, DELETE); a cancelled job that
has not started frees its waiting place at once. Clients follow a job through events pushed to
asyncio queues (server-sent events) or by polling its state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine import Cancelled, Step
from ..engine import Image as Generated
from ..errors import ModelNotFoundError

FINISHED = ("done", "failed", "cancelled")
log = logging.getLogger("kandi.server")


class QueueFull(Exception):
    """Every worker is busy and the waiting line is full; `retry_after` is a fair wait in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request's life: queued -> running -> done | failed | cancelled."""

    work: Callable[[Job], list[Generated]]
    meta: dict[str, Any] = field(default_factory=dict)  # what the API reports back (model, task...)
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    status: str = "queued"
    step: Step | None = None
    images: list[Generated] = field(default_factory=list)
    error: str | None = None
    error_status: int = 400
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _ended: threading.Event = field(default_factory=threading.Event)
    _watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (for threads, e.g. the web UI's); False on timeout."""
        return self._ended.wait(timeout)

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return self.step.fraction if self.step else 0.0

    def state(self) -> dict[str, Any]:
        """The job as the API shows it (without the images)."""
        s = {"job_id": self.id, "status": self.status, "progress": round(self.progress, 4), **self.meta}
        if self.step is not None:
            s["step"] = {"image": self.step.image + 1, "num_images": self.step.num_images, "stage": self.step.stage,
                         "step": self.step.step, "total": self.step.total}  # fmt: skip
        if self.error is not None:
            s["error"] = self.error
        return s

    def watch(self) -> asyncio.Queue:
        """An asyncio queue (of the running loop) that gets every event from now on; the current state
        first, so a late watcher of a finished job still hears how it ended."""
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            q.put_nowait(self._event())
            if self.status not in FINISHED:
                self._watchers.append((asyncio.get_running_loop(), q))
        return q

    def unwatch(self, q: asyncio.Queue) -> None:
        with self._lock:
            self._watchers = [(loop, w) for loop, w in self._watchers if w is not q]

    def _event(self) -> dict[str, Any]:
        return {"event": "progress" if self.status in ("queued", "running") else self.status, **self.state()}

    def _publish(self) -> None:
        with self._lock:
            event = self._event()
            watchers = list(self._watchers)
            if self.status in FINISHED:
                self._watchers = []
        for loop, q in watchers:
            try:
                loop.call_soon_threadsafe(q.put_nowait, event)
            except RuntimeError:  # that client's loop is closed: nobody listens any more
                pass


class JobQueue:
    """`workers` threads running jobs; at most `max_waiting` jobs wait for one."""

    def __init__(
        self, workers: int = 1, max_waiting: int = 16, keep: int = 256, keep_seconds: float = 600
    ) -> None:
        self.workers, self.max_waiting = workers, max_waiting
        self.keep, self.keep_seconds = keep, keep_seconds
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._waiting = 0
        self._running = 0
        self._lock = threading.Lock()
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self.completed = self.failed = self.cancelled = self.rejected = 0
        self._threads = [threading.Thread(target=self._worker, name=f"kandi-worker-{i}", daemon=True)
                         for i in range(workers)]  # fmt: skip
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        """Queue `job`, or raise QueueFull when the waiting line is full."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                self.rejected += 1
                raise QueueFull(self._retry_after())
            self._waiting += 1
            self._jobs[job.id] = job
            self._forget_old()
        self._q.put(job)
        job._publish()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        """Stop `job`: at once if it waits (its place is freed), else at its next step."""
        with self._lock:
            if job.status in FINISHED:
                return
            job._cancel.set()
            if job.status == "queued":
                self._waiting -= 1
                self._finish(job, "cancelled")
        job._publish()

    def interrupt(self) -> int:
        """Cancel every running job (A1111's interrupt); returns how many."""
        running = [j for j in self.jobs() if j.status == "running"]
        for j in running:
            self.cancel(j)
        return len(running)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"workers": self.workers, "running": self._running, "waiting": self._waiting,
                    "max_waiting": self.max_waiting, "completed": self.completed, "failed": self.failed,
                    "cancelled": self.cancelled, "rejected": self.rejected}  # fmt: skip

    def close(self) -> None:
        """Cancel what waits or runs and stop the workers."""
        for j in self.jobs():
            self.cancel(j)
        for _ in self._threads:
            self._q.put(None)

    def _retry_after(self) -> int:
        per_job = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1, round(per_job * (self._waiting + self._running) / self.workers))

    def _forget_old(self) -> None:
        now = time.monotonic()
        for jid in list(self._jobs):
            j = self._jobs[jid]
            if len(self._jobs) <= self.keep and now - j.created < self.keep_seconds:
                break
            if j.status in FINISHED:
                del self._jobs[jid]

    def _finish(self, job: Job, status: str) -> None:
        job.status, job.finished = status, time.monotonic()
        job._ended.set()
        if status == "cancelled":
            self.cancelled += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.completed += 1

    def _worker(self) -> None:
        while (job := self._q.get()) is not None:
            with self._lock:
                if job.status != "queued":  # cancelled while it waited
                    continue
                self._waiting -= 1
                self._running += 1
                job.status, job.started = "running", time.monotonic()
            job._publish()
            status = self._run(job)
            with self._lock:
                self._running -= 1
                self._durations.append(time.monotonic() - job.started)
                self._finish(job, status)
            job._publish()

    @staticmethod
    def _run(job: Job) -> str:
        try:
            job.images = job.work(job)
            return "done"
        except Cancelled as e:
            job.images = e.images
            return "cancelled"
        except (LookupError, ModelNotFoundError) as e:  # a model this server does not have
            job.error, job.error_status = _one_line(e), 404
            return "failed"
        except (ValueError, TypeError) as e:  # the request's fault, found by the task (e.g. a mask's size)
            job.error, job.error_status = _one_line(e), 400
            return "failed"
        except Exception as e:  # a bug of ours: say so without the traceback
            job.error, job.error_status = f"internal error: {type(e).__name__}", 500
            log.exception("job %s failed", job.id)
            return "failed"


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
