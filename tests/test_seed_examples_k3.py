"""The Kandinsky 3 examples of the seed documents, run with only the import changed.

The examples are the ```python blocks of the Russian deployment guide (seed 004, docs.clore.ai "Kandinsky")
that use Kandinsky 3: basic AutoPipelineForText2Image, multilingual prompts, AutoPipelineForImage2Image
(strength 0.75), the batch loop and the memory options, verbatim. Both libraries run them on the tiny
Kandinsky 3 repo installed in an offline Hugging Face cache as kandinsky-community/kandinsky-3 with its
`fp16` variant files (`k3_offline_hub`), with the same textual changes so that they run on a CPU in seconds:

- every text-to-image call gets `height=64, width=64` (the examples keep the default 1024: the tiny
  pipeline sizes latents with a factor 8 while the tiny MoVQ only doubles, so 64 gives 8 x 8 latents and
  16 x 16 images); img2img keeps its input's size (`sketch.png`, a local 64 x 64 file);
- `num_inference_steps` -> 3 (4 for img2img, so that strength 0.75 leaves 3 denoising steps);
  `torch_dtype=torch.float16` -> float32 (`variant="fp16"` stays: the fp16 files are loaded into float32);
  the text-to-image calls that pass no `num_inference_steps` (multilingual) keep the default 25 steps;
- `torch.manual_seed(0)` right before each generation (the examples pass no generator, so both libraries
  draw from torch's global one, which loading a pipeline may consume);
- the files the examples load (`load_image("sketch.png")`) are generated in the working folder.

Only diffusers' copy drops `.to("cuda")`, `pipe.enable_model_cpu_offload()` and
`pipe.enable_sequential_cpu_offload()` (without CUDA and without accelerate diffusers cannot run them);
kandi's copy keeps them (it warns and stays on the CPU).

Compared: every tensor the example leaves in its namespace (max abs diff <= 1e-4), every PIL image in its
namespace (`image`, `image_en`, `image_ru`, ...) and every file it saves (one uint8 level).

Not covered: the two Gradio blocks (the deployment command and "Интерфейс Gradio": gradio is not installed
and their `generate` builds a `torch.Generator("cuda")`), the Kandinsky 2.2 blocks (covered by the 2.2
seed tests), and the troubleshooting fragment `pipe.enable_model_cpu_offload(); pipe.enable_attention_slicing()`
(no pipeline of its own; the memory example runs the same two calls).
"""

from __future__ import annotations

import os
import re
import textwrap
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from test_seed_examples_k21 import pixels

BASIC = """
import torch
from LIB import AutoPipelineForText2Image

pipe = AutoPipelineForText2Image.from_pretrained(
    "kandinsky-community/kandinsky-3",
    variant="fp16",
    torch_dtype=torch.float16
)
pipe.to("cuda")

image = pipe(
    prompt="Кот-астронавт, плавающий в космосе, цифровое искусство, яркие цвета",
    num_inference_steps=50,
    guidance_scale=4.0
).images[0]

image.save("cat_astronaut.png")
"""

MULTILINGUAL = """
import torch
from LIB import AutoPipelineForText2Image

pipe = AutoPipelineForText2Image.from_pretrained(
    "kandinsky-community/kandinsky-3",
    variant="fp16",
    torch_dtype=torch.float16
).to("cuda")

# Английский
image_en = pipe("A red fox in a snowy forest").images[0]

# Русский
image_ru = pipe("Красная лиса в снежном лесу").images[0]

# Китайский
image_zh = pipe("雪林中的红狐狸").images[0]

# Немецкий
image_de = pipe("Ein roter Fuchs im verschneiten Wald").images[0]

# Все дают похожие изображения!
"""

IMG2IMG = """
import torch
from LIB import AutoPipelineForImage2Image
from LIB.utils import load_image

pipe = AutoPipelineForImage2Image.from_pretrained(
    "kandinsky-community/kandinsky-3",
    variant="fp16",
    torch_dtype=torch.float16
).to("cuda")

init_image = load_image("sketch.png")

image = pipe(
    prompt="Детализованная цифровая живопись замка, фэнтези-арт",
    image=init_image,
    strength=0.75,
    num_inference_steps=50
).images[0]

image.save("castle.png")
"""

BATCH = """
import torch
from LIB import AutoPipelineForText2Image
import os

pipe = AutoPipelineForText2Image.from_pretrained(
    "kandinsky-community/kandinsky-3",
    variant="fp16",
    torch_dtype=torch.float16
).to("cuda")

prompts = [
    "Спокойный японский сад с цветущей вишней",
    "Киберпанк-город ночью с неоновыми огнями",
    "Древняя библиотека, полная волшебных книг",
    "Уютная хижина в горах зимой"
]

os.makedirs("outputs", exist_ok=True)

for i, prompt in enumerate(prompts):
    image = pipe(
        prompt=prompt,
        num_inference_steps=50,
        guidance_scale=4.0
    ).images[0]

    image.save(f"outputs/image_{i}.png")
    print(f"Generated: {prompt[:30]}...")

    torch.cuda.empty_cache()
"""

