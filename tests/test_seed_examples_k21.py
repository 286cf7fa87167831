"""The Kandinsky 2.1 examples of the seed documents, run with only the import changed.

The examples are the code blocks of the diffusers "Kandinsky 2.1" API page (seed 003, Chinese; seed 002
is the same page in Arabic, its code left to `[[autodoc]]`), verbatim apart from the `>>> ` prompts.
Both libraries run them on the tiny 2.1 repos installed in an offline Hugging Face cache under the
official ids (`k21_offline_hub`), with the same textual changes so that they run on a CPU in seconds:

- sizes / 8: 768 -> 96 (sizes and the img2img example's `thumbnail`), the inpainting mask's 250 -> 31 so
  that the masked area keeps its place; where an example leaves the size at the pipeline default (512)
  its call gets `height=64, width=64`;
- `num_inference_steps` -> 3 (10 for the img2img examples, so that strength 0.2 / 0.3 leaves at least one
  denoising step), float16 -> float32;
- `torch.manual_seed(0)` right before each generation (the examples pass no generator, so both libraries
  draw from torch's global one; loading a pipeline may consume it, and the 2.1 examples load the decoder
  after running the prior);
- the images that the examples download are local files with the same names (`load_image(URL)` ->
  `load_image(path)`, `url = path`; `requests.get` is patched to read the file, the code is untouched);
- `from torchvision import transforms` (an unused import of the interpolation example) is dropped:
  torchvision is not installed here.

Only diffusers' copy drops `.to("cuda")` and `pipe.enable_model_cpu_offload()` (without CUDA and without
accelerate diffusers cannot run either; kandi's copy keeps them: it warns and stays on the CPU) and
lower-cases `kandinsky-community/Kandinsky-2-1-prior` (kandi resolves hub ids case-insensitively, as the
Hub does; diffusers' offline cache lookup is case-sensitive and raises OSError).

Compared: every tensor the example leaves in its namespace (the image embeddings: max abs diff <= 1e-4),
the final `image` and every file it saves (one uint8 level).

Two examples fail as printed, whatever the library (`test_seed_example_broken_as_printed`); they are also
run with the smallest fix (see INTERPOLATE_FIXED, AUTO_IMG2IMG_FIXED).

Not on the page, so not covered here: a negative prompt actually passed to a pipeline (the AutoPipeline
img2img / inpainting examples define `negative_prompt` but never pass it), the `ddpm_scheduler`
subfolder swap and `torch.compile`.
"""

from __future__ import annotations

import os
import re
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

PRIOR_CALL = """
from LIB import KandinskyPipeline, KandinskyPriorPipeline
import torch

pipe_prior = KandinskyPriorPipeline.from_pretrained("kandinsky-community/kandinsky-2-1-prior")
pipe_prior.to("cuda")

prompt = "red cat, 4k photo"
out = pipe_prior(prompt)
image_emb = out.image_embeds
negative_image_emb = out.negative_image_embeds

pipe = KandinskyPipeline.from_pretrained("kandinsky-community/kandinsky-2-1")
pipe.to("cuda")

image = pipe(
    prompt,
    image_embeds=image_emb,
    negative_image_embeds=negative_image_emb,
    height=768,
    width=768,
    num_inference_steps=100,
).images

image[0].save("cat.png")
"""

INTERPOLATE = """
from LIB import KandinskyPriorPipeline, KandinskyPipeline
from LIB.utils import load_image
import PIL

import torch
from torchvision import transforms

pipe_prior = KandinskyPriorPipeline.from_pretrained(
    "kandinsky-community/kandinsky-2-1-prior", torch_dtype=torch.float16
)
pipe_prior.to("cuda")

img1 = load_image(
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main"
    "/kandinsky/cat.png"
)

img2 = load_image(
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main"
    "/kandinsky/starry_night.jpeg"
)

images_texts = ["a cat", img1, img2]
weights = [0.3, 0.3, 0.4]
image_emb, zero_image_emb = pipe_prior.interpolate(images_texts, weights)

pipe = KandinskyPipeline.from_pretrained("kandinsky-community/kandinsky-2-1", torch_dtype=torch.float16)
pipe.to("cuda")

image = pipe(
    "",
    image_embeds=image_emb,
    negative_image_embeds=zero_image_emb,
    height=768,
    width=768,
    num_inference_steps=150,
).images[0]

image.save("starry_cat.png")
"""

