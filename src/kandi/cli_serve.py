"""`kandi serve`: load the models once, then serve the HTTP API, the A1111 subset and the web UI."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from .cli import Command, dtype_name, positive_int

SERVE_EXAMPLES = """examples:
  kandi serve                                   # kandinsky-2.2 on http://127.0.0.1:7860 (UI at /ui)
  kandi serve -m kandinsky-2.2 -m kandinsky-3 --port 8000
  kandi serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)" --workers 2"""


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", action="append", metavar="MODEL",
                   help="a model to load (kandinsky-2.1, kandinsky-2.2, kandinsky-3, a folder or a hub id); "
                   "repeat for several; default kandinsky-2.2")  # fmt: skip
    p.add_argument("--prior", help="the prior repo for a decoder folder or id that does not name one")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--api-key", default=os.environ.get("KANDI_API_KEY"),
                   help="require this key on every request (default: $KANDI_API_KEY, else none)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1, help="jobs run at once (default 1)")
    p.add_argument(
        "--queue", type=positive_int, default=16, help="jobs that may wait; more get 429 (default 16)"
    )
    p.add_argument(
        "--max-size", type=positive_int, default=2048, help="largest width or height (default 2048)"
    )
    p.add_argument("--max-steps", type=positive_int, default=200, help="most steps per request (default 200)")
    p.add_argument("--max-images", type=positive_int, default=8, help="most images per request (default 8)")
    p.add_argument(
        "--max-upload-mb", type=positive_int, default=16, help="largest image upload in MB (default 16)"
    )
    p.add_argument("--no-ui", action="store_true", help="serve the API only")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps... (default cuda if available)")
    p.add_argument("--dtype", type=dtype_name, help="fp32, fp16 or bf16 (default fp16 on cuda, fp32 on cpu)")
    p.add_argument("--variant", help="weights variant to load, e.g. fp16")
    p.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")


def serve(args: argparse.Namespace) -> int:
    """Load the models, then serve until interrupted."""
    from .server.api import create_app
    from .server.engine import Engine
    from .server.inputs import Limits

    try:
        import uvicorn
    except ImportError:
        raise ValueError("kandi serve needs the server extra: pip install 'kandi[serve]'") from None
    _warn_if_exposed(args.host, args.api_key)
    limits = Limits(max_side=args.max_size, max_steps=args.max_steps, max_images=args.max_images,
                    max_upload_bytes=args.max_upload_mb * 2**20)  # fmt: skip
    print(f"kandi: loading {', '.join(args.model or ['kandinsky-2.2'])}...", file=sys.stderr, flush=True)
    engine = Engine(args.model or [], args.device, args.dtype, args.variant, args.offline, args.prior).load()
    app = create_app(engine, args.workers, args.queue, limits, args.api_key, ui=not args.no_ui)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"kandi: serving on http://{shown}:{args.port}  (UI /ui, API docs /docs)", file=sys.stderr, flush=True
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def _warn_if_exposed(host: str, api_key: str | None) -> None:
    """Binding beyond loopback lets anyone on the network use the GPU (and, without a key, freely)."""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        print(f"kandi: warning: binding to {host}: other machines can reach this server"
              + ("" if api_key else "; anyone can use it (set --api-key)"), file=sys.stderr)  # fmt: skip


COMMANDS = {"serve": Command(add_serve_args, serve, "serve the HTTP API and the web UI", SERVE_EXAMPLES)}
