"""`kandi serve`'s web UI: a Gradio app mounted at /ui, with a tab per task.

The UI is one more client of the server: every Generate builds the native API's request body and
runs it through `schemas.plan` and `Server.submit`, so the same checks, limits and bounded queue apply
(a full queue is a message, as the API's 429). Images are shown and downloaded as the very PNG files
the engine wrote, so their metadata (the A1111 `parameters` text and kandi's JSON) survives.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from fastapi import FastAPI
from pydantic import ValidationError

from ..engine import RequestError
from .inputs import FieldError
from .jobs import FINISHED, Job, QueueFull
from .schemas import TASKS, plan
from .ui_bodies import EXTEND, MIX_SLOTS, MODEL_DEFAULT, NO_PRIOR, REPAINT, build_body
from .ui_extras import hires_inputs, lora_names

if TYPE_CHECKING:
    from ..engine import Entry
    from .service import Server

TABS = {"txt2img": "Text to image", "img2img": "Image to image", "inpaint": "Inpaint",
        "mix": "Mix", "controlnet": "ControlNet"}  # fmt: skip
FAMILIES = {"k21": "Kandinsky 2.1", "k22": "Kandinsky 2.2", "k3": "Kandinsky 3", "k31": "Kandinsky 3.1",
            "k5": "Kandinsky 5", "k5i2i": "Kandinsky 5 editing"}  # fmt: skip
ASPECTS = {"1:1": (1, 1), "4:3": (4, 3), "3:4": (3, 4), "3:2": (3, 2), "2:3": (2, 3),
           "16:9": (16, 9), "9:16": (9, 16)}  # fmt: skip
TUNED = ("width", "height", "steps", "guidance_scale", "prior_steps", "prior_guidance_scale")  # per model
KEEP_SECONDS = 3600  # generated files older than this are removed (Gradio serves its own copies)
LABELS = {"image": "Image", "hint": "Depth hint", "mask": "Mask", "width": "Width", "height": "Height",
          "steps": "Steps", "num_images": "Images", "seed": "Seed", "prompt": "Prompt", "model": "Model",
          "guidance_scale": "Guidance", "prior_steps": "Prior steps", "strength": "Strength",
          "prior_guidance_scale": "Prior guidance", "feather": "Feather", "items": "Mix"}  # fmt: skip
# phone screens: no fixed widths, columns stack (their min_width); wide ones: see _task_tab
CSS = """
.gradio-container { max-width: 1400px !important; }
#kandi-head h1 { margin: 0; }
.kandi-status p { margin: 0; }
@media (min-width: 768px) {
  .kandi-task { display: grid !important; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr);
                align-items: start; }
  .kandi-task > .kandi-in { grid-column: 1; grid-row: 1; }
  .kandi-task > .kandi-opts { grid-column: 1; grid-row: 2; }
  .kandi-task > .kandi-out { grid-column: 2; grid-row: 1 / span 2; }
}
@media (max-width: 640px) { .gradio-container { padding: 4px !important; } }
"""


# ------------------------------------------------------------------------------------ pure helpers


def preset_size(aspect: str, default: int, max_side: int) -> tuple[int, int]:
    """(width, height) of about the model's default area at `aspect`, in multiples of 64 within the limit."""
    a, b = ASPECTS[aspect]
    top = max(64, max_side // 64 * 64)

    def side(v: float) -> int:
        return min(top, max(64, round(v / 64) * 64))

    return side(default * math.sqrt(a / b)), side(default * math.sqrt(b / a))


def user_message(exc: Exception) -> str:
    """One sentence for the user, naming the field by its label in the UI."""
    if isinstance(exc, FieldError):
        return f"{_label(exc.field)}: {exc.message}"
    if isinstance(exc, RequestError):  # the engine's: "field: message", or a sentence naming it
        text = str(exc)
        if exc.field and text.startswith(f"{exc.field}: "):
            return f"{_label(exc.field)}: {text[len(exc.field) + 2 :]}"
        return text
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in first.get("loc", ())).lstrip(".")
        return f"{_label(where)}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "")
    if isinstance(exc, QueueFull):
        return f"The server is busy (every place in its queue is taken); try again in {exc.retry_after} s."
    return str(exc)


