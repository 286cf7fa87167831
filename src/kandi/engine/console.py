"""The `kandi` command's console: third-party logging and warnings quieted, kandi's warnings as
`warning: ...` lines, and which progress bars show."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import KandiWarning

NOISY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "torch", "accelerate", "PIL")
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Libraries' info, warnings and deprecation notes off; kandi's own warnings as `warning: ...` lines.

    Set for the run of one command and undone after, so calling `main` in-process leaves no trace.
    """
    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)  # for libraries imported later: transformers reads it on import
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    kandi_log, handler = logging.getLogger("kandi"), _LineHandler()
    kandi_log.addHandler(handler)
    propagate, kandi_log.propagate = kandi_log.propagate, False
    try:
        with warnings.catch_warnings():  # also restores warnings.showwarning
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", KandiWarning)  # warn_once already says each only once
            warnings.showwarning = _show_warning
            yield
    finally:
        kandi_log.removeHandler(handler)
        kandi_log.propagate = propagate
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


class _LineHandler(logging.Handler):
    """kandi's log warnings as `warning: message` lines on stderr (looked up late: tests swap it)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:  # a bug's traceback belongs in the server log (the client gets one line)
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        print(text, file=sys.stderr)


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextmanager
def progress_bars(downloads: bool, transformers: bool = True) -> Iterator[None]:
    """Hub download bars only if `downloads` (a terminal, no --quiet); no "Loading weights" bar per model.

    transformers draws that bar for every model it loads, which says nothing to a user; undone after.
    """
    import huggingface_hub.utils as hub

    hub_bars = not hub.are_progress_bars_disabled()
    tlog = None
    if transformers:
        from transformers.utils import logging as tlog

        bars = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()
    _set_bars(hub, downloads and hub_bars)
    try:
        yield
    finally:
        if tlog is not None and bars:
            tlog.enable_progress_bar()
        _set_bars(hub, hub_bars)


def _set_bars(hub: Any, on: bool) -> None:
    if on:
        hub.enable_progress_bars()
    else:
        hub.disable_progress_bars()
