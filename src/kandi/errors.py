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
