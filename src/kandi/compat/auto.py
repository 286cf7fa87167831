"""AutoPipelineForText2Image / Image2Image / Inpainting: pick the task's pipeline for a checkpoint.

As diffusers: the class named in model_index.json identifies the model family, and the task picks the
family's pipeline (for 2.x the combined prior + decoder one, which loads the prior the model card names).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CheckpointError
from ..loading.hub import resolve_repo_dir
from ..loading.pipeline import read_model_index
from .base import DiffusionPipeline
from .loader import pipeline_class

# family -> pipeline class name per task (None: the family has no pipeline for that task)
FAMILIES: dict[str, dict[str, str | None]] = {
    "kandinsky3": {
        "text2image": "Kandinsky3Pipeline",
        "image2image": "Kandinsky3Img2ImgPipeline",
        "inpainting": None,
    },
    "kandinsky": {
        "text2image": "KandinskyCombinedPipeline",
        "image2image": "KandinskyImg2ImgCombinedPipeline",
        "inpainting": "KandinskyInpaintCombinedPipeline",
    },
    "kandinsky22": {
        "text2image": "KandinskyV22CombinedPipeline",
        "image2image": "KandinskyV22Img2ImgCombinedPipeline",
        "inpainting": "KandinskyV22InpaintCombinedPipeline",
    },
}
# every class name that identifies a family (decoder and combined pipelines; priors and ControlNet
# pipelines are not mapped, as in diffusers)
_TASK_CLASSES = ("{}Pipeline", "{}CombinedPipeline", "{}Img2ImgPipeline", "{}Img2ImgCombinedPipeline",
                 "{}InpaintPipeline", "{}InpaintCombinedPipeline")  # fmt: skip
MEMBERS: dict[str, str] = {
    pattern.format(prefix): family
    for prefix, family in (("Kandinsky", "kandinsky"), ("KandinskyV22", "kandinsky22"))
    for pattern in _TASK_CLASSES
} | {"Kandinsky3Pipeline": "kandinsky3", "Kandinsky3Img2ImgPipeline": "kandinsky3"}
INPAINTING_MODELS = (
    "ai-forever/Kandinsky3.1 (kandinsky-3.1), kandinsky-community/kandinsky-2-2-decoder-inpaint (kandinsky-2.2) "
    "or kandinsky-community/kandinsky-2-1-inpaint (kandinsky-2.1)"
)


def family_of(class_name: str) -> str:
    family = MEMBERS.get(class_name)
    if family is None:
        raise ValueError(
            f"AutoPipeline can't find a pipeline linked to {class_name}: kandi's AutoPipelines load Kandinsky "
            f"decoder checkpoints ({', '.join(sorted(MEMBERS))}); load priors with their own pipeline class"
        )
    return family


def task_class(family: str, task: str) -> type:
    name = FAMILIES[family].get(task)
    if name is None:
        raise ValueError(
            f"Kandinsky 3 has no {task} pipeline (neither has diffusers): for inpainting use {INPAINTING_MODELS}"
        )
    return pipeline_class(name)


class _AutoPipeline:
    _task: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(f"{type(self).__name__} is built with from_pretrained(...) or from_pipe(...)")

    @classmethod
    def from_pretrained(cls, pretrained_model_or_path: str | os.PathLike, **kwargs: Any) -> DiffusionPipeline:
        from . import kandinsky31

        if kandinsky31.is_kandinsky31(
            pretrained_model_or_path
        ):  # ai-forever's layout; `model=` picks the UNet
            return kandinsky31.for_task(cls._task, pretrained_model_or_path, **kwargs)
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs}
        role = "inpaint_repo" if cls._task == "inpainting" else "decoder_repo"
        root = resolve_repo_dir(pretrained_model_or_path, variant=kwargs.get("variant"), role=role, **hub)
        try:
            index = read_model_index(root)
        except CheckpointError as e:
            raise CheckpointError(f"{pretrained_model_or_path} is not a pipeline folder: {e}") from None
        target = task_class(family_of(index["_class_name"]), cls._task)
        return target.from_pretrained(pretrained_model_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        target = task_class(family_of(type(pipeline).__name__), cls._task)
        return target.from_pipe(pipeline, **kwargs)


class AutoPipelineForText2Image(_AutoPipeline):
    _task = "text2image"


class AutoPipelineForImage2Image(_AutoPipeline):
    _task = "image2image"


class AutoPipelineForInpainting(_AutoPipeline):
    _task = "inpainting"