def _label(field_name: str) -> str:
    head, dot, rest = field_name.partition(".")
    if head.startswith("items[") and head.endswith("]") and head[6:-1].isdigit():
        return f"Item {int(head[6:-1]) + 1}" + (f" {rest}" if dot else "")
    if head == "outpaint":
        return "Margins"
    return LABELS.get(field_name, field_name)


def describe(job: Job) -> str:
    """The progress bar's text: where the job is."""
    if job.status == "queued":
        return "waiting for a free worker"
    s = job.step
    if s is None:
        return "starting"
    head = f"image {s.image + 1}/{s.num_images} · " if s.num_images > 1 else ""
    return f"{head}{s.stage} · step {s.step}/{s.total}"


# ---------------------------------------------------------------------------------- the UI's state


@dataclass
class Outcome:
    """What a Generate shows: the images' files (with their metadata), seeds and a status line."""

    files: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    status: str = ""
    error: bool = False

    @property
    def gallery(self) -> list[tuple[str, str]]:
        return [(f, f"seed {s}") for f, s in zip(self.files, self.seeds)]


class UI:
    """The callbacks, apart from Gradio's components so that tests can call them directly."""

    def __init__(self, server: Server, outdir: Path) -> None:
        self.server, self.outdir = server, outdir
        self.running: dict[tuple[str, str], Job] = {}  # (browser session, tab) -> its job

    def entry(self, model: str | None) -> Entry:
        return self.server.engine.entry(model)

    def defaults(self, model: str | None) -> dict[str, Any]:
        """The model's own defaults, within this server's limits."""
        lim, d = self.server.limits, dict(self.entry(model).defaults())
        for k in ("width", "height"):
            d[k] = min(d[k], lim.max_side // 64 * 64)
        d["steps"] = min(d["steps"], lim.max_steps)
        if "prior_steps" in d:
            d["prior_steps"] = min(d["prior_steps"], lim.max_steps)
        return d

    def tasks(self, model: str | None) -> list[str]:
        supported = self.entry(model).tasks()
        return [name for name, task in TASKS.items() if task in supported]

    def aspect(self, aspect: str | None, model: str | None) -> tuple[int, int]:
        if aspect not in ASPECTS:
            return self.defaults(model)["width"], self.defaults(model)["height"]
        return preset_size(aspect, self.entry(model).defaults()["width"], self.server.limits.max_side)

    def submit(self, task: str, values: dict[str, Any]) -> Job:
        """Check the values as the API would and queue the job; FieldError, ValidationError or QueueFull."""
        try:
            family = self.entry(values.get("model")).family
        except LookupError as e:
            raise FieldError("model", str(e)) from None
        body = build_body(task, values, family)
        label, req = plan(
            task, body, self.server.engine, self.server.limits, self.server.lora_dir, self.server.upscaler_dir
        )
        return self.server.submit(label, req, {"task": task, "client": "ui"})

    async def generate(
        self, task: str, values: dict[str, Any], session: str, progress: Any = None
    ) -> Outcome:
        """Run one Generate click to its end, reporting progress; user mistakes come back as the status."""
        try:
            job = self.submit(task, values)
        except (RequestError, ValidationError, QueueFull) as e:
            return Outcome(status=user_message(e), error=True)
        self.running[(session, task)] = job
        try:
            await self._follow(job, progress)
        finally:
            if job.status not in FINISHED:  # the page went away: free the worker
                self.server.queue.cancel(job)
            if self.running.get((session, task)) is job:
                del self.running[(session, task)]
        return self._outcome(job)

    def cancel(self, task: str, session: str) -> str:
        job = self.running.get((session, task))
        if job is None:
            return "Nothing is running."
        self.server.queue.cancel(job)
        return "Cancelling…"

    async def _follow(self, job: Job, progress: Any) -> None:
        q = job.watch()
        try:
            while job.status not in FINISHED:
                if progress is not None:
                    progress(job.progress, desc=describe(job))
                await q.get()
        finally:
            job.unwatch(q)

    def _outcome(self, job: Job) -> Outcome:
        if job.status == "failed":
            return Outcome(status=job.error or "failed", error=True)
        files, seeds = self._save(job), [g.seed for g in job.images]
        took = (job.finished or time.monotonic()) - (job.started or job.created)
        if job.status == "cancelled":
            return Outcome(files, seeds, f"Cancelled ({len(files)} image(s) finished before).")
        g = job.images[0]
        notes = "".join(f" · {n}" for n in job.meta.get("notes", []))
        return Outcome(files, seeds, f"{len(files)} image(s) · {g.width}×{g.height} · {took:.1f} s{notes}")

    def _save(self, job: Job) -> list[str]:
        """Write the job's PNGs as they are (metadata included) for the gallery and the downloads."""
        self._prune()
        folder = self.outdir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for g in job.images:  # seeds are seed, seed+1...: unique names within the job
            path = folder / f"kandi-{g.seed}.png"
            path.write_bytes(g.png)
            paths.append(str(path))
        return paths

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_SECONDS
        for d in self.outdir.iterdir():
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)


