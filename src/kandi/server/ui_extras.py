"""Parts of the web UI: the LoRA picker and the hi-res section."""

from __future__ import annotations

from typing import Any

import gradio as gr


def lora_names(folder: str | None) -> list[str]:
    """The LoRAs a request may name: the files of the server's --lora-dir."""
    from ..lora import list_loras

    return [x["name"] for x in list_loras(folder)] if folder else []


def hires_inputs(task: str, c: dict[str, Any], upscaler_dir: str | None, max_steps: int) -> None:
    """A1111's hires fix: the image made, upscaled, then redrawn at the larger size."""
    from ..pipelines.hires import builtin_upscalers
    from ..upscale import list_upscalers

    learned = [x["name"] for x in list_upscalers(upscaler_dir) if x["path"]]
    with gr.Accordion("Hi-res pass", open=False, elem_id=f"{task}-hires-section"):
        c["hires"] = gr.Checkbox(False, label="Upscale and redraw (hires fix)", elem_id=f"{task}-hires")
        with gr.Row():
            c["hires_scale"] = gr.Slider(1, 4, 2, step=0.25, label="Upscale by", min_width=140)
            c["hires_strength"] = gr.Slider(0, 1, 0.5, step=0.05, label="Denoising strength", min_width=140)
        with gr.Row():
            c["hires_steps"] = gr.Slider(
                0, max_steps, 0, step=1, label="Hires steps (0: same)", min_width=140
            )
            c["hires_upscaler"] = gr.Dropdown(
                [*builtin_upscalers(), *learned], value="lanczos", label="Upscaler"
            )
