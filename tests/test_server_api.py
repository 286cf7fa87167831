"""`kandi serve`'s HTTP API in-process (FastAPI's TestClient) on the tiny 2.2 models in an offline cache:
every endpoint, every error class, the PNG metadata, and images equal to `kandi generate`'s.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
import tiny
from fastapi.testclient import TestClient
from PIL import Image
from test_cli import pixels, run

from kandi import pngmeta
from kandi.engine import Engine
from kandi.server.api import create_app
from kandi.server.inputs import Limits

SMALL = {"width": 32, "height": 32, "steps": 3, "prior_steps": 2}


@pytest.fixture(scope="module")
def hub(k22_cache):
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k22_cache)
        yield k22_cache


@pytest.fixture(scope="module")
def engine(hub) -> Engine:
    return Engine(["kandinsky-2.2"], offline=True).load()


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(engine, workers=1, max_waiting=8, limits=Limits(max_side=512, max_steps=300, max_images=4,
                                                                      max_upload_bytes=200_000), ui=False)  # fmt: skip
    with TestClient(app) as c:
        yield c


def b64(im: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def png_of(data: str | bytes) -> Image.Image:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    im = Image.open(io.BytesIO(raw))
    im.load()
    return im


def picture(w: int = 32, h: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def err(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ------------------------------------------------------------------------------------------ basics


def test_health_models_and_openapi(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["queue"]["workers"] == 1 and h["queue"]["max_waiting"] == 8
    m = client.get("/models").json()["models"]
    assert m[0]["name"] == "kandinsky-2.2" and m[0]["family"] == "k22" and m[0]["default"]
    assert m[0]["tasks"] == ["txt2img", "img2img", "inpaint", "mix", "controlnet"]
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/txt2img", "/v1/img2img", "/v1/inpaint", "/v1/mix", "/v1/controlnet", "/v1/jobs/txt2img",
              "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/sdapi/v1/png-info"):  # fmt: skip
        assert p in paths
    assert client.get("/docs").status_code == 200


def test_txt2img_equals_kandi_generate_and_carries_metadata(client, hub, tmp_path, capsys):
    r = client.post("/v1/txt2img", json={"prompt": "a red cat", "negative_prompt": "blurry", "seed": 7,
                                         "num_images": 2, **SMALL})  # fmt: skip
    assert r.status_code == 200
    body = r.json()
    assert body["seeds"] == [7, 8] and body["status"] == "done" and body["model"] == "kandinsky-2.2"
    code, out, _ = run(capsys, "generate", "a red cat", "-n", "blurry", "-s", "7", "--num-images", "2",
                       "-W", "32", "-H", "32", "--steps", "3", "--prior-steps", "2", "-o", str(tmp_path), "--offline")  # fmt: skip
    assert code == 0, out
    for img, seed in zip(body["images"], (7, 8)):
        served = png_of(img["png_base64"])
        assert np.array_equal(np.asarray(served.convert("RGB")), pixels(tmp_path / f"kandi-{seed}.png"))
        written = pngmeta.read_png_text(tmp_path / f"kandi-{seed}.png")
        assert served.text["parameters"] == img["parameters"] == written["parameters"]
        assert json.loads(served.text["kandi"])["options"] == json.loads(written["kandi"])["options"]
        assert json.loads(served.text["kandi"])["command"] == "generate"


def test_png_response_and_random_seed_is_returned(client):
    r = client.post("/v1/txt2img?format=png", json={"prompt": "a cat", **SMALL})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    seed = int(r.headers["x-kandi-seed"])
    assert pngmeta.parse_parameters(png_of(r.content).text["parameters"])["Seed"] == seed
    again = client.post(
        "/v1/txt2img", json={"prompt": "a cat", "seed": seed, **SMALL}, headers={"Accept": "image/png"}
    )
    assert again.headers["content-type"] == "image/png" and again.content == r.content
    e = err(client.post("/v1/txt2img?format=png", json={"prompt": "a cat", "num_images": 2, **SMALL}))
    assert e["field"] == "num_images"


# ------------------------------------------------------------------------------------------- tasks


def test_img2img_equals_cli(client, hub, tmp_path, capsys):
    pic = picture(40, 24)
    pic.save(tmp_path / "in.png")
    r = client.post("/v1/img2img", json={"prompt": "winter", "image": b64(pic), "strength": 0.5, "seed": 3,
                                         "steps": 4, "prior_steps": 2})  # fmt: skip
    assert r.status_code == 200, r.text
    img = r.json()["images"][0]
    assert (img["width"], img["height"]) == (64, 64)  # as the CLI: the input's size rounded to 64
    code, out, _ = run(capsys, "img2img", str(tmp_path / "in.png"), "winter", "--strength", "0.5", "-s", "3",
                       "--steps", "4", "--prior-steps", "2", "-o", str(tmp_path / "o.png"), "--offline")  # fmt: skip
    assert code == 0, out
    assert np.array_equal(np.asarray(png_of(img["png_base64"]).convert("RGB")), pixels(tmp_path / "o.png"))
    assert "Denoising strength: 0.5" in img["parameters"]


def test_inpaint_mask_and_outpaint(client, hub, tmp_path, capsys):
    pic, mask = picture(), Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    pic.save(tmp_path / "p.png")
    mask.save(tmp_path / "m.png")
    r = client.post("/v1/inpaint", json={"prompt": "a hat", "image": b64(pic), "mask": b64(mask), "seed": 1,
                                         "paste_back": True, **SMALL})  # fmt: skip
    assert r.status_code == 200, r.text
    code, out, _ = run(capsys, "inpaint", str(tmp_path / "p.png"), "a hat", "--mask", str(tmp_path / "m.png"),
                       "--paste-back", "-s", "1", "-W", "32", "-H", "32", "--steps", "3", "--prior-steps", "2", "-o", str(tmp_path / "i.png"),
                       "--offline")  # fmt: skip
    assert code == 0, out
    served = np.asarray(png_of(r.json()["images"][0]["png_base64"]).convert("RGB"))
    assert np.array_equal(served, pixels(tmp_path / "i.png"))
    assert np.array_equal(served[:8], np.asarray(pic)[:8])  # outside the mask: the original pixels
    # a brush layer (opaque strokes on transparency) is a mask too
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (8, 8, 24, 24))
    r2 = client.post("/v1/inpaint", json={"prompt": "a hat", "image": b64(pic), "mask": b64(layer), "seed": 1,
                                          "paste_back": True, **SMALL})  # fmt: skip
    assert r2.json()["images"][0]["png_base64"] == r.json()["images"][0]["png_base64"]
    out = client.post("/v1/inpaint", json={"prompt": "more", "image": b64(pic), "seed": 2, "steps": 3,
                                           "prior_steps": 2, "outpaint": {"left": 8, "right": 13, "bottom": 5}})  # fmt: skip
    assert out.status_code == 200, out.text
    o = out.json()["images"][0]
    assert (o["width"], o["height"]) == (8 + 32 + 13, 32 + 5)
    assert np.array_equal(np.asarray(png_of(o["png_base64"]).convert("RGB"))[:32, 8:40], np.asarray(pic))


def test_mix_and_controlnet(client):
    r = client.post("/v1/mix", json={"items": [{"text": "a cat", "weight": 0.6}, {"image": b64(picture()), "weight": 0.4}],
                                     "seed": 5, **SMALL})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["parameters"].startswith("a cat\n")
    depth = Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8))
    c = client.post(
        "/v1/controlnet",
        json={"prompt": "a room", "hint": b64(depth), "seed": 2, "steps": 3, "prior_steps": 2},
    )
    assert c.status_code == 200, c.text
    assert (c.json()["images"][0]["width"], c.json()["images"][0]["height"]) == (64, 64)
    e = err(client.post("/v1/controlnet", json={"prompt": "x", "hint": b64(depth), "strength": 0.5}))
    assert e["field"] == "strength"


# ------------------------------------------------------------------------------------ jobs and SSE


def test_job_poll_events_image_and_stream(client):
    r = client.post("/v1/jobs/txt2img", json={"prompt": "a cat", "seed": 4, **SMALL})
    assert r.status_code == 202
    job = r.json()
    assert job["status_url"] == f"/v1/jobs/{job['job_id']}"
    for _ in range(200):
        state = client.get(job["status_url"]).json()
        if state["status"] == "done":
            break
        time.sleep(0.05)
    assert state["seeds"] == [4] and state["progress"] == 1.0
    png = client.get(f"/v1/jobs/{job['job_id']}/images/0")
    assert png.headers["content-type"] == "image/png"
    assert base64.b64encode(png.content).decode() == state["images"][0]["png_base64"]
    assert err(client.get(f"/v1/jobs/{job['job_id']}/images/5"))["field"] == "index"
    events = _sse(client.get(job["events_url"]).text)
    assert events[-1][0] == "done" and events[-1][1]["seeds"] == [4]
    streamed = _sse(client.post("/v1/txt2img?stream=true", json={"prompt": "a cat", "seed": 4, **SMALL}).text)
    kinds = [k for k, _ in streamed]
    assert kinds[-1] == "done" and kinds.count("progress") >= 3 + 2
    steps = [d["step"]["step"] for k, d in streamed if k == "progress" and "step" in d]
    assert steps == sorted(steps) and steps[-1] == 5  # prior 2 + decoder 3 steps
    assert streamed[-1][1]["images"][0]["png_base64"] == state["images"][0]["png_base64"]
    assert err(client.get("/v1/jobs/nope"))["field"] == "job_id"


def _sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_queue_full_answers_429_and_cancel_frees_the_place(engine):
    app = create_app(engine, workers=1, max_waiting=1, ui=False)
    with TestClient(app) as c:
        long = {"prompt": "slow", "width": 32, "height": 32, "steps": 200, "prior_steps": 25}
        first = c.post("/v1/jobs/txt2img", json=long).json()
        for _ in range(100):  # wait until it runs, so the next one waits
            if c.get(first["status_url"]).json()["status"] == "running":
                break
            time.sleep(0.02)
        second = c.post("/v1/jobs/txt2img", json=long)
        assert second.status_code == 202
        third = c.post("/v1/txt2img", json=long)
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
        assert "busy" in err(third)["message"]
        cancelled = c.delete(second.json()["status_url"]).json()
        assert cancelled["status"] == "cancelled"
        assert c.post("/v1/jobs/txt2img", json=long).status_code == 202  # its place is free again
        c.delete(first["status_url"])
        for _ in range(200):
            q = c.get("/health").json()["queue"]
            if q["running"] == 0:
                break
            time.sleep(0.05)
        assert c.get(first["status_url"]).json()["status"] == "cancelled"
        assert q["rejected"] == 1 and q["cancelled"] >= 2


# ------------------------------------------------------------------------------------------ errors


def bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h pixels with (almost) no data: decoding would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize(
    "path, body, status, field",
    [
        ("/v1/txt2img", {"prompt": "x", "widht": 64}, 422, "widht"),
        ("/v1/txt2img", {"prompt": "x", "steps": "many"}, 422, "steps"),
        ("/v1/txt2img", {"prompt": "x", "steps": 0}, 422, "steps"),
        ("/v1/txt2img", {"steps": 2}, 422, "prompt"),
        ("/v1/txt2img", {"prompt": "x", "width": 4096}, 400, "width"),
        ("/v1/txt2img", {"prompt": "x", "steps": 301}, 400, "steps"),
        ("/v1/txt2img", {"prompt": "x", "num_images": 5}, 400, "num_images"),
        ("/v1/txt2img", {"prompt": "x", "guidance_scale": "nan"}, 422, "guidance_scale"),
        ("/v1/txt2img", {"prompt": "x", "seed": 2**64}, 422, "seed"),
        ("/v1/txt2img", {"prompt": "x", "scheduler": "Restart"}, 400, "scheduler"),
        ("/v1/txt2img", {"prompt": "x", "model": "sdxl"}, 404, "model"),
        ("/v1/img2img", {"prompt": "x", "image": "%%%"}, 400, "image"),
        ("/v1/img2img", {"prompt": "x", "image": base64.b64encode(b"hello").decode()}, 400, "image"),
        (
            "/v1/img2img",
            {"prompt": "x", "image": base64.b64encode(bomb_png(60000, 60000)).decode()},
            413,
            "image",
        ),
        ("/v1/img2img", {"prompt": "x", "image": base64.b64encode(bytes(300_000)).decode()}, 413, "image"),
        ("/v1/inpaint", {"prompt": "x", "image": "IMG"}, 400, "mask"),
        ("/v1/inpaint", {"prompt": "x", "image": "IMG", "mask": "IMG", "outpaint": {"left": 8}}, 400, "mask"),
        (
            "/v1/inpaint",
            {"prompt": "x", "image": "IMG", "outpaint": {"left": 500}},
            400,
            "outpaint.left+right",
        ),
        ("/v1/inpaint", {"prompt": "x", "image": "IMG", "outpaint": {"left": -1}}, 422, "outpaint.left"),
        ("/v1/mix", {"items": []}, 422, "items"),
        ("/v1/mix", {"items": [{"weight": 1}]}, 400, "items[0]"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "width": 9999}, 400, "width"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 3, "n_iter": 2}, 400, "batch_size"),
        (
            "/sdapi/v1/txt2img",
            {"prompt": "x", "override_settings": {"sd_model_checkpoint": "sdxl"}},
            404,
            "override_settings.sd_model_checkpoint",
        ),
        ("/sdapi/v1/img2img", {"prompt": "x"}, 400, "init_images"),
        ("/sdapi/v1/png-info", {"image": "not base64!"}, 400, "image"),
    ],
)
def test_bad_requests_get_clear_json_errors(client, path, body, status, field):
    body = {k: (b64(picture()) if v == "IMG" else v) for k, v in body.items()}
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    e = err(r)
    assert e["field"] == field and field.split(".")[0].split("[")[0] in e["message"]
    assert "Traceback" not in r.text


def test_junk_never_gives_a_500(client):
    # bodies no generating endpoint takes (A1111's accept unknown fields, so those are not junk there)
    junk = [b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe", b'{"prompt": 5}', b'{"prompt": null}',
            b'{"prompt": "x", "width": 1e309}', b'{"prompt": "x", "steps": "many"}', b'{"prompt": "x", "seed": "a"}',
            b'{"prompt": "x", "batch_size": 0, "num_images": 0}', b'{"prompt": "x", "cfg_scale": [], "guidance_scale": []}']  # fmt: skip
    paths = ["/v1/txt2img", "/v1/img2img", "/v1/inpaint", "/v1/mix", "/v1/controlnet", "/v1/jobs/txt2img",
             "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info"]  # fmt: skip
    for path in paths:
        for data in junk:
            r = client.post(path, content=data, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (path, data, r.status_code, r.text)
            assert "message" in r.json()["error"]
    for data in junk[:6]:
        assert 400 <= client.post("/sdapi/v1/options", content=data).status_code < 500
    assert client.get("/v1/nothing").status_code == 404
    assert client.put("/v1/txt2img").status_code == 405
    assert client.get("/health").json()["queue"]["waiting"] == 0  # no junk became a job


def test_body_over_the_limit_is_refused_before_reading(engine):
    app = create_app(engine, limits=Limits(max_upload_bytes=1000), ui=False)
    with TestClient(app) as c:
        r = c.post("/v1/txt2img", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "limit" in err(r)["message"]


def test_api_key_protects_every_endpoint(engine):
    app = create_app(engine, api_key="s3cret", ui=False)
    with TestClient(app) as c:
        for path in ("/health", "/models", "/docs", "/openapi.json", "/sdapi/v1/sd-models"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health", headers={"X-API-Key": "s3cret"}).status_code == 200
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert c.get("/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        from starlette.websockets import WebSocketDisconnect

        with pytest.raises(WebSocketDisconnect) as refused, c.websocket_connect("/ui/queue/join"):
            pass
        assert refused.value.code == 1008


# -------------------------------------------------------------------------------------- AUTOMATIC1111


A1111_TXT2IMG = {  # what A1111 clients send: the whole schema, most of it meaningless to kandi
    "prompt": "a red cat", "negative_prompt": "", "styles": [], "seed": 11, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": "Euler a", "scheduler": "Karras",
    "batch_size": 1, "n_iter": 2, "steps": 3, "cfg_scale": 4.0, "width": 32, "height": 32, "restore_faces": False,
    "tiling": False, "do_not_save_samples": True, "do_not_save_grid": True, "eta": 0, "denoising_strength": 0.7,
    "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
    "override_settings": {"CLIP_stop_at_last_layers": 2}, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": 0.8, "disable_extra_networks": False, "comments": {},
    "enable_hr": True, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_prompt": "", "hr_negative_prompt": "",
    "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {"ADetailer": {"args": []}},
}  # fmt: skip


def test_a1111_txt2img_accepts_the_whole_schema(client):
    r = client.post("/sdapi/v1/txt2img", json=A1111_TXT2IMG)
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 12] and info["seed"] == 11 and len(body["images"]) == 2
    # "Euler a" with the Karras schedule type: kandi's Euler a has no Karras form, and `info` says so
    assert info["sampler_name"] == "Euler a"
    assert info["comments"] == {
        "kandi": ["sampler 'Euler a' has no Karras schedule in kandi: Automatic was used"]
    }
    assert body["parameters"]["enable_hr"] is True  # echoed back, as A1111 does
    # the hires fix is honoured: A1111's hr_* fields are the native API's `hires`
    hires = {"scale": 2, "upscaler": "Latent", "strength": 0.7, "steps": 0}
    native = client.post("/v1/txt2img", json={"prompt": "a red cat", "seed": 12, "steps": 3, "guidance_scale": 4.0,
                                              "width": 32, "height": 32, "hires": hires, "scheduler": "Euler a"})  # fmt: skip
    assert png_of(body["images"][1]).size == (64, 64) and "Hires upscale: 2," in info["infotexts"][1]
    assert body["images"][1] == native.json()["images"][0]["png_base64"]
    assert png_of(body["images"][0]).text["parameters"] == info["infotexts"][0]
    ddim = client.post("/sdapi/v1/txt2img", json={**A1111_TXT2IMG, "sampler_name": "DDIM", "n_iter": 1})
    assert json.loads(ddim.json()["info"])["sampler_name"] == "DDIM"


def test_a1111_img2img_and_inpainting(client):
    pic = picture()
    r = client.post("/sdapi/v1/img2img", json={"prompt": "winter", "init_images": [b64(pic)], "steps": 4, "seed": 1,
                                               "denoising_strength": 0.5, "width": 32, "height": 32,
                                               "resize_mode": 0, "include_init_images": False})  # fmt: skip
    assert r.status_code == 200, r.text
    assert "Denoising strength: 0.5" in json.loads(r.json()["info"])["infotexts"][0]
    mask = Image.new("L", (32, 32), 255)
    mask.paste(0, (0, 0, 32, 16))  # repaint the bottom half
    body = {"prompt": "a hat", "init_images": [b64(pic)], "mask": b64(mask), "steps": 3, "seed": 2,
            "denoising_strength": 1.0, "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False,
            "width": 32, "height": 32}  # fmt: skip
    inp = client.post("/sdapi/v1/img2img", json=body)
    assert inp.status_code == 200, inp.text
    out = np.asarray(png_of(inp.json()["images"][0]).convert("RGB"))
    assert np.array_equal(out[:16], np.asarray(pic)[:16])  # kept: A1111 pastes the unmasked pixels back
    inverted = client.post("/sdapi/v1/img2img", json={**body, "inpainting_mask_invert": 1})
    out = np.asarray(png_of(inverted.json()["images"][0]).convert("RGB"))
    assert np.array_equal(out[16:], np.asarray(pic)[16:])


def test_a1111_png_info_models_options_samplers(client):
    r = client.post("/v1/txt2img?format=png", json={"prompt": "a cat, sitting", "seed": 9, **SMALL})
    info = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(r.content).decode()}).json()
    assert info["info"].startswith("a cat, sitting\n")
    assert info["parameters"]["Seed"] == 9 and info["parameters"]["Prompt"] == "a cat, sitting"
    assert info["items"]["kandi"]["options"]["seed"] == 9
    jpeg = client.post("/sdapi/v1/png-info", json={"image": b64(picture(), "JPEG")}).json()
    assert jpeg == {"info": "", "items": {}, "parameters": {}}
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["title"] == "kandinsky-2.2"
    assert (
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "kandinsky-2.2", "CLIP": 2}).status_code
        == 200
    )
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "kandinsky-2.2"
    assert (
        err(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd15"}))["field"]
        == "sd_model_checkpoint"
    )
    assert [s["name"] for s in client.get("/sdapi/v1/samplers").json()][:3] == ["DDPM", "DDIM", "DPM++ 2M"]
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()] == ["Lanczos", "Nearest"]


def test_a1111_progress_and_interrupt(engine):
    import threading

    app = create_app(engine, workers=1, ui=False)
    with TestClient(app) as c:
        idle = c.get("/sdapi/v1/progress").json()
        assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
        answer = {}
        slow = {**A1111_TXT2IMG, "steps": 200, "n_iter": 2, "enable_hr": False}
        t = threading.Thread(target=lambda: answer.update(r=c.post("/sdapi/v1/txt2img", json=slow)))
        t.start()
        for _ in range(300):
            p = c.get("/sdapi/v1/progress").json()
            if p["state"]["sampling_step"] > 3:
                break
            time.sleep(0.02)
        assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 200 + 25 and p["state"]["job"], p
        assert c.post("/sdapi/v1/interrupt").json() == {"interrupted": 1}
        t.join(30)
        r = answer["r"]
        assert r.status_code == 200 and json.loads(r.json()["info"])["interrupted"] is True


# ------------------------------------------------------------------------------------------ the CLI


def test_serve_warns_when_bound_beyond_loopback(capsys):
    from kandi.cli.serve import _warn_if_exposed

    _warn_if_exposed("127.0.0.1", None)
    _warn_if_exposed("::1", None)
    _warn_if_exposed("localhost", None)
    assert capsys.readouterr().err == ""
    _warn_if_exposed("0.0.0.0", None)
    assert "anyone can use it" in capsys.readouterr().err
    _warn_if_exposed("0.0.0.0", "key")
    err_text = capsys.readouterr().err
    assert "other machines" in err_text and "anyone" not in err_text


def test_kandi3_server_does_text_and_img2img_only(k3_cache):
    with pytest.MonkeyPatch.context() as mp:
        tiny.diffusers_to_kandi_env(mp, k3_cache)
        app = create_app(Engine(["kandinsky-3"], offline=True).load(), ui=False)
        with TestClient(app) as c:
            m = c.get("/models").json()["models"][0]
            assert (
                m["family"] == "k3"
                and m["tasks"] == ["txt2img", "img2img"]
                and "prior_steps" not in m["defaults"]
            )
            r = c.post(
                "/v1/txt2img", json={"prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64}
            )
            assert r.status_code == 200, r.text
            assert "Prior steps" not in r.json()["images"][0]["parameters"]
            e = err(
                c.post("/v1/inpaint", json={"prompt": "x", "image": b64(picture()), "mask": b64(picture())})
            )
            assert e["field"] == "model" and "cannot do inpaint" in e["message"]