# -------------------------------------------------------------------------------------- mounting

SYSTEM_FONTS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


def mount_ui(app: FastAPI, server: Server) -> None:
    """Mount the web UI at /ui (Gradio, in the same process and on the same queue as the API)."""
    outdir = Path(tempfile.mkdtemp(prefix="kandi-ui-"))
    atexit.register(shutil.rmtree, outdir, True)
    blocks = build_blocks(UI(server, outdir))
    # system fonts: the page loads nothing from the internet (a closed network or a phone offline)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    gr.mount_gradio_app(app, blocks, path="/ui", footer_links=[], run_history=False, ssr_mode=False,
                        mcp_server=False, pwa=False, theme=theme, css=CSS, allowed_paths=[str(outdir)],
                        max_file_size=server.limits.max_upload_bytes)  # fmt: skip


def build_blocks(ui: UI) -> gr.Blocks:
    """The Gradio Blocks: a header, the model choice and a tab per task the model can do."""
    engine = ui.server.engine
    model = engine.default
    with gr.Blocks(
        title="kandi", analytics_enabled=False, delete_cache=(KEEP_SECONDS, KEEP_SECONDS)
    ) as blocks:
        with gr.Row(equal_height=True):
            gr.Markdown(_header(ui), elem_id="kandi-head", min_width=240)
            choice = gr.Dropdown(list(engine.entries), value=model, label="Model", min_width=200,
                                 visible=len(engine.entries) > 1, elem_id="kandi-model")  # fmt: skip
        changed = []  # what choosing another model updates, tab after tab (see model_updates)
        offered = {t for label in engine.entries for t in ui.tasks(label)}
        with gr.Tabs(selected="txt2img"):
            for task, title in TABS.items():
                # Gradio does not hide a tab reliably after the page loaded: a tab shows when some model
                # can do its task, and says so when the chosen one cannot
                with gr.Tab(title, id=task, visible=task in offered, elem_id=f"tab-{task}"):
                    c, notice, go = _task_tab(ui, task, choice)
                changed += [notice, go, *(c[k] for k in TUNED)]
        choice.change(lambda label: model_updates(ui, label), choice, changed, api_visibility="private")
    return blocks


def model_updates(ui: UI, label: str) -> list[dict[str, Any]]:
    """What choosing model `label` changes in each tab: a notice and no Generate where the model cannot
    do the task, and the TUNED sliders at its defaults (Kandinsky 3 has no prior)."""
    d, ok, k3 = ui.defaults(label), ui.tasks(label), ui.entry(label).family in NO_PRIOR
    tuned = [gr.update(value=d[k]) for k in TUNED[:4]]
    tuned += [gr.update(visible=not k3, **({"value": d[k]} if k in d else {})) for k in TUNED[4:]]
    out = []
    for task in TABS:
        out += [
            gr.update(visible=task not in ok, value=_cannot(label, task)),
            gr.update(interactive=task in ok),
        ]
        out += tuned
    return out


