"""The `kandi` command line: `generate`, the editing commands (`img2img`, `inpaint`, `mix`,
`controlnet`), `batch`, `serve` and `download`. Each command turns its arguments into an engine
Request (see `common.run_task`); every user error ends as one line on stderr (see `main`).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..engine.console import quiet_third_party
from ..errors import KandiError
from . import batch, common, edit, serve, upscale
from .common import GENERATE_EXAMPLES, Command, UsageError, _Parser

__all__ = ["build_parser", "commands", "main"]


def commands() -> dict[str, Command]:
    """Every subcommand in --help order."""
    return {"generate": common.COMMANDS["generate"], **edit.COMMANDS, **upscale.COMMANDS, **batch.COMMANDS,
            **serve.COMMANDS, "download": common.COMMANDS["download"]}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kandi",
        description="Kandinsky image generation.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kandi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in commands().items():
        p = sub.add_parser(
            name,
            help=cmd.help,
            description=cmd.help,
            epilog=cmd.examples or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_args(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `kandi ARGS`; returns the exit status: 0, 1 (error), 2 (usage error) or 130 (interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        with quiet_third_party():
            return args.run(args)
    except UsageError as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except (KandiError, ValueError, TypeError, OSError) as e:
        return _fail(_message(e), 1)


def _fail(message: str, status: int) -> int:
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"kandi: error: {one_line}", file=sys.stderr)
    return status


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:  # "[Errno 13] ..." reads badly
        return f"{e.filename}: {e.strerror}"
    return str(e) or type(e).__name__
