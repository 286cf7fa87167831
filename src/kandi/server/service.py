"""What the routes of every door share: the engine, the job queue and the limits (`Server`), and the
JSON error body."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..engine import Engine, Plan
from .inputs import Limits
from .jobs import FINISHED, Job, JobQueue


@dataclass
class Server:
    """What the routes share: the models, the queue and the limits."""

    engine: Engine
    queue: JobQueue
    limits: Limits
    lora_dir: str | None = None  # where <lora:NAME:SCALE> prompt tags find their files
    upscaler_dir: str | None = None  # learned upscalers, for hi-res passes and extra-single-image

    def submit(self, label: str, req: Plan, meta: dict[str, Any]) -> Job:
        """A job running `req` on model `label`; QueueFull when the server is saturated."""

        def work(job: Job) -> list:
            def progress(step: Any) -> None:
                job.step = step
                job._publish()

            return list(self.engine.run(label, req, progress, lambda: job.cancelled))

        return self.queue.submit(
            Job(work, {"model": label, **meta, **({"notes": req.notes} if req.notes else {})})
        )

    async def wait(self, job: Job, request: Request) -> bool:
        """Wait for `job` to finish; if the client goes away first, cancel it and return False."""
        q = job.watch()
        loop = asyncio.get_running_loop()
        check_at = loop.time() + 0.5
        try:
            while job.status not in FINISHED:
                # progress events may come faster than 0.5 s: look at the connection on a clock, not on
                # silence (asyncio.TimeoutError: a builtin TimeoutError only from Python 3.11)
                try:
                    await asyncio.wait_for(q.get(), timeout=max(check_at - loop.time(), 0))
                except asyncio.TimeoutError:
                    pass
                if loop.time() >= check_at:
                    check_at = loop.time() + 0.5
                    if job.status not in FINISHED and await request.is_disconnected():
                        self.queue.cancel(job)
                        return False
            return True
        finally:
            job.unwatch(q)


def error(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"message": message, **({"field": field} if field else {})}
    return JSONResponse({"error": body}, status_code=status, headers=headers)
