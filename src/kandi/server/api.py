"""`kandi serve`'s HTTP application: the native API, the AUTOMATIC1111-compatible subset and the web UI.

Every request that makes images becomes a job on one bounded JobQueue, whatever door it came in by,
so the limits, the 429s and the cancelling hold for all of them. A client that disconnects while it
waits cancels its job (its slot is freed at the next step); jobs made by `POST /v1/jobs/...` live on
until they finish and are fetched by id.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import Engine, RequestError
from .inputs import FieldError, Limits, encode_png_base64
from .jobs import FINISHED, Job, JobQueue, QueueFull
from .schemas import BODIES, plan
from .service import Server, error

log = logging.getLogger("kandi.server")


def create_app(engine: Engine, workers: int = 1, max_waiting: int = 16, limits: Limits | None = None,
               api_key: str | None = None, ui: bool = True, lora_dir: str | None = None,
               upscaler_dir: str | None = None) -> FastAPI:  # fmt: skip
    """The whole server as an ASGI app (run it with uvicorn; tests call it in-process)."""
    limits = limits or Limits()
    server = Server(engine, JobQueue(workers, max_waiting), limits, lora_dir, upscaler_dir)
    app = FastAPI(title="kandi", version=__version__, docs_url=None, redoc_url=None,
                  description="Kandinsky 2.1 / 2.2 / 3 image generation: a native API, an AUTOMATIC1111-"
                  "compatible subset (/sdapi/v1) and a web UI (/ui).")  # fmt: skip
    app.state.server = server
    _docs(app)
    _errors(app)
    _native_routes(app, server)
    from .a1111 import a1111_routes

    a1111_routes(app, server)
    if ui:
        from .ui import mount_ui

        mount_ui(app, server)
    app.add_middleware(_Guard, api_key=api_key, max_body=limits.max_body_bytes)
    app.router.on_shutdown.append(server.queue.close)
    return app


def _docs(app: FastAPI) -> None:
    """/docs (Swagger UI) with its scripts served from here: FastAPI's own page loads them from a CDN,
    which leaves a blank page on a machine without internet. The assets ship with the fastapi-offline
    package (a dependency of the serve extra). No /redoc: ReDoc fetches its logo from its own site."""
    from pathlib import Path

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        import fastapi_offline
    except ImportError:  # an old install of the extra: the API works, its docs page does not
        return
    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=static), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="kandi API", swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="/docs-assets/favicon.png")  # fmt: skip


# ----------------------------------------------------------------------------------------------- errors


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        field = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, field = "the body is not valid JSON", None
        elif first.get("type") == "extra_forbidden":
            msg = "unknown field (see /docs for the fields this endpoint takes)"
        return error(422, f"{field}: {msg}" if field else msg, field)

    @app.exception_handler(RequestError)
    async def bad_field(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, str(exc), exc.field)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        return error(429, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")


class _Guard:
    """ASGI middleware: the API key (when set) on every path, and a cap on request body bytes."""

    def __init__(self, app: Any, api_key: str | None, max_body: int) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["type"] == "websocket":  # no body to cap; refuse the handshake without the key
            if self.api_key and not self._authorized(headers):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        if self.api_key and not self._authorized(headers):
            return await error(401, "this server needs an API key: send `Authorization: Bearer KEY`, "
                               "`X-API-Key: KEY` or HTTP basic auth with the key as password",
                               headers={"WWW-Authenticate": 'Basic realm="kandi"'})(scope, receive, send)  # fmt: skip
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await error(413, f"the request body is over this server's limit of {self.max_body} bytes")(
                scope, receive, send)  # fmt: skip
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # chunked bodies carry no length: count them
                raise FieldError(
                    "body", f"the request body is over this server's limit of {self.max_body} bytes", 413
                )
            return message

        await self.app(scope, counted, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        return secrets.compare_digest(given.encode(), self.api_key.encode())


# ---------------------------------------------------------------------------------------- native API


def result(job: Job) -> dict[str, Any]:
    """A finished job's JSON: seeds, and each image as base64 PNG with its A1111 parameters text."""
    images = [{"seed": g.seed, "width": g.width, "height": g.height, "parameters": g.parameters,
               "png_base64": encode_png_base64(g.png)} for g in job.images]  # fmt: skip
    return {**job.state(), "seeds": [g.seed for g in job.images], "images": images}


def finished(job: Job, as_png: bool) -> Response:
    """The response for a job that has ended (done, failed or cancelled)."""
    if job.status == "failed":
        return error(job.error_status, job.error or "failed")
    if job.status == "cancelled":
        return error(409, "the job was cancelled before it finished")
    if as_png:
        g = job.images[0]
        return Response(
            g.png, media_type="image/png", headers={"X-Kandi-Seed": str(g.seed), "X-Kandi-Job": job.id}
        )
    return JSONResponse(result(job))