# KandinskyPipeline.__call__'s example: as PRIOR_CALL, but the prior id is spelled with a capital K
DECODER_CALL = PRIOR_CALL.replace("kandinsky-2-1-prior", "Kandinsky-2-1-prior")

AUTO_T2I = """
from LIB import AutoPipelineForText2Image
import torch

pipe = AutoPipelineForText2Image.from_pretrained(
    "kandinsky-community/kandinsky-2-1", torch_dtype=torch.float16
)
pipe.enable_model_cpu_offload()

prompt = "A lion in galaxies, spirals, nebulae, stars, smoke, iridescent, intricate detail, octane render, 8k"

image = pipe(prompt=prompt, num_inference_steps=25).images[0]
"""

IMG2IMG = """
from LIB import KandinskyImg2ImgPipeline, KandinskyPriorPipeline
from LIB.utils import load_image
import torch

pipe_prior = KandinskyPriorPipeline.from_pretrained(
    "kandinsky-community/kandinsky-2-1-prior", torch_dtype=torch.float16
)
pipe_prior.to("cuda")

prompt = "A red cartoon frog, 4k"
image_emb, zero_image_emb = pipe_prior(prompt, return_dict=False)

pipe = KandinskyImg2ImgPipeline.from_pretrained(
    "kandinsky-community/kandinsky-2-1", torch_dtype=torch.float16
)
pipe.to("cuda")

init_image = load_image(
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main"
    "/kandinsky/frog.png"
)

image = pipe(
    prompt,
    image=init_image,
    image_embeds=image_emb,
    negative_image_embeds=zero_image_emb,
    height=768,
    width=768,
    num_inference_steps=100,
    strength=0.2,
).images

image[0].save("red_frog.png")
"""

AUTO_IMG2IMG = """
from LIB import AutoPipelineForImage2Image
import torch
import requests
from io import BytesIO
from PIL import Image
import os

pipe = AutoPipelineForImage2Image.from_pretrained(
    "kandinsky-community/kandinsky-2-1", torch_dtype=torch.float16
)
pipe.enable_model_cpu_offload()

prompt = "A fantasy landscape, Cinematic lighting"
negative_prompt = "low quality, bad quality"

url = "https://raw.githubusercontent.com/CompVis/stable-diffusion/main/assets/stable-samples/img2img/sketch-mountains-input.jpg"

response = requests.get(url)
image = Image.open(BytesIO(response.content)).convert("RGB")
image.thumbnail((768, 768))

image = pipe(prompt=prompt, image=original_image, num_inference_steps=25).images[0]
"""

INPAINT = """
from LIB import KandinskyInpaintPipeline, KandinskyPriorPipeline
from LIB.utils import load_image
import torch
import numpy as np

pipe_prior = KandinskyPriorPipeline.from_pretrained(
    "kandinsky-community/kandinsky-2-1-prior", torch_dtype=torch.float16
)
pipe_prior.to("cuda")

prompt = "a hat"
image_emb, zero_image_emb = pipe_prior(prompt, return_dict=False)

pipe = KandinskyInpaintPipeline.from_pretrained(
    "kandinsky-community/kandinsky-2-1-inpaint", torch_dtype=torch.float16
)
pipe.to("cuda")

init_image = load_image(
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main"
    "/kandinsky/cat.png"
)

mask = np.zeros((768, 768), dtype=np.float32)
mask[:250, 250:-250] = 1

out = pipe(
    prompt,
    image=init_image,
    mask_image=mask,
    image_embeds=image_emb,
    negative_image_embeds=zero_image_emb,
    height=768,
    width=768,
    num_inference_steps=50,
)

image = out.images[0]
image.save("cat_with_hat.png")
"""

