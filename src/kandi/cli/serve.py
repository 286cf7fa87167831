"""`kandi serve`: load the models once, then serve the HTTP API, the A1111 subset and the web UI."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from .common import COMPILE_HELP, Command, UsageError, dtype_name, positive_int

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
    p.add_argument(
        "--lora-dir", metavar="DIR", help="LoRA files that requests may name (<lora:NAME:SCALE>, loras)"
    )
    p.add_argument("--upscaler-dir", metavar="DIR", help="learned upscalers for hi-res passes and extras")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps... (default cuda if available)")
    p.add_argument("--dtype", type=dtype_name, help="fp32, fp16 or bf16 (default fp16 on cuda, fp32 on cpu)")
    p.add_argument("--variant", help="weights variant to load, e.g. fp16")
    p.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def serve(args: argparse.Namespace) -> int:
    """Claim the port, load the models, then serve until interrupted."""
    _check_extra(ui=not args.no_ui)
    import uvicorn

    from ..engine import Engine
    from ..server.api import create_app
    from ..server.inputs import Limits

    _warn_if_exposed(args.host, args.api_key)
    limits = Limits(max_side=args.max_size, max_steps=args.max_steps, max_images=args.max_images,
                    max_upload_bytes=args.max_upload_mb * 2**20)  # fmt: skip
    sock = claim_port(args.host, args.port)  # before the models load: a busy port fails in a second
    print(f"kandi: loading {', '.join(args.model or ['kandinsky-2.2'])}...", file=sys.stderr, flush=True)
    if args.compile:
        print("kandi: --compile: the first request of each image size pays for the compile", file=sys.stderr)
    engine = Engine(
        args.model or None,
        args.device,
        args.dtype,
        args.variant,
        args.offline,
        args.prior,
        compile=args.compile,
    ).load()
    app = create_app(engine, args.workers, args.queue, limits, args.api_key, ui=not args.no_ui,
                     lora_dir=args.lora_dir, upscaler_dir=args.upscaler_dir)  # fmt: skip
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"kandi: serving on http://{shown}:{args.port}  (UI /ui, API docs /docs)", file=sys.stderr, flush=True
    )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _check_extra(ui: bool) -> None:
    """The server's packages, said in one line when missing (not a traceback from the first import)."""
    import importlib.util

    needed = ["fastapi", "uvicorn", *(["gradio"] if ui else [])]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"kandi serve needs the serve extra ({', '.join(missing)} missing): "
                         "pip install 'kandi[serve]'")  # fmt: skip


def claim_port(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error when the port is taken or the host unknown."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free; a bound one not
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another kandi serve "
                         "running there? choose another --port)") from None  # fmt: skip
    sock.set_inheritable(True)
    return sock


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
