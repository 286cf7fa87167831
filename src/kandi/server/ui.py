"""`kandi serve`'s web UI: a Gradio app mounted at /ui."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def mount_ui(app: FastAPI, server: Any) -> None:
    """Mount the web UI at /ui."""
    import gradio as gr

    with gr.Blocks(title="kandi", analytics_enabled=False) as blocks:
        gr.Markdown("# kandi")
    gr.mount_gradio_app(app, blocks, path="/ui", footer_links=[], run_history=False, ssr_mode=False,
                        mcp_server=False, pwa=False)