def _wants_png(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        if fmt not in ("json", "png"):
            raise FieldError("format", f"{fmt!r} is not a format; use json or png")
        return fmt == "png"
    return "image/png" in request.headers.get("accept", "") and "application/json" not in request.headers.get(
        "accept", ""
    )


def _native_routes(app: FastAPI, server: Server) -> None:
    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/" if "/ui" in {getattr(r, "path", "") for r in app.routes} else "/docs")

    @app.get("/health", summary="liveness and queue state")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "queue": server.queue.stats()}

    @app.get("/models", summary="the loaded models, their tasks and defaults")
    async def models() -> dict[str, Any]:
        from .schemas import TASKS

        out = []
        for e in server.engine.entries.values():
            out.append({"name": e.label, "family": e.family, "default": e.label == server.engine.default,
                        "tasks": [k for k, v in TASKS.items() if v in e.tasks()], "defaults": e.defaults(),
                        "loaded": sorted(e.loaded)})  # fmt: skip
        return {
            "models": out,
            "limits": vars(server.limits) | {"max_body_bytes": server.limits.max_body_bytes},
        }

    for name, body_type in BODIES.items():
        _task_routes(app, server, name, body_type)

    @app.get("/v1/jobs/{job_id}", summary="a job's state (and its images once done)")
    async def job_state(job_id: str) -> Response:
        job = _job(server, job_id)
        if job.status == "done":
            return JSONResponse(result(job))
        return JSONResponse(job.state())

    @app.get("/v1/jobs/{job_id}/events", summary="a job's progress as server-sent events")
    async def job_events(job_id: str) -> StreamingResponse:
        return _sse(server, _job(server, job_id), cancel_on_close=False)

    @app.get("/v1/jobs/{job_id}/images/{index}", summary="one image of a finished job, as PNG")
    async def job_image(job_id: str, index: int) -> Response:
        job = _job(server, job_id)
        if job.status != "done":
            return finished(job, False) if job.status in FINISHED else error(409, f"the job is {job.status}")
        if not 0 <= index < len(job.images):
            return error(404, f"the job has images 0..{len(job.images) - 1}", "index")
        g = job.images[index]
        return Response(g.png, media_type="image/png", headers={"X-Kandi-Seed": str(g.seed)})

    @app.delete("/v1/jobs/{job_id}", summary="cancel a job")
    async def job_cancel(job_id: str) -> dict[str, Any]:
        job = _job(server, job_id)
        server.queue.cancel(job)
        return job.state()


def _task_routes(app: FastAPI, server: Server, name: str, body_type: type) -> None:
    async def run(
        body: body_type, request: Request, format: str | None = None, stream: bool = False
    ) -> Response:  # type: ignore[valid-type]
        as_png = _wants_png(request, format)
        if as_png and body.num_images > 1:
            raise FieldError("num_images", "a PNG response holds one image: ask for JSON to get several")
        label, req = plan(name, body, server.engine, server.limits, server.lora_dir, server.upscaler_dir)
        job = server.submit(label, req, {"task": name})
        if stream:
            return _sse(server, job, cancel_on_close=True)
        if not await server.wait(job, request):
            return error(499, "the client went away; the job was cancelled")
        return finished(job, as_png)

    async def enqueue(body: body_type) -> JSONResponse:  # type: ignore[valid-type]
        label, req = plan(name, body, server.engine, server.limits, server.lora_dir, server.upscaler_dir)
        job = server.submit(label, req, {"task": name})
        links = {"status_url": f"/v1/jobs/{job.id}", "events_url": f"/v1/jobs/{job.id}/events"}
        return JSONResponse({**job.state(), **links}, status_code=202)

    # the body type differs per task: set it on the functions themselves (annotations here are strings)
    run.__annotations__["body"] = enqueue.__annotations__["body"] = body_type
    what = {"txt2img": "text to image", "img2img": "image to image", "inpaint": "inpainting or outpainting",
            "mix": "a mix of texts and images", "controlnet": "ControlNet (depth hint)"}[name]  # fmt: skip
    app.post(f"/v1/{name}", summary=f"{what}: wait for the images (JSON or ?format=png), or ?stream=true for SSE progress",
             responses={200: {"content": {"image/png": {}}}})(run)  # fmt: skip
    app.post(f"/v1/jobs/{name}", summary=f"{what}: start a job and return its id at once", status_code=202)(
        enqueue
    )


def _job(server: Server, job_id: str) -> Job:
    job = server.queue.get(job_id)
    if job is None:
        raise FieldError(
            "job_id", f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)", 404
        )
    return job


def _sse(server: Server, job: Job, cancel_on_close: bool) -> StreamingResponse:
    """Progress events (`event: progress`), then one `done` event with the images, or `failed`/`cancelled`."""

    async def events() -> AsyncIterator[str]:
        q = job.watch()
        try:
            while True:
                event = await q.get()
                if event["event"] == "done":
                    event = {"event": "done", **result(job)}
                yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
                if event["event"] in FINISHED:
                    return
        finally:
            job.unwatch(q)
            if cancel_on_close and job.status not in FINISHED:
                server.queue.cancel(job)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