def _header(ui: UI) -> str:
    entries = ui.server.engine.entries
    what = " · ".join(f"**{e.label}** ({FAMILIES.get(e.family, e.family)})" for e in entries.values())
    return f"# kandi\n{what} · [API docs](/docs)"


def _cannot(label: str, task: str) -> str:
    return f"⚠️ **{label}** cannot do {TABS[task].lower()}: choose another model above."


def _task_tab(ui: UI, task: str, model: Any) -> tuple[dict[str, Any], Any, Any]:
    """One tab: (its inputs by field name, the notice of a model that cannot do it, Generate)."""
    d = ui.defaults(model.value)
    k3, ok = ui.entry(model.value).family in NO_PRIOR, task in ui.tasks(model.value)
    c: dict[str, Any] = {"model": model}
    notice = gr.Markdown(_cannot(model.value, task), visible=not ok, elem_id=f"{task}-notice")
    # three columns: on a wide screen the images sit right of both input columns (CSS grid); on a
    # phone they stack in order, so the images come right after the Generate button
    with gr.Row(equal_height=False, elem_classes="kandi-task"):
        with gr.Column(min_width=300, elem_classes="kandi-in"):
            if task != "mix":
                c["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="what to draw",
                                         elem_id=f"{task}-prompt")  # fmt: skip
            _task_inputs(task, c, ui.server.limits.max_side)
            c["negative_prompt"] = gr.Textbox(label="Negative prompt", placeholder="what not to draw")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id=f"{task}-generate", min_width=120,
                               interactive=ok)  # fmt: skip
                stop = gr.Button("Cancel", variant="secondary", elem_id=f"{task}-cancel", min_width=90)
        with gr.Column(min_width=300, elem_classes="kandi-out"):
            out = _outputs(task)
        with gr.Column(min_width=300, elem_classes="kandi-opts"):
            _settings(ui, task, c, d, k3)
    _wire(ui, task, c, go, stop, out)
    return c, notice, go


def _settings(ui: UI, task: str, c: dict[str, Any], d: dict[str, Any], k3: bool) -> None:
    """Size, steps, guidance, seed, number of images, and the prior's options (not for Kandinsky 3)."""
    lim = ui.server.limits
    _size_inputs(ui, task, c, d)
    with gr.Row():
        c["steps"] = gr.Slider(1, lim.max_steps, d["steps"], step=1, label="Steps", min_width=140,
                               elem_id=f"{task}-steps")  # fmt: skip
        c["guidance_scale"] = gr.Slider(0, 20, d["guidance_scale"], step=0.5, label="Guidance",
                                        min_width=140, elem_id=f"{task}-guidance")  # fmt: skip
    with gr.Row():
        c["seed"] = gr.Number(-1, label="Seed (-1: random)", precision=0, minimum=-1, min_width=140,
                              elem_id=f"{task}-seed")  # fmt: skip
        c["num_images"] = gr.Slider(1, lim.max_images, 1, step=1, label="Images", min_width=140,
                                    elem_id=f"{task}-images")  # fmt: skip
    with gr.Accordion("More options", open=False, elem_id=f"{task}-more"):
        with gr.Row():
            c["prior_steps"] = gr.Slider(1, lim.max_steps, d.get("prior_steps", 25), step=1, visible=not k3,
                                         label="Prior steps", min_width=140, elem_id=f"{task}-prior-steps")  # fmt: skip
            c["prior_guidance_scale"] = gr.Slider(0, 20, d.get("prior_guidance_scale", 4), step=0.5,
                                                  visible=not k3, label="Prior guidance", min_width=140)  # fmt: skip
        from ..schedulers.names import SCHEDULE_TYPES, sampler_names

        with gr.Row():
            c["scheduler"] = gr.Dropdown([MODEL_DEFAULT, *(x["name"] for x in sampler_names())],
                                         value=MODEL_DEFAULT, label="Sampler", elem_id=f"{task}-sampler")  # fmt: skip
            c["schedule_type"] = gr.Dropdown(list(SCHEDULE_TYPES), value="Automatic", label="Schedule type",
                                             info="for a sampler chosen here", elem_id=f"{task}-schedule")  # fmt: skip
        loras = lora_names(ui.server.lora_dir)
        with gr.Row(visible=bool(loras)):
            c["loras"] = gr.Dropdown(
                loras, value=[], multiselect=True, label="LoRAs", elem_id=f"{task}-loras"
            )
            c["lora_weight"] = gr.Slider(-2, 2, 1.0, step=0.05, label="LoRA weight", min_width=140)
    if task == "txt2img":
        hires_inputs(task, c, ui.server.upscaler_dir, ui.server.limits.max_steps)