AUTO_INPAINT = """
from LIB import AutoPipelineForInpainting
from LIB.utils import load_image
import torch
import numpy as np

pipe = AutoPipelineForInpainting.from_pretrained(
    "kandinsky-community/kandinsky-2-1-inpaint", torch_dtype=torch.float16
)
pipe.enable_model_cpu_offload()

prompt = "A fantasy landscape, Cinematic lighting"
negative_prompt = "low quality, bad quality"

original_image = load_image(
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main" "/kandinsky/cat.png"
)

mask = np.zeros((768, 768), dtype=np.float32)
# Let's mask out an area above the cat's head
mask[:250, 250:-250] = 1

image = pipe(prompt=prompt, image=original_image, mask_image=mask, num_inference_steps=25).images[0]
"""

# Two examples fail as printed, in any library (see test_seed_example_broken_as_printed); they are also
# run with the smallest fix of the code, named here:
# - interpolate: `a, b = output` unpacks the output's keys (diffusers' BaseOutput is a dict), so
#   `image_emb` is the string "image_embeds"; fix: `.to_tuple()` (as the 2.2 page's examples do);
# - AutoPipelineForImage2Image: `image=original_image` names a variable that the example never defines
#   (it loads the picture into `image`); fix: `image=image`.
INTERPOLATE_FIXED = INTERPOLATE.replace(
    "interpolate(images_texts, weights)", "interpolate(images_texts, weights).to_tuple()"
)
AUTO_IMG2IMG_FIXED = AUTO_IMG2IMG.replace("image=original_image", "image=image")
assert INTERPOLATE_FIXED != INTERPOLATE and AUTO_IMG2IMG_FIXED != AUTO_IMG2IMG

# name: (code, files it saves, num_inference_steps in the test)
EXAMPLES = {
    "KandinskyPriorPipeline __call__": (PRIOR_CALL, ["cat.png"], 3),
    "KandinskyPriorPipeline interpolate, fixed": (INTERPOLATE_FIXED, ["starry_cat.png"], 3),
    "KandinskyPipeline __call__": (DECODER_CALL, ["cat.png"], 3),
    "AutoPipelineForText2Image": (AUTO_T2I, [], 3),
    "KandinskyImg2ImgPipeline": (IMG2IMG, ["red_frog.png"], 10),
    "AutoPipelineForImage2Image, fixed": (AUTO_IMG2IMG_FIXED, [], 10),
    "KandinskyInpaintPipeline": (INPAINT, ["cat_with_hat.png"], 3),
    # the mask stays 96 x 96 (768 on the page) while the image is 64 x 64 (the default 512): both
    # libraries resize the mask to the latents
    "AutoPipelineForInpainting": (AUTO_INPAINT, [], 3),
}
# name: (code, num_inference_steps, the exception diffusers raises, the fixed example)
BROKEN = {
    "KandinskyPriorPipeline interpolate": (
        INTERPOLATE,
        3,
        AttributeError,
        "KandinskyPriorPipeline interpolate, fixed",
    ),
    "AutoPipelineForImage2Image": (AUTO_IMG2IMG, 10, NameError, "AutoPipelineForImage2Image, fixed"),
}

# the first line of each generation: the global seed is set right before each of them, because loading
# a pipeline may consume torch's global generator (diffusers initialises weights randomly when accelerate
# is absent) and the 2.1 examples load the decoder after running the prior
GENERATIONS = ("out = pipe_prior(", "image_emb, zero_image_emb = pipe_prior", "image = pipe(", "out = pipe(")

# the images the examples download; local stand-ins with the same names (sizes not multiples of 64)
IMAGES = {"cat.png": (120, 100), "starry_night.jpeg": (100, 130), "frog.png": (90, 90),
          "sketch-mountains-input.jpg": (160, 112)}  # fmt: skip
URL = re.compile(r'"(https://[^"]*)"(?:\s*"([^"]*)")?')


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seed-images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (w, h) in IMAGES.items():
        # smooth gradients plus noise, so that resizing and JPEG coding have something to work on
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
        rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        paths[name] = folder / name
        PIL.Image.fromarray(rgb).save(paths[name])
    return paths


