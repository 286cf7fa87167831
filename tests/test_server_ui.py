"""The web UI's callbacks in-process (no browser) on the tiny 2.2 models in an offline cache: the values
of the UI's components become the API's request bodies, mistakes become one-line messages, and a
Generate runs on the server's queue and shows the engine's PNG files, metadata included."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tiny
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from kandi.engine import Engine
from kandi.server.api import Server, create_app
from kandi.server.inputs import FieldError, Limits, decode_mask
from kandi.server.jobs import JobQueue
from kandi.server.schemas import InpaintBody, MixBody, Txt2ImgBody
from kandi.server.ui import TABS, TUNED, UI, model_updates, preset_size, user_message
from kandi.server.ui_bodies import EXTEND, REPAINT, build_body, editor_mask

SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "prior_steps": 2, "seed": -1}


@pytest.fixture(scope="module")
def engine(k22_cache) -> Engine:
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        yield Engine(["kandinsky-2.2"], offline=True).load()


@pytest.fixture
def ui(engine, tmp_path) -> UI:
    queue = JobQueue(workers=1, max_waiting=2)
    yield UI(Server(engine, queue, Limits(max_side=256, max_steps=300, max_images=4)), tmp_path)
    queue.close()


def picture(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def painted(w: int, h: int, box: tuple[int, int, int, int], alpha: int = 255) -> Image.Image:
    """A brush layer: transparent, with paint (of some opacity) over `box`."""
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    layer.paste((255, 0, 255, alpha), box)
    return layer


def generate(ui: UI, task: str, values: dict, progress=None):
    return asyncio.run(ui.generate(task, {**SMALL, **values}, "session", progress))


# --------------------------------------------------------------------------------- pure helpers


def test_aspect_presets_keep_the_model_area_in_multiples_of_64():
    assert preset_size("1:1", 512, 2048) == (512, 512)
    assert preset_size("16:9", 512, 2048) == (704, 384)
    assert preset_size("3:4", 1024, 2048) == (896, 1152)
    assert preset_size("9:16", 1024, 1000) == (768, 960)  # within the server's limit (multiple of 64)
    for aspect in ("4:3", "2:3", "16:9"):
        w, h = preset_size(aspect, 512, 2048)
        assert w % 64 == 0 and h % 64 == 0 and abs(w * h / 512**2 - 1) < 0.15


def test_ui_aspect_uses_the_model_default_size(ui):
    assert ui.aspect("1:1", None) == (256, 256)  # 512 is over this server's max_side of 256
    assert ui.aspect("16:9", None) == (256, 256)  # both sides clamped
    assert ui.aspect(None, None) == (256, 256)


def test_editor_mask_is_the_union_of_painted_layers():
    bg = picture(64, 48)
    mask = editor_mask({"background": bg, "layers": [painted(64, 48, (0, 0, 16, 48)),
                                                      painted(64, 48, (40, 10, 50, 20), alpha=60)]})  # fmt: skip
    m = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (64, 48)
    assert (m[:, :16] == 255).all() and (m[10:20, 40:50] == 255).all()  # faint paint counts fully
    assert m.sum() == 255 * (16 * 48 + 10 * 10)
    # a layer of another size (the canvas) covers the same share of the image
    half = editor_mask({"background": bg, "layers": [painted(128, 96, (0, 0, 64, 96))]})
    assert (np.asarray(half)[:, :32] == 255).all() and (np.asarray(half)[:, 32:] == 0).all()
    # what the server decodes from the body's base64 PNG is that mask (white = repaint)
    one = {"background": bg, "layers": [painted(64, 48, (0, 0, 16, 48))]}
    body = build_body("inpaint", {**SMALL, "editor": one, "mode": REPAINT, "input_size": True}, "k22")
    assert np.array_equal(np.asarray(decode_mask(body.mask, "mask", Limits())), np.asarray(editor_mask(one)))


def test_editor_without_paint_has_no_mask():
    assert editor_mask(None) is None
    assert editor_mask({"background": None, "layers": []}) is None
    assert editor_mask({"background": picture(), "layers": [painted(64, 64, (0, 0, 0, 0)), None]}) is None


def test_bodies_from_ui_values():
    b = build_body("txt2img", {**SMALL, "seed": -1, "negative_prompt": "", "scheduler": "model default",
                               "guidance_scale": 5.0, "num_images": 2.0}, "k22")  # fmt: skip
    assert isinstance(b, Txt2ImgBody)
    assert b.seed is None and b.negative_prompt is None and b.scheduler is None and b.num_images == 2
    assert (b.width, b.height, b.steps, b.prior_steps, b.guidance_scale) == (64, 64, 2, 2, 5.0)
    assert build_body("txt2img", {**SMALL, "seed": 42, "scheduler": "ddim"}, "k22").seed == 42
    # the schedule-type menu rides on the sampler's name, as the API takes it; the model's own has none
    for sampler, schedule, sent in (("UniPC", "Karras", "UniPC Karras"), ("Euler", "Automatic", "Euler"),
                                    ("DPM++ 2M Karras", "Karras", "DPM++ 2M Karras"), ("model default", "Karras", None)):  # fmt: skip
        body = build_body("txt2img", {**SMALL, "scheduler": sampler, "schedule_type": schedule}, "k22")
        assert body.scheduler == sent
    # Kandinsky 3 has no prior: its fields are left out rather than recorded
    k3 = build_body("txt2img", {**SMALL, "prior_guidance_scale": 4.0}, "k3")
    assert k3.prior_steps is None and k3.prior_guidance_scale is None
    # editing tasks take the input image's size unless asked otherwise
    img = build_body("img2img", {**SMALL, "image": picture(), "strength": 0.5, "input_size": True}, "k22")
    assert img.width is None and img.height is None and img.strength == 0.5
    out = build_body("inpaint", {**SMALL, "editor": {"background": picture(), "layers": []}, "mode": EXTEND,
                                 "left": 64, "top": 0.0, "right": None, "bottom": 16, "input_size": False}, "k22")  # fmt: skip
    assert isinstance(out, InpaintBody) and out.mask is None and out.width is None
    assert out.outpaint.model_dump() == {"left": 64, "top": 0, "right": 0, "bottom": 16}
    mix = build_body("mix", {**SMALL, "kind0": "Text", "text0": " a cat ", "weight0": 0.3, "kind1": "Image",
                             "image1": picture(), "weight1": 0.7, "kind2": "Text", "text2": "  ",
                             "kind3": "Image", "image3": None}, "k22")  # fmt: skip
    assert isinstance(mix, MixBody) and [i.text for i in mix.items] == ["a cat", None]
    assert [i.weight for i in mix.items] == [0.3, 0.7] and mix.items[1].image
    cn = build_body(
        "controlnet", {**SMALL, "hint": picture(), "image": None, "strength": 0.3, "input_size": True}, "k22"
    )
    assert cn.image is None and cn.strength is None  # strength only goes with a start image


@pytest.mark.parametrize(
    "task, values, message",
    [
        ("img2img", {"image": None}, "Image: upload the image to redraw"),
        ("inpaint", {"editor": None, "mode": REPAINT}, "Image: upload the image to repaint or extend"),
        ("inpaint", {"editor": {"background": picture(), "layers": []}, "mode": REPAINT},
         "Mask: paint over the part to repaint"),
        ("inpaint", {"editor": {"background": picture(), "layers": []}, "mode": EXTEND},
         "Margins: set at least one margin"),
        ("mix", {"kind0": "Text", "text0": "a cat"}, "Mix: give at least two items"),
        ("controlnet", {"hint": None}, "Depth hint: upload a depth map"),
    ],
)  # fmt: skip
def test_missing_inputs_are_named(ui, task, values, message):
    out = generate(ui, task, values)
    assert out.error and out.status.startswith(message) and not out.files


def test_limits_and_invalid_values_are_messages(ui):
    assert generate(ui, "txt2img", {"width": 512}).status == "Width: 512 is over this server's limit of 256"
    assert generate(ui, "txt2img", {"num_images": 9}).status == "Images: 9 is over this server's limit of 4"
    out = generate(ui, "txt2img", {"steps": 0})
    assert out.error and out.status == "Steps: Input should be greater than or equal to 1"
    assert generate(ui, "txt2img", {"model": "kandinsky-3"}).status.startswith(
        "Model: model 'kandinsky-3' is not"
    )
    assert user_message(FieldError("items[1].image", "not valid base64")) == "Item 2 image: not valid base64"
    with pytest.raises(ValidationError) as e:
        MixBody(items=[{"text": "a cat", "weight": "heavy"}])
    assert user_message(e.value).startswith("Item 1 weight: Input should be a valid number")


def test_a_full_queue_says_so(engine, tmp_path):
    queue = JobQueue(workers=1, max_waiting=0)  # no waiting place: every request is refused
    try:
        out = generate(UI(Server(engine, queue, Limits()), tmp_path), "txt2img", {})
    finally:
        queue.close()
    assert out.error and out.status.startswith("The server is busy") and "try again in" in out.status


# ------------------------------------------------------------------------------------- generating


def test_generate_shows_the_engine_png_with_its_metadata(ui):
    seen = []
    out = generate(ui, "txt2img", {"seed": 7, "num_images": 2}, lambda f, desc=None: seen.append((f, desc)))
    assert not out.error and out.seeds == [7, 8] and out.status.startswith("2 image(s) · 64×64")
    assert [caption for _, caption in out.gallery] == ["seed 7", "seed 8"]
    for path, seed in zip(out.files, out.seeds):
        im = Image.open(path)
        assert im.size == (64, 64) and path.endswith(f"kandi-{seed}.png")
        assert f"Seed: {seed}" in im.text["parameters"] and im.text["parameters"].startswith("a red fox")
        assert '"command": "generate"' in im.text["kandi"]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] <= 1
    assert any(d == "image 2/2 · decoder · step 4/4" for _, d in seen), seen
    again = generate(ui, "txt2img", {"seed": 8})  # reusing a seed makes that image again
    assert np.array_equal(np.asarray(Image.open(again.files[0])), np.asarray(Image.open(out.files[1])))


def test_inpaint_repaints_only_the_painted_part(ui):
    image = picture(64, 64, seed=3)
    editor = {"background": image, "layers": [painted(64, 64, (0, 0, 32, 64))]}
    out = generate(ui, "inpaint", {"editor": editor, "mode": REPAINT, "strength": 1.0, "paste_back": True,
                                   "feather": 0, "input_size": True})  # fmt: skip
    assert not out.error, out.status
    result = np.asarray(Image.open(out.files[0]).convert("RGB"))
    assert np.array_equal(result[:, 32:], np.asarray(image)[:, 32:])  # unpainted: kept exactly
    assert not np.array_equal(result[:, :32], np.asarray(image)[:, :32])


def test_outpaint_mix_and_controlnet(ui):
    out = generate(ui, "inpaint", {"editor": {"background": picture(), "layers": []}, "mode": EXTEND,
                                   "left": 64, "top": 0, "right": 0, "bottom": 0, "strength": 1.0})  # fmt: skip
    assert not out.error, out.status
    assert Image.open(out.files[0]).size == (128, 64)
    mix = generate(ui, "mix", {"kind0": "Text", "text0": "a cat", "weight0": 0.4, "kind1": "Image",
                               "image1": picture(), "weight1": 0.6})  # fmt: skip
    assert not mix.error, mix.status
    assert '"mix"' in Image.open(mix.files[0]).text["kandi"]
    cn = generate(ui, "controlnet", {"hint": picture(64, 64, 5), "image": picture(), "strength": 0.5,
                                     "input_size": True})  # fmt: skip
    assert not cn.error and "Denoising strength: 0.5" in Image.open(cn.files[0]).text["parameters"]


def test_cancel_stops_the_job_and_keeps_finished_images(ui):
    def progress(fraction, desc=None):
        if desc and desc.startswith("image 2/"):
            assert ui.cancel("txt2img", "session") == "Cancelling…"

    out = generate(ui, "txt2img", {"num_images": 3, "steps": 50}, progress)
    assert not out.error and out.status.startswith("Cancelled (1 image(s)") and len(out.files) == 1
    assert ui.cancel("txt2img", "session") == "Nothing is running."
    assert ui.server.queue.stats()["cancelled"] == 1


def test_a_page_that_goes_away_cancels_its_job(ui):
    async def leave():
        task = asyncio.ensure_future(ui.generate("txt2img", {**SMALL, "steps": 300}, "gone"))
        while not ui.running:
            await asyncio.sleep(0.01)
        job = ui.running[("gone", "txt2img")]
        task.cancel()  # what Gradio does when the browser closes the page
        with pytest.raises(asyncio.CancelledError):
            await task
        return job

    job = asyncio.run(leave())
    assert job.wait(30) and job.status == "cancelled" and not ui.running


# ---------------------------------------------------------------------------------- the mounted app


def test_the_app_serves_the_ui_with_a_tab_per_task(engine):
    app = create_app(engine, workers=1, max_waiting=2, limits=Limits(max_side=256))
    with TestClient(app) as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
        page = client.get("/ui/")
        config = client.get("/ui/config").json()
        css = client.get("/ui/theme.css")
    assert page.status_code == 200 and config["title"] == "kandi" and css.status_code == 200
    shown = {c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"}
    assert shown == {"Text to image", "Image to image", "Inpaint", "Mix", "ControlNet"}
    sliders = {c["props"]["elem_id"]: c["props"] for c in config["components"] if c.get("type") == "slider"
               and c["props"].get("elem_id")}  # fmt: skip
    assert sliders["txt2img-width"]["maximum"] == 256 and sliders["txt2img-width"]["value"] == 256
    assert sliders["txt2img-steps"]["value"] == 50 and sliders["txt2img-images"]["maximum"] == 8
    # the theme uses the system's fonts: the page fetches none (from another site or at all)
    assert "system-ui" in css.text and "@font-face" not in css.text and "fonts.googleapis" not in page.text


def test_choosing_a_model_sets_its_defaults_and_says_what_it_cannot_do(engine, tmp_path):
    ui = UI(Server(engine, JobQueue(1, 1), Limits(max_side=768)), tmp_path)
    entry = engine.entries["kandinsky-2.2"]
    per_tab = 2 + len(TUNED)  # the notice, Generate, the sliders

    def tab(updates: list, task: str) -> dict:
        k = list(TABS).index(task) * per_tab
        return dict(zip(["notice", "go", *TUNED], updates[k : k + per_tab]))

    try:
        entry.family = "k3"  # as Kandinsky 3 would be: two tasks, no prior, its own defaults
        assert ui.tasks(None) == ["txt2img", "img2img"] and "prior_steps" not in ui.defaults(None)
        k3 = model_updates(ui, "kandinsky-2.2")
    finally:
        entry.family = "k22"
        ui.server.queue.close()
    assert len(k3) == per_tab * len(TABS)
    assert tab(k3, "txt2img")["notice"]["visible"] is False and tab(k3, "txt2img")["go"]["interactive"]
    inpaint = tab(k3, "inpaint")
    assert inpaint["notice"]["visible"] and not inpaint["go"]["interactive"]
    assert inpaint["notice"]["value"].startswith("⚠️ **kandinsky-2.2** cannot do inpaint")
    assert inpaint["prior_steps"] == {"__type__": "update", "visible": False}
    k22 = tab(model_updates(ui, "kandinsky-2.2"), "mix")
    assert not k22["notice"]["visible"] and k22["go"]["interactive"]
    assert (k22["width"]["value"], k22["steps"]["value"], k22["prior_steps"]) == (
        512,
        50,
        {"__type__": "update", "visible": True, "value": 25},
    )


def test_sampler_menu_and_hires_section(ui):
    out = generate(ui, "txt2img", {"prompt": "a fox", "scheduler": "Euler a", "hires": True, "hires_scale": 2,
                                   "hires_strength": 0.5, "hires_steps": 2, "hires_upscaler": "lanczos"})  # fmt: skip
    assert not out.error, out.status
    with Image.open(out.files[0]) as im:
        assert im.size == (2 * SMALL["width"], 2 * SMALL["height"])
        assert "Sampler: Euler a," in im.text["parameters"] and "Hires upscale: 2," in im.text["parameters"]
    bad = generate(ui, "txt2img", {"prompt": "a fox", "hires": True, "hires_scale": 4, "width": 128})
    assert bad.error and "over this server's limit of 256" in bad.status
