"""The AUTOMATIC1111 web UI API subset (`/sdapi/v1/...`) that editor plugins, bots and outpainting tools
call, answered by kandi's models.

Clients send A1111's whole request schema: what kandi has no use for (hires fix, scripts, restore
faces, override settings other than the model...) is accepted and ignored, and a sampler kandi lacks
("Euler a", "DPM++ 2M Karras") falls back to the model's own scheduler; `info` says so in `comments`.
Unset steps and CFG scale take the model's defaults (A1111's 50 / 7.0 suit Stable Diffusion, not
Kandinsky). Images are base64 PNGs carrying the A1111 `parameters` text chunk.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..engine import Input, Plan
from ..engine import Request as EngineRequest
from ..engine.requests import SERVER_PHRASES
from ..pngmeta import KANDI_KEY, PARAMETERS_KEY, parse_parameters
from .inputs import FieldError, decode_image, decode_mask, encode_png_base64
from .service import error


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionProcessingTxt2Img fields kandi uses; any other field is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str | None = ""
    seed: int | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients name the sampler here
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    # the hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float | None = Field(None, ge=1, le=8, allow_inf_nan=False)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = Field(None, ge=0)
    hr_resize_x: int | None = Field(None, ge=0)
    hr_resize_y: int | None = Field(None, ge=0)
    denoising_strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = None
    mask: str | None = None
    mask_blur: int | None = Field(None, ge=0, le=256)
    inpainting_mask_invert: int = 0


class ExtraSingleImageRequest(BaseModel):
    """A1111's extras (upscaling) of one image; face restoration and the second upscaler are ignored."""

    model_config = ConfigDict(extra="allow")

    image: str = ""
    resize_mode: int = 0
    upscaling_resize: float = Field(2, ge=1, le=8, allow_inf_nan=False)
    upscaler_1: str | None = "Lanczos"


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: str = ""