def adapt(code: str, lib: str, steps: int, images: dict[str, Path]) -> str:
    lines = code.strip("\n").splitlines()
    lines = [
        s
        for line in lines
        for s in ([line] if not line.startswith(GENERATIONS) else ["torch.manual_seed(0)", line])
    ]
    code = "\n".join(lines) + "\n"
    code = code.replace("LIB", lib).replace("768", "96").replace("250", "31")
    code = re.sub(r"num_inference_steps=\d+", f"num_inference_steps={steps}", code)
    code = code.replace("torch.float16", "torch.float32")
    code = code.replace("from torchvision import transforms\n", "")
    code = URL.sub(lambda m: repr(str(images[(m[1] + (m[2] or "")).rsplit("/", 1)[1]])), code)
    if lib == "diffusers":
        code = code.replace('.to("cuda")', "").replace("pipe.enable_model_cpu_offload()\n", "")
        code = code.replace("Kandinsky-2-1-prior", "kandinsky-2-1-prior")
    if "height=" not in code:  # the examples that keep the pipeline's default size (512)
        code = re.sub(r"(image = pipe\(.*)\)", r"\1, height=64, width=64)", code)
    return textwrap.dedent(code)


def run(code: str, folder: Path) -> dict:
    """exec the example in `folder`; its namespace."""
    folder.mkdir()
    namespace = {"__name__": "example"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, "example", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_same_outputs(ref: dict, ours: dict, ref_dir: Path, our_dir: Path, files: list[str]) -> None:
    tensors = [k for k, v in ref.items() if isinstance(v, torch.Tensor)]
    for k in tensors:
        a, b = ref[k], ours[k]
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, (k, a.shape, getattr(b, "shape", b))
        assert (a.float() - b.float()).abs().max() <= 1e-4, (k, (a.float() - b.float()).abs().max())
    ref_images = ref["image"] if isinstance(ref["image"], list) else [ref["image"]]
    our_images = ours["image"] if isinstance(ours["image"], list) else [ours["image"]]
    assert len(ref_images) == len(our_images)
    pairs = [(pixels(a), pixels(b)) for a, b in zip(ref_images, our_images)]
    pairs += [(pixels(PIL.Image.open(ref_dir / f)), pixels(PIL.Image.open(our_dir / f))) for f in files]
    for a, b in pairs:
        assert a.shape == b.shape, (a.shape, b.shape)
        assert np.abs(a - b).max() <= 1, np.abs(a - b).max()


@pytest.fixture
def local_requests(monkeypatch):
    """`requests.get(path)` reads the local file (the URLs were replaced by paths)."""
    import requests

    monkeypatch.setattr(
        requests, "get", lambda url, *a, **k: types.SimpleNamespace(content=Path(url).read_bytes())
    )


@pytest.mark.usefixtures("k21_offline_hub", "local_requests")
@pytest.mark.parametrize("name", EXAMPLES)
def test_seed_example_runs_with_only_the_import_changed(images, tmp_path, name):
    code, files, steps = EXAMPLES[name]
    ref = run(adapt(code, "diffusers", steps, images), tmp_path / "diffusers")
    ours = run(adapt(code, "kandi", steps, images), tmp_path / "kandi")
    assert_same_outputs(ref, ours, tmp_path / "diffusers", tmp_path / "kandi", files)


@pytest.mark.usefixtures("k21_offline_hub", "local_requests")
@pytest.mark.parametrize("name", BROKEN)
def test_seed_example_broken_as_printed(images, tmp_path, name):
    """diffusers fails on the example as printed; kandi runs the interpolate one as printed (with the image
    diffusers gives for the fixed example) and fails on the undefined variable like any library."""
    code, steps, diffusers_error, fixed = BROKEN[name]
    with pytest.raises(diffusers_error):
        run(adapt(code, "diffusers", steps, images), tmp_path / "diffusers")
    if diffusers_error is NameError:  # an undefined variable: no library can run it
        with pytest.raises(NameError, match="original_image"):
            run(adapt(code, "kandi", steps, images), tmp_path / "kandi")
        return
    # interpolate: diffusers' output unpacks to its keys (strings); kandi's prior output unpacks to the
    # embeddings, so the example runs as printed and gives diffusers' image for the fixed example
    ours = run(adapt(code, "kandi", steps, images), tmp_path / "kandi")
    fixed_code, files, fixed_steps = EXAMPLES[fixed]
    ref = run(adapt(fixed_code, "diffusers", fixed_steps, images), tmp_path / "diffusers-fixed")
    assert_same_outputs(ref, ours, tmp_path / "diffusers-fixed", tmp_path / "kandi", files)
