"""Errors that describe a user's mistake or a broken file in one sentence (the CLI prints only the message)."""

from __future__ import annotations


class KandiError(Exception):
    """Base of kandi's own errors: the message is complete and meant for the user."""


class CheckpointError(KandiError, ValueError):
    """A model folder or weights file is missing, corrupt, or does not fit its config."""


class ModelNotFoundError(KandiError, OSError):
    """A model id or path that cannot be found locally, in the cache, or on the Hub."""


class KandiWarning(UserWarning):
    """Something the user asked for was adapted (e.g. offload on a machine without an accelerator)."""


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Warn the first time `message` comes up in this process."""
    if message not in _warned:
        _warned.add(message)
        import warnings

        warnings.warn(message, KandiWarning, stacklevel=3)


class VariantNotFoundError(CheckpointError):
    """`variant=` names weights that no component of a pipeline folder has (e.g. no `*.fp16.safetensors`)."""

    def __init__(self, variant: str, root: object, components: list[str]) -> None:
        self.variant = variant
        self.root = root
        self.components = list(components)  # the components that were looked at, none has the variant
        super().__init__(
            f"variant={variant!r} was asked for, but no component of {root} has {variant} weights "
            f"(looked in {', '.join(self.components) or 'no component'}: none has a file like "
            f"diffusion_pytorch_model.{variant}.safetensors or model.{variant}.safetensors); "
            "leave out variant= to load the plain weights"
        )