def a1111_routes(app: FastAPI, server: Any) -> None:
    state = {"model": server.engine.default}

    async def generate(body: Txt2ImgRequest, request: Request, img2img: bool) -> Response:
        label, req = _plan(body, server, state["model"], img2img)
        started = time.time()
        job = server.submit(label, req, {"task": "img2img" if img2img else "txt2img", "api": "a1111",
                                         "timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started))})  # fmt: skip
        if not await server.wait(job, request):
            return JSONResponse({"error": "client went away"}, status_code=499)
        if job.status == "failed":
            return error(job.error_status, job.error or "failed")
        # an interrupted job answers 200 with the images made before the interrupt, as A1111 does
        return JSONResponse(_response(body, req, label, job))

    @app.post("/sdapi/v1/txt2img", tags=["AUTOMATIC1111"], summary="A1111 text to image")
    async def txt2img(body: Txt2ImgRequest, request: Request) -> Response:
        return await generate(body, request, img2img=False)

    @app.post("/sdapi/v1/img2img", tags=["AUTOMATIC1111"], summary="A1111 image to image / inpainting (mask)")
    async def img2img(body: Img2ImgRequest, request: Request) -> Response:
        return await generate(body, request, img2img=True)

    @app.get("/sdapi/v1/progress", tags=["AUTOMATIC1111"], summary="progress of the job running now")
    async def progress(skip_current_image: bool = False) -> dict[str, Any]:
        return _progress(server)

    @app.post("/sdapi/v1/interrupt", tags=["AUTOMATIC1111"], summary="stop the running A1111 jobs")
    async def interrupt() -> dict[str, Any]:
        n = 0
        for job in server.queue.jobs():
            if job.meta.get("api") == "a1111" and job.status in ("queued", "running"):
                server.queue.cancel(job)
                n += 1
        return {"interrupted": n}

    app.post("/sdapi/v1/skip", tags=["AUTOMATIC1111"], summary="as interrupt")(interrupt)

    @app.post("/sdapi/v1/png-info", tags=["AUTOMATIC1111"], summary="the generation parameters in a PNG")
    async def png_info(body: PngInfoRequest) -> dict[str, Any]:
        return _png_info(body.image, server.limits)

    @app.get("/sdapi/v1/sd-models", tags=["AUTOMATIC1111"], summary="the loaded models")
    async def sd_models() -> list[dict[str, Any]]:
        return [{"title": e.label, "model_name": e.label, "hash": None, "sha256": None,
                 "filename": e.name, "config": None} for e in server.engine.entries.values()]  # fmt: skip

    @app.get("/sdapi/v1/samplers", tags=["AUTOMATIC1111"], summary="the samplers kandi has")
    async def samplers() -> list[dict[str, Any]]:
        from ..schedulers.names import sampler_names

        return sampler_names()

    @app.get("/sdapi/v1/options", tags=["AUTOMATIC1111"], summary="the settings clients read")
    async def get_options() -> dict[str, Any]:
        return {"sd_model_checkpoint": state["model"], "samples_format": "png", "kandi_version": __version__}

    @app.post(
        "/sdapi/v1/options", tags=["AUTOMATIC1111"], summary="choose the model (other settings ignored)"
    )
    async def set_options(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("sd_model_checkpoint"):
            state["model"] = _model(server, body["sd_model_checkpoint"], "sd_model_checkpoint")
        return {}

    @app.get("/sdapi/v1/loras", tags=["AUTOMATIC1111"], summary="the LoRA files of --lora-dir")
    async def loras() -> list[dict[str, Any]]:
        from ..lora import list_loras

        return [{"name": x["name"], "alias": x["alias"], "path": x["path"], "metadata": {}}
                for x in (list_loras(server.lora_dir) if server.lora_dir else [])]  # fmt: skip

    @app.get(
        "/sdapi/v1/upscalers", tags=["AUTOMATIC1111"], summary="Lanczos, Nearest and --upscaler-dir's models"
    )
    async def upscalers() -> list[dict[str, Any]]:
        from ..upscale import list_upscalers

        return [{"name": x["name"], "model_name": x["key"] if x["path"] else None, "model_path": x["path"],
                 "model_url": None, "scale": None} for x in list_upscalers(server.upscaler_dir)]  # fmt: skip

    @app.post(
        "/sdapi/v1/extra-single-image", tags=["AUTOMATIC1111"], summary="A1111 extras: upscale one image"
    )
    async def extra_single_image(body: ExtraSingleImageRequest) -> dict[str, Any]:
        import asyncio

        from ..engine.upscaling import upscale_image

        image = decode_image(body.image, "image", server.limits)
        upscaler = body.upscaler_1 if body.upscaler_1 not in (None, "", "None") else "lanczos"
        scale = body.upscaling_resize
        made = await asyncio.to_thread(upscale_image, image, int(scale) if scale == int(scale) else scale, upscaler,
                                       server.upscaler_dir, server.limits, 512, str(server.engine.device))  # fmt: skip
        info = f"Postprocess upscale by: {int(scale)}, Postprocess upscaler: {made.upscaler}"
        return {"html_info": f"<p>{info}</p>", "image": encode_png_base64(made.png)}

    for path in ("sd-vae", "prompt-styles", "embeddings"):
        app.get(f"/sdapi/v1/{path}", tags=["AUTOMATIC1111"], summary="none in kandi")(_empty(path))


def _empty(path: str) -> Any:
    async def none() -> Any:
        return {"loaded": {}, "skipped": {}} if path == "embeddings" else []

    none.__name__ = f"a1111_{path.replace('-', '_')}"
    return none


def _model(server: Any, title: str, field: str) -> str:
    try:
        return server.engine.entry(str(title).split(" [")[0]).label  # A1111 titles may end in " [hash]"
    except LookupError as e:
        raise FieldError(field, str(e), 404) from None


A1111_NAMES = {
    "width": "width",
    "height": "height",
    "steps": "steps",
    "num_images": "batch_size",
    **SERVER_PHRASES,
}


def _plan(body: Any, server: Any, current: str, img2img: bool) -> tuple[str, Plan]:
    """The engine plan for an A1111 body: the model from override_settings or the options."""
    chosen = (body.override_settings or {}).get("sd_model_checkpoint")
    label = _model(server, chosen, "override_settings.sd_model_checkpoint") if chosen else current
    scheduler, notes = _sampler(body.sampler_name or body.sampler_index, getattr(body, "scheduler", None))
    seed = body.seed if body.seed is not None and body.seed >= 0 else None
    req = EngineRequest("generate", prompt=body.prompt, negative_prompt=body.negative_prompt or None, model=label,
                  width=body.width, height=body.height, steps=body.steps, guidance_scale=body.cfg_scale, seed=seed,
                  num_images=body.batch_size * body.n_iter, scheduler=scheduler, notes=notes, names=A1111_NAMES,
                  lora_dir=server.lora_dir, upscaler_dir=server.upscaler_dir)  # fmt: skip
    if body.enable_hr and not img2img:
        req.hires = _hires(body)
    if img2img:  # unset sizes are the model's, not the input image's (A1111 clients send theirs)
        d = server.engine.entry(label).defaults()
        req.width, req.height = body.width or d["width"], body.height or d["height"]
        _img2img(body, req, server.limits)
    entry, p = server.engine.plan(req, server.limits)
    return entry.label, p


def _hires(body: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's hires-fix fields as the engine's (A1111's defaults: scale 2, strength 0.7, Latent)."""
    return {"scale": body.hr_scale or 2.0, "strength": 0.7 if body.denoising_strength is None else body.denoising_strength,
            "steps": body.hr_second_pass_steps or 0, "upscaler": body.hr_upscaler or "Latent",
            "resize_x": body.hr_resize_x or 0, "resize_y": body.hr_resize_y or 0}  # fmt: skip


def _img2img(body: Img2ImgRequest, req: EngineRequest, limits: Any) -> None:
    if not body.init_images:
        raise FieldError("init_images", "img2img needs an image in init_images (base64)")
    if len(body.init_images) > 1:
        req.notes.append("kandi uses the first of init_images")
    req.command, req.image = "img2img", Input(decode_image(body.init_images[0], "init_images[0]", limits))
    req.strength = 0.75 if body.denoising_strength is None else body.denoising_strength  # A1111's default
    if body.mask is None:
        return
    req.command = "inpaint"
    req.mask = Input(decode_mask(body.mask, "mask", limits, invert=bool(body.inpainting_mask_invert)))
    # A1111 keeps the pixels outside the mask, blending the edge over mask_blur pixels
    req.paste_back, req.feather = True, 4 if body.mask_blur is None else body.mask_blur


def _sampler(name: str | None, schedule: str | None = None) -> tuple[str | None, list[str]]:
    """kandi's sampler for an A1111 sampler name and schedule type (None: the model's own), and a note when
    kandi lacks it (A1111 clients also send the names of extensions' samplers)."""
    from ..schedulers.names import from_a1111

    return from_a1111(name, schedule)


def _response(body: Any, req: Plan, label: str, job: Any) -> dict[str, Any]:
    opts = req.opts
    seeds = [g.seed for g in job.images] or [opts.seed]
    infotexts = [g.parameters for g in job.images]
    info = {
        "prompt": opts.prompt, "all_prompts": [opts.prompt] * len(seeds),
        "negative_prompt": opts.negative_prompt or "", "all_negative_prompts": [opts.negative_prompt or ""] * len(seeds),
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0,
        "width": job.images[0].width if job.images else opts.width,
        "height": job.images[0].height if job.images else opts.height,
        "sampler_name": opts.scheduler or _own_sampler(infotexts),
        "cfg_scale": opts.guidance_scale, "steps": opts.steps, "batch_size": body.batch_size,
        "restore_faces": False, "sd_model_name": label, "sd_model_hash": None,
        "denoising_strength": req.hires.strength if req.hires else req.strength if req.task != "text_to_image" else None,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": job.meta.get("timestamp", ""), "clip_skip": 1,
        "is_using_inpainting_conditioning": req.task == "inpaint", "version": f"kandi {__version__}",
        "comments": {"kandi": req.notes} if req.notes else {}, "interrupted": job.status == "cancelled",
    }  # fmt: skip
    images = [encode_png_base64(g.png) for g in job.images] if body.send_images else []
    return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info, ensure_ascii=False)}


def _progress(server: Any) -> dict[str, Any]:
    """A1111's progress: the job that started last, its share done and the seconds it likely has left."""
    jobs = server.queue.jobs()
    running = [j for j in jobs if j.status == "running"]
    waiting = sum(j.status == "queued" for j in jobs)
    job = max(running, key=lambda j: j.started, default=None)
    state = {"skipped": False, "interrupted": False, "job": "", "job_count": len(running) + waiting,
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}  # fmt: skip
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    p, elapsed = job.progress, time.monotonic() - job.started
    state |= {"job": job.id, "interrupted": job.cancelled, "job_timestamp": job.meta.get("timestamp", "0")}
    if job.step is not None:
        state |= {"job_no": job.step.image, "sampling_step": job.step.step, "sampling_steps": job.step.total}
    eta = elapsed / p - elapsed if p > 0 else 0.0
    return {"progress": round(p, 4), "eta_relative": round(eta, 2), "state": state, "current_image": None,
            "textinfo": None}  # fmt: skip


def _own_sampler(infotexts: list[str]) -> str | None:
    return parse_parameters(infotexts[0]).get("Sampler") if infotexts else None


def _png_info(data: str, limits: Any) -> dict[str, Any]:
    """A1111's png-info: the `parameters` text, the other text chunks, and the parameters parsed."""
    image = decode_image(data, "image", limits)
    texts = {k: str(v) for k, v in getattr(image, "text", {}).items()}  # JPEG, WebP...: no text chunks
    info = texts.get(PARAMETERS_KEY, "")
    items = {k: v for k, v in texts.items() if k != PARAMETERS_KEY}
    if KANDI_KEY in items:
        try:
            items[KANDI_KEY] = json.loads(items[KANDI_KEY])
        except json.JSONDecodeError:
            pass
    return {"info": info, "items": items, "parameters": parse_parameters(info) if info else {}}
