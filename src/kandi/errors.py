"""Errors that describe a user's mistake or a broken file in one sentence (the CLI prints only the message)."""

from __future__ import annotations


class KandiError(Exception):
    """Base of kandi's own errors: the message is complete and meant for the user."""


class CheckpointError(KandiError, ValueError):
    """A model folder or weights file is missing, corrupt, or does not fit its config."""


class ModelNotFoundError(KandiError, OSError):
    """A model id or path that cannot be found locally, in the cache, or on the Hub."""
