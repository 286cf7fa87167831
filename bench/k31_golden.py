"""Run ai-forever's own Kandinsky 3.1 code once on tiny random checkpoints; write the golden files.

    git -C <fetched ai-forever/Kandinsky-3> archive a4c9e92e4d9b2a57081b7e33a2e82373c99ddbfc kandinsky3 | tar -x -C /tmp/k31src
    pip install --target /tmp/k31orig --no-deps sentencepiece omegaconf antlr4-python3-runtime scipy \
        scikit-image lazy_loader imageio tifffile networkx
    PYTHONPATH=/tmp/k31src:/tmp/k31orig:src:tests python bench/k31_golden.py

Writes tests/data/k31_manifests.json.gz (key -> shape of the original modules, full size and tiny) and
tests/data/k31_golden.safetensors (inputs and outputs of the original UNet, MoVQ and its three samplers).
The tests compare kandi against these files and never import the original code. torchvision (whose
binary must match torch) is replaced by the two transforms the pipelines use, as torchvision defines them.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import k31_tiny as tiny  # noqa: E402

COMMIT = "a4c9e92e4d9b2a57081b7e33a2e82373c99ddbfc"  # ai-forever/Kandinsky-3, 2025-01-19


class _ToTensor:
    def __call__(self, pic):
        a = np.array(pic, copy=True)
        a = a[:, :, None] if a.ndim == 2 else a
        t = torch.from_numpy(a.transpose((2, 0, 1))).contiguous()
        return t.float().div(255) if t.dtype == torch.uint8 else t


class _ToPILImage:
    def __call__(self, pic):
        from PIL import Image

        pic = pic.mul(255).byte() if pic.is_floating_point() else pic
        return Image.fromarray(pic.permute(1, 2, 0).numpy())


def _torchvision_stand_in() -> None:
    import types

    import transformers.models.t5.modeling_t5  # noqa: F401  (loaded first: it probes for torchvision)

    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    tr.ToTensor, tr.ToPILImage, tv.transforms = _ToTensor, _ToPILImage, tr
    sys.modules |= {"torchvision": tv, "torchvision.transforms": tr}


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def main() -> None:
    _torchvision_stand_in()
    from kandinsky3 import Kandinsky3InpaintingPipeline, Kandinsky3T2IPipeline
    from kandinsky3.condition_encoders import T5TextConditionEncoder
    from kandinsky3.condition_processors import T5TextConditionProcessor
    from kandinsky3.model.unet import UNet
    from kandinsky3.movq import MoVQ

    with torch.device("meta"):
        m = {
            "full_unet": shapes(UNet(num_channels=4, **tiny.FULL_UNET)),
            "full_unet9": shapes(UNet(num_channels=9, **tiny.FULL_UNET)),
            "full_movq": shapes(MoVQ(tiny.FULL_MOVQ)),
        }
    unets = {c: UNet(num_channels=c, **tiny.TINY_UNET).eval() for c in (4, 9)}
    movq = MoVQ(tiny.TINY_MOVQ).eval()
    m |= {"tiny_unet": shapes(unets[4]), "tiny_unet9": shapes(unets[9]), "tiny_movq": shapes(movq)}
    tiny.MANIFESTS.write_bytes(gzip.compress(json.dumps(m, sort_keys=True).encode(), mtime=0))

    ck = tiny.checkpoints(m)
    movq.load_state_dict(ck["movq"])
    t5 = tiny.t5_encoder()
    tok = tiny.tokenizer(Path("/tmp/k31_golden_tok"))
    processor = object.__new__(T5TextConditionProcessor)
    processor.tokens_length, processor.processor = 128, tok

    def text_encoder(name: str) -> T5TextConditionEncoder:
        enc = object.__new__(T5TextConditionEncoder)
        torch.nn.Module.__init__(enc)
        enc.encoder = t5.encoder
        enc.projection = torch.nn.Sequential(torch.nn.Linear(32, 32, bias=False), torch.nn.LayerNorm(32))
        enc.projection.load_state_dict(ck[f"projection_{name}"])
        return enc.eval()

    def unet(name: str) -> tuple[UNet, torch.Tensor]:
        u = UNet(num_channels=9 if name == "inpainting" else 4, **tiny.TINY_UNET).eval()
        u.load_state_dict(ck[name]["unet"])
        return u, ck[name]["null_embedding"]

    dev, dt = (
        {k: "cpu" for k in ("unet", "text_encoder", "movq")},
        {k: torch.float32 for k in ("unet", "text_encoder", "movq")},
    )
    out: dict[str, torch.Tensor] = {}

    # the networks alone
    g = torch.Generator().manual_seed(7)
    out["unet_x"], out["unet9_x"] = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 9, 8, 8, generator=g)
    out["unet_t"] = torch.tensor([999.0, 321.0])
    out["unet_ctx"] = torch.randn(2, 5, 32, generator=g)
    out["unet_mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        for key, name in (("unet", "base"), ("unet9", "inpainting")):
            u, _ = unet(name)
            out[f"{key}_out"] = u(out[f"{key}_x"], out["unet_t"], out["unet_ctx"], out["unet_mask"].bool())
        out["movq_z"] = torch.randn(1, 4, 4, 4, generator=g)
        out["movq_decoded"] = movq.decode(out["movq_z"])
        out["movq_image"] = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
        out["movq_encoded"] = movq.encode(out["movq_image"])

    def record(run: str):
        decode = movq.decode

        def wrapped(z):
            out[f"{run}_latents"] = z.clone()
            return decode(z)

        movq.decode = wrapped

    def t2i(name: str) -> Kandinsky3T2IPipeline:
        u, null = unet(name)
        return Kandinsky3T2IPipeline(dev, dt, u, null, processor, text_encoder(name), movq, name == "flash")

    # pipelines are built before seeding: building modules draws from torch's global generator
    flash, base = t2i("flash"), t2i("base")
    runs = {
        "flash": lambda: flash(tiny.PROMPT, width=64, height=64),
        "base": lambda: base(tiny.PROMPT, width=64, height=64, steps=6, guidance_scale=3.0),
        "base_neg": lambda: base(tiny.PROMPT, negative_text=tiny.NEGATIVE, width=64, height=64, steps=2),
    }
    for seed, (run, call) in enumerate(runs.items()):
        record(run)
        torch.manual_seed(seed)
        out[f"{run}_image"] = torch.from_numpy(np.asarray(call()[0]).copy())
        movq.decode = MoVQ.decode.__get__(movq)

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[16:48, 8:40] = 1.0
    out["inpaint_input"], out["inpaint_mask"] = torch.from_numpy(image), torch.from_numpy(mask)
    u, null = unet("inpainting")
    pipe = Kandinsky3InpaintingPipeline(dev, dt, u, null, processor, text_encoder("inpainting"), movq)
    from PIL import Image

    record("inpaint")
    torch.manual_seed(3)
    out["inpaint_image"] = torch.from_numpy(
        np.asarray(pipe(tiny.PROMPT, Image.fromarray(image), mask, steps=4)[0]).copy()
    )
    movq.decode = MoVQ.decode.__get__(movq)

    record("nan")  # the issue reports NaN images at 1 and 3 steps from sqrt of a rounded-negative number
    torch.manual_seed(4)
    base(tiny.PROMPT, width=64, height=64, steps=3)
    print(
        "original, 3 base steps, tiny model on CPU: NaN latents =", bool(out.pop("nan_latents").isnan().any())
    )

    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, str(tiny.GOLDEN), metadata={"source": f"ai-forever/Kandinsky-3@{COMMIT}"})
    print(
        tiny.GOLDEN,
        tiny.GOLDEN.stat().st_size,
        "bytes;",
        tiny.MANIFESTS,
        tiny.MANIFESTS.stat().st_size,
        "bytes",
    )


if __name__ == "__main__":
    main()