MEMORY = """
import torch
from LIB import AutoPipelineForText2Image

pipe = AutoPipelineForText2Image.from_pretrained(
    "kandinsky-community/kandinsky-3",
    variant="fp16",
    torch_dtype=torch.float16
)

# Включить оптимизации памяти
pipe.enable_model_cpu_offload()

# Или для очень малого объема VRAM
pipe.enable_sequential_cpu_offload()

# Включить нарезку внимания
pipe.enable_attention_slicing()

image = pipe(
    prompt="Красивый пейзаж",
    num_inference_steps=50
).images[0]
"""

# name: (code, files it saves, num_inference_steps in the test)
EXAMPLES = {
    "Kandinsky 3 basic": (BASIC, ["cat_astronaut.png"], 3),
    "multilingual prompts": (MULTILINGUAL, [], 3),
    "img2img strength 0.75": (IMG2IMG, ["castle.png"], 4),
    "batch generation": (BATCH, [f"outputs/image_{i}.png" for i in range(4)], 3),
    "memory options": (MEMORY, [], 3),
}

# a generation: `name = pipe(` at any indentation (the batch example generates inside its loop)
GENERATION = re.compile(r"^([ \t]*)(\w+ = pipe\()", re.MULTILINE)
# the end of a call: `).images[0]`, after its arguments on the same line or on the lines above
CALL_END = re.compile(r"(\s*)\)\.images\[0\]")
SIZE = 64


def adapt(code: str, lib: str, steps: int) -> str:
    # the global seed right before each generation (loading a pipeline may consume torch's generator)
    code = GENERATION.sub(r"\1torch.manual_seed(0)\n\1\2", code.strip("\n")) + "\n"
    code = code.replace("LIB", lib)
    code = re.sub(r"num_inference_steps=\d+", f"num_inference_steps={steps}", code)
    code = code.replace("torch.float16", "torch.float32")
    if "AutoPipelineForImage2Image" not in code:  # text-to-image: the default size is 1024
        code = CALL_END.sub(rf", height={SIZE}, width={SIZE}\1).images[0]", code)
    if lib == "diffusers":
        code = code.replace('.to("cuda")', "").replace("pipe.enable_model_cpu_offload()\n", "")
        code = code.replace("pipe.enable_sequential_cpu_offload()\n", "")
    return textwrap.dedent(code)


def write_inputs(folder: Path) -> None:
    """the files the examples load, in their working folder: a 64 x 64 `sketch.png`."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x * 255 / SIZE, y * 255 / SIZE, (x + y) * 127 / SIZE], -1)
    rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    PIL.Image.fromarray(rgb).save(folder / "sketch.png")


def run(code: str, folder: Path) -> dict:
    """exec the example in `folder` (made, with the files it loads); its namespace."""
    write_inputs(folder)
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


def assert_same_outputs(ref: dict, ours: dict, ref_dir: Path, our_dir: Path, files: list[str]) -> None:
    """the tensors (1e-4), the PIL images of the namespace and the saved files (one uint8 level)."""
    tensors = [k for k, v in ref.items() if isinstance(v, torch.Tensor)]
    for k in tensors:
        a, b = ref[k], ours[k]
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, (k, a.shape, getattr(b, "shape", b))
        assert (a.float() - b.float()).abs().max() <= 1e-4, (k, (a.float() - b.float()).abs().max())
    images = [k for k, v in ref.items() if isinstance(v, PIL.Image.Image)]
    assert images and images == [k for k, v in ours.items() if isinstance(v, PIL.Image.Image)]
    pairs = [(k, pixels(ref[k]), pixels(ours[k])) for k in images]
    pairs += [(f, pixels(PIL.Image.open(ref_dir / f)), pixels(PIL.Image.open(our_dir / f))) for f in files]
    for k, a, b in pairs:
        assert a.shape == b.shape, (k, a.shape, b.shape)
        assert np.abs(a - b).max() <= 1, (k, np.abs(a - b).max())


@pytest.mark.usefixtures("k3_offline_hub")
@pytest.mark.parametrize("name", EXAMPLES)
def test_seed_example_runs_with_only_the_import_changed(tmp_path, name):
    code, files, steps = EXAMPLES[name]
    ref = run(adapt(code, "diffusers", steps), tmp_path / "diffusers")
    ours = run(adapt(code, "kandi", steps), tmp_path / "kandi")
    assert_same_outputs(ref, ours, tmp_path / "diffusers", tmp_path / "kandi", files)
