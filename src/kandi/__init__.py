"""kandi: a fast, self-contained engine for the Kandinsky image models with diffusers' API.

Names are imported lazily, so `import kandi` (and `kandi --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # diffusers-compatible pipelines
    "DiffusionPipeline": "kandi.compat.base",
    "Kandinsky3Pipeline": "kandi.compat.kandinsky3",
    "Kandinsky3Img2ImgPipeline": "kandi.compat.kandinsky3",
    "Kandinsky31Pipeline": "kandi.compat.kandinsky31",
    "Kandinsky31Img2ImgPipeline": "kandi.compat.kandinsky31",
    "Kandinsky31InpaintPipeline": "kandi.compat.kandinsky31",
    "Kandinsky5T2IPipeline": "kandi.compat.kandinsky5",
    "Kandinsky5I2IPipeline": "kandi.compat.kandinsky5",
    "KandinskyPriorPipeline": "kandi.compat.kandinsky21",
    "KandinskyPipeline": "kandi.compat.kandinsky21",
    "KandinskyImg2ImgPipeline": "kandi.compat.kandinsky21",
    "KandinskyInpaintPipeline": "kandi.compat.kandinsky21",
    "KandinskyCombinedPipeline": "kandi.compat.kandinsky21",
    "KandinskyImg2ImgCombinedPipeline": "kandi.compat.kandinsky21",
    "KandinskyInpaintCombinedPipeline": "kandi.compat.kandinsky21",
    "KandinskyV22PriorPipeline": "kandi.compat.kandinsky22",
    "KandinskyV22Pipeline": "kandi.compat.kandinsky22",
    "KandinskyV22CombinedPipeline": "kandi.compat.kandinsky22",
    "KandinskyV22PriorEmb2EmbPipeline": "kandi.compat.kandinsky22_edit",
    "KandinskyV22Img2ImgPipeline": "kandi.compat.kandinsky22_edit",
    "KandinskyV22InpaintPipeline": "kandi.compat.kandinsky22_edit",
    "KandinskyV22ControlnetPipeline": "kandi.compat.kandinsky22_edit",
    "KandinskyV22ControlnetImg2ImgPipeline": "kandi.compat.kandinsky22_edit",
    "KandinskyV22Img2ImgCombinedPipeline": "kandi.compat.kandinsky22_edit",
    "KandinskyV22InpaintCombinedPipeline": "kandi.compat.kandinsky22_edit",
    "AutoPipelineForText2Image": "kandi.compat.auto",
    "AutoPipelineForImage2Image": "kandi.compat.auto",
    "AutoPipelineForInpainting": "kandi.compat.auto",
    "ImagePipelineOutput": "kandi.compat.outputs",
    "KandinskyPriorPipelineOutput": "kandi.compat.outputs",
    # schedulers
    "DDPMScheduler": "kandi.schedulers",
    "DDIMScheduler": "kandi.schedulers",
    "UnCLIPScheduler": "kandi.schedulers",
    "DPMSolverMultistepScheduler": "kandi.schedulers",
    "EulerDiscreteScheduler": "kandi.schedulers",
    "EulerAncestralDiscreteScheduler": "kandi.schedulers",
    "FlowMatchEulerDiscreteScheduler": "kandi.schedulers.flow_match",
    "UniPCMultistepScheduler": "kandi.schedulers",
    "DEISMultistepScheduler": "kandi.schedulers",
    "DPMSolverSinglestepScheduler": "kandi.schedulers",
    "PNDMScheduler": "kandi.schedulers",
    "LCMScheduler": "kandi.schedulers",
    "HeunDiscreteScheduler": "kandi.schedulers",
    "KDPM2DiscreteScheduler": "kandi.schedulers",
    "KDPM2AncestralDiscreteScheduler": "kandi.schedulers",
    "LMSDiscreteScheduler": "kandi.schedulers",
    "DPMSolverSDEScheduler": "kandi.schedulers",
    # models, also under diffusers' names
    "UNet2": "kandi.models.unet2",
    "UNet3": "kandi.models.unet3",
    "MoVQ": "kandi.models.movq",
    "Prior": "kandi.models.prior",
    # helpers
    "load_image": "kandi.utils",
    "make_image_grid": "kandi.utils",
}
_ALIASES = {
    "UNet2DConditionModel": "UNet2",
    "Kandinsky3UNet": "UNet3",
    "VQModel": "MoVQ",
    "PriorTransformer": "Prior",
}

__all__ = sorted([*_EXPORTS, *_ALIASES])


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    module = _EXPORTS.get(target)
    if module is None:
        raise AttributeError(f"module 'kandi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), target)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
