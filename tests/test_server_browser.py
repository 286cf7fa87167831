"""The web UI in a real browser: `kandi serve` runs in a subprocess on the tiny 2.2 models (an offline
cache), and Debian's Chromium, driven by Playwright, generates images through /ui as a person would.

Without Chromium (or Playwright) these tests are skipped, unless KANDI_REQUIRE_BROWSER=1 (CI) makes
that a failure. Screenshots go to a temporary folder, or to $KANDI_UI_SCREENSHOTS (e.g. `docs`, to
refresh the README's docs/ui.png and docs/ui-phone.png).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiny
from PIL import Image

CHROMIUM = os.environ.get("KANDI_CHROMIUM", "/usr/bin/chromium")
# on a closed network Chromium's own background connections (updates, sync...) must be off, or its
# connections are refused; a fresh profile each launch (Playwright's default) keeps runs independent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def need_browser() -> None:
    """Skip (or, with KANDI_REQUIRE_BROWSER=1, fail) when there is no browser to drive."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[test]')"
    if reason:
        if os.environ.get("KANDI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KANDI_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("KANDI_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(need_browser, k22_cache, tmp_path_factory) -> str:
    """`kandi serve` on a free port; its URL once /health answers (the browser checked first: no models
    are built for nothing)."""
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, **tiny.offline_env(k22_cache), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp / "gradio")}  # fmt: skip
    port = _free_port()
    log = (tmp / "serve.log").open("w")
    cmd = [sys.executable, "-m", "kandi", "serve", "-m", "kandinsky-2.2", "--offline", "--port", str(port),
           "--max-size", "512"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, tmp / "serve.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"kandi serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"kandi serve did not answer /health in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open(browser, server: str, viewport: dict, **kw):
    page = browser.new_page(viewport=viewport, **kw)
    page.set_default_timeout(TIMEOUT_MS)
    # the page must load everything from the server itself (no web fonts, CDNs, analytics): offline
    elsewhere = []
    page.on("request", lambda r: None if r.url.startswith(server) else elsewhere.append(r.url))
    page.goto(server + "/")  # the app sends / to /ui/
    page.wait_for_selector("#txt2img-prompt textarea")
    assert not elsewhere, elsewhere
    return page


def _set(page, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box (as a person would), which sets the slider."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _small(page, task: str) -> None:
    """A fast request for the tiny models: 64x64, two prior and two decoder steps."""
    from playwright.sync_api import expect

    page.locator(f"#{task}-more").click()  # first: its sliders mount when it opens
    page.locator(f"#{task}-prior-steps input[type=number]").wait_for()
    values = {"prior-steps": 2, "steps": 2, "width": 64, "height": 64}
    shown = {name: v for name, v in values.items() if page.locator(f"#{task}-{name}").is_visible()}
    for name, value in shown.items():
        _set(page, f"{task}-{name}", value)
    for name, value in shown.items():
        expect(page.locator(f"#{task}-{name} input[type=range]")).to_have_value(str(value))


def _generate(page, task: str) -> Image.Image:
    """Click Generate, wait for the gallery's image, and return that served PNG."""
    page.locator(f"#{task}-generate").click()
    # an image in the gallery, or a message in the status line (then say which)
    page.wait_for_function(
        f"document.querySelector('#{task}-gallery img') || "
        f"document.querySelector('#{task}-status').innerText.includes('⚠️')"
    )
    status = page.locator(f"#{task}-status").inner_text()
    assert "⚠️" not in status, status
    png = page.request.get(page.locator(f"#{task}-gallery img").first.get_attribute("src"))
    assert png.ok and png.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(png.body()))


def _settled_box(page, selector: str, frames: int = 600) -> dict:
    """The element's box once it has stopped moving: equal over two rendered frames. On a loaded machine
    the editor lays out its canvas a few frames after the upload, so a box read at once may be stale."""
    box = None
    for _ in range(frames):
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        now = page.locator(selector).first.bounding_box()
        if now is not None and now == box:
            return now
        box = now
    pytest.fail(f"{selector} kept moving for {frames} frames")


def _screenshot(page, path: Path, **kw) -> None:
    """A screenshot in 128 colours: a quarter of the bytes (the README's copies live in the repository)."""
    shot = Image.open(io.BytesIO(page.screenshot(**kw))).convert("RGB")
    shot.quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _no_sideways_scroll(page) -> None:
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page is {width} px wide on a {inner} px screen"


def test_generate_shows_the_image_its_seed_and_a_download_with_metadata(browser, server, shots):
    page = _open(browser, server, DESKTOP)
    page.locator("#txt2img-prompt textarea").fill("a red fox in the snow")
    _small(page, "txt2img")
    shown = _generate(page, "txt2img")
    seed = page.locator("#txt2img-seed-used textarea, #txt2img-seed-used input").first.input_value()
    assert seed.isdigit(), f"no seed shown: {seed!r}"
    assert page.locator("#txt2img-status").inner_text().startswith("1 image(s) · 64×64")
    # the gallery shows the engine's PNG itself: the A1111 parameters and kandi's JSON are there
    assert shown.size == (64, 64)
    assert shown.text["parameters"].startswith("a red fox in the snow")
    assert f"Seed: {seed}" in shown.text["parameters"] and "kandi" in shown.text
    assert "Steps: 2," in shown.text["parameters"] and "Prior steps: 2," in shown.text["parameters"]
    # the download is the same file
    assert f"kandi-{seed}\n.png" in page.locator("#txt2img-files").inner_text()  # name and extension
    href = page.locator("#txt2img-files a[download]").first.get_attribute("href")
    assert href.endswith(f"/kandi-{seed}.png"), href
    download = page.request.get(href)
    assert Image.open(io.BytesIO(download.body())).text == shown.text
    # one click puts the seed back in the Seed box (it was -1: random)
    seed_box = page.locator("#txt2img-seed input")
    assert seed_box.input_value() == "-1"
    page.locator("#txt2img-reuse").click()
    page.wait_for_function(f"document.querySelector('#txt2img-seed input').value === '{seed}'")
    _screenshot(page, shots / "ui.png", full_page=True)
    page.close()


def test_inpaint_paints_a_mask_in_the_editor(browser, server, tmp_path):
    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "in.png")
    page = _open(browser, server, DESKTOP)
    page.get_by_role("tab", name="Inpaint").click()
    # the tab's components mount when it opens: upload once the editor is there, paint once it shows
    # the picture (painting earlier would paint on the empty 800x800 canvas)
    page.locator("#inpaint-editor button[aria-label=Upload]").wait_for()
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(tmp_path / "in.png"))
    page.locator("#inpaint-editor").get_by_text("Upload an image").wait_for(state="hidden")
    page.locator("#inpaint-editor button[aria-label=Brush]").click()
    canvas = _settled_box(page, "#inpaint-editor canvas")
    # a short stroke at the left of the picture (the picture is centred on the canvas)
    x, y = canvas["x"] + canvas["width"] / 2 - canvas["height"] * 0.4, canvas["y"] + canvas["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(6):
        page.mouse.move(x + 4 * k, y + 2 * k)
    page.mouse.up()
    page.locator("#inpaint-prompt textarea").fill("a cat")
    page.get_by_label("Keep the unpainted pixels exactly").check()
    _small(page, "inpaint")
    result = np.asarray(_generate(page, "inpaint").convert("RGB"))
    assert result.shape == (64, 64, 3), result.shape
    kept = np.all(result == np.asarray(image), axis=2)
    assert 0 < (~kept).sum() and kept[:, -16:].all(), "only the painted part (at the left) changes"
    page.close()


def test_phone_screen_stacks_without_sideways_scrolling(browser, server, shots):
    page = _open(browser, server, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    _no_sideways_scroll(page)
    page.locator("#txt2img-prompt textarea").fill("a lighthouse at dusk")
    _small(page, "txt2img")
    _generate(page, "txt2img")
    _no_sideways_scroll(page)
    # stacked in order: the images come right after the Generate button, above the settings
    y = {
        name: page.locator(f"#txt2img-{name}").bounding_box()["y"]
        for name in ("generate", "gallery", "steps")
    }
    assert y["generate"] < y["gallery"] < y["steps"], y
    page.evaluate("window.scrollTo(0, 0)")
    _screenshot(page, shots / "ui-phone.png")
    for title in ("Image to image", "Inpaint", "Mix", "ControlNet"):
        _switch_tab(page, title)
        _no_sideways_scroll(page)
    # a mistake is a message, not a traceback
    _switch_tab(page, "Image to image")
    page.locator("#img2img-generate").click()
    page.locator("#img2img-status").filter(has_text="Image: upload the image to redraw").wait_for()
    assert "Traceback" not in page.content()
    page.close()


def _switch_tab(page, title: str) -> None:
    """Open a tab; on a narrow screen the ones that do not fit are under the "More tabs" menu."""
    tab = page.get_by_role("tab", name=title)
    if not tab.is_visible():
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=title).click()
    else:
        tab.click()
    page.get_by_role("tab", name=title, selected=True).wait_for()


def test_api_docs_render_offline(browser, server):
    """/docs is Swagger UI with its scripts from the server itself: it renders with no other host."""
    page = browser.new_page(viewport=DESKTOP)
    page.set_default_timeout(TIMEOUT_MS)
    elsewhere = []
    local = (server, "blob:", "data:")
    page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
    page.goto(server + "/docs")
    page.locator(".swagger-ui .info .title").filter(has_text="kandi").wait_for()
    page.locator(".opblock-summary-path", has_text="/v1/txt2img").first.wait_for()
    assert not elsewhere, elsewhere
    page.close()