def _task_inputs(task: str, c: dict[str, Any], max_side: int) -> None:
    image = {"type": "pil", "image_mode": "RGB", "sources": ["upload", "clipboard"], "height": 240}
    if task == "img2img":
        c["image"] = gr.Image(label="Image to redraw", elem_id="img2img-image", **image)
        c["strength"] = gr.Slider(0, 1, 0.3, step=0.05, label="Strength (more: further from the image)")
    elif task == "inpaint":
        _inpaint_inputs(c, min(512, max_side // 16 * 16))
    elif task == "mix":
        _mix_inputs(c)
    elif task == "controlnet":
        c["hint"] = gr.Image(label="Depth hint (white = near)", elem_id="controlnet-hint", **image)
        c["image"] = gr.Image(label="Start from this image (optional)", **image)
        c["strength"] = gr.Slider(0, 1, 0.3, step=0.05, label="Strength (with a start image)")


def _inpaint_inputs(c: dict[str, Any], top: int) -> None:
    # RGBA: in RGB mode Gradio drops the layers' alpha, which is where the painted mask is
    c["editor"] = gr.ImageEditor(label="Image: paint over what to repaint", type="pil", image_mode="RGBA",
                                 format="png", sources=["upload", "clipboard"], layers=False, transforms=(),
                                 brush=gr.Brush(colors=["rgba(255, 0, 255, 0.7)"], color_mode="fixed"),
                                 height=380, elem_id="inpaint-editor")  # fmt: skip
    c["mode"] = gr.Radio([REPAINT, EXTEND], value=REPAINT, label="Mode", elem_id="inpaint-mode")
    with gr.Column(visible=False) as margins:
        with gr.Row():
            for side in ("left", "top", "right", "bottom"):
                c[side] = gr.Slider(0, top, 0, step=16, label=f"Extend {side}", min_width=140)
    with gr.Row():
        c["strength"] = gr.Slider(0, 1, 1.0, step=0.05, label="Strength", min_width=140)
        c["feather"] = gr.Slider(0, 64, 0, step=1, label="Feather (soft edge, px)", min_width=140)
    c["paste_back"] = gr.Checkbox(False, label="Keep the unpainted pixels exactly")
    c["mode"].change(lambda m: gr.update(visible=m == EXTEND), c["mode"], margins, api_visibility="private")


def _mix_inputs(c: dict[str, Any]) -> None:
    gr.Markdown("Mix two to four texts or images; the sliders weigh them.")
    for k in range(MIX_SLOTS):
        with gr.Group():
            with gr.Row():
                c[f"kind{k}"] = gr.Radio(
                    ["Text", "Image"], value="Text", label=f"Item {k + 1}", min_width=140
                )
                c[f"weight{k}"] = gr.Slider(0, 1, 0.5, step=0.05, label="Weight", min_width=140,
                                            elem_id=f"mix-weight{k}")  # fmt: skip
            c[f"text{k}"] = gr.Textbox(show_label=False, placeholder="a text", elem_id=f"mix-text{k}")
            c[f"image{k}"] = gr.Image(type="pil", image_mode="RGB", show_label=False, visible=False, height=200,
                                      sources=["upload", "clipboard"])  # fmt: skip

        def kind(v: str) -> tuple:
            return gr.update(visible=v == "Text"), gr.update(visible=v == "Image")

        c[f"kind{k}"].change(kind, c[f"kind{k}"], [c[f"text{k}"], c[f"image{k}"]], api_visibility="private")


def _size_inputs(ui: UI, task: str, c: dict[str, Any], d: dict[str, Any]) -> None:
    """Aspect presets and width/height; editing tasks default to the input image's size."""
    top = ui.server.limits.max_side // 64 * 64
    with gr.Column() as area:
        if task in ("img2img", "inpaint", "controlnet"):
            c["input_size"] = gr.Checkbox(True, label="Size of the input image")
        with gr.Column(visible="input_size" not in c) as box:
            aspect = gr.Radio(list(ASPECTS), value="1:1", label="Aspect ratio", elem_id=f"{task}-aspect")
            with gr.Row():
                c["width"] = gr.Slider(64, top, d["width"], step=64, label="Width", min_width=140,
                                       elem_id=f"{task}-width")  # fmt: skip
                c["height"] = gr.Slider(64, top, d["height"], step=64, label="Height", min_width=140,
                                        elem_id=f"{task}-height")  # fmt: skip
    aspect.input(ui.aspect, [aspect, c["model"]], [c["width"], c["height"]], api_visibility="private")
    if "input_size" in c:
        c["input_size"].change(
            lambda on: gr.update(visible=not on), c["input_size"], box, api_visibility="private"
        )
    if task == "inpaint":  # outpainting sizes the canvas itself: image plus margins
        c["mode"].change(lambda m: gr.update(visible=m != EXTEND), c["mode"], area, api_visibility="private")


def _outputs(task: str) -> dict[str, Any]:
    o = {"gallery": gr.Gallery(label="Images", columns=2, object_fit="contain", interactive=False,
                               buttons=["download", "fullscreen"], elem_id=f"{task}-gallery")}  # fmt: skip
    with gr.Row():
        o["used"] = gr.Textbox(
            label="Seed used", interactive=False, min_width=140, elem_id=f"{task}-seed-used"
        )
        o["reuse"] = gr.Button("Reuse seed", size="md", min_width=100, elem_id=f"{task}-reuse")
    o["files"] = gr.File(label="Download (PNG with its metadata)", file_count="multiple", interactive=False,
                         visible=False, elem_id=f"{task}-files")  # fmt: skip
    o["status"] = gr.Markdown(elem_classes="kandi-status", elem_id=f"{task}-status")
    o["seeds"], o["picked"] = gr.State([]), gr.State(0)
    return o


def _wire(ui: UI, task: str, c: dict[str, Any], go: Any, stop: Any, o: dict[str, Any]) -> None:
    names = {comp: name for name, comp in c.items()}

    async def run(data: dict, request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple:
        values = {names[k]: v for k, v in data.items()}
        out = await ui.generate(task, values, getattr(request, "session_hash", None) or "", progress)
        if out.error:
            gr.Warning(out.status)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠️ {out.status}"
        files = gr.update(value=out.files, visible=bool(out.files))  # an empty File box is a big drop zone
        return out.gallery, files, out.seeds, 0, ", ".join(map(str, out.seeds)), out.status

    def cancel(request: gr.Request) -> str:
        return ui.cancel(task, getattr(request, "session_hash", None) or "")

    def picked(evt: gr.SelectData) -> int:
        return evt.index

    def reuse(seeds: list[int], index: int) -> Any:
        return seeds[index] if seeds and 0 <= index < len(seeds) else gr.skip()

    # no Gradio concurrency limit: the server's own bounded queue decides, and says when it is full
    go.click(run, set(c.values()), [o["gallery"], o["files"], o["seeds"], o["picked"], o["used"], o["status"]],
             concurrency_limit=None, show_progress_on=[o["gallery"]], api_visibility="private")  # fmt: skip
    stop.click(cancel, None, o["status"], queue=False, api_visibility="private")
    o["gallery"].select(picked, None, o["picked"], api_visibility="private")
    o["reuse"].click(reuse, [o["seeds"], o["picked"]], c["seed"], api_visibility="private")
