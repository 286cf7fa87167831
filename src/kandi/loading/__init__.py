"""Reading and writing diffusers-layout model folders, from disk or the Hugging Face Hub."""

from .checkpoints import load_model, load_model_from_dir, save_model
from .hub import resolve_component_dir, resolve_repo_dir

__all__ = ["load_model", "load_model_from_dir", "save_model", "resolve_component_dir", "resolve_repo_dir"]
