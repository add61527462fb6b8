"""``mat-fast serve``: a local web page to paint a mask and fill it, and the same fill as an
HTTP endpoint. Needs the ``app`` extra (Starlette, uvicorn, python-multipart); the rest of
mat_fast does not, so this module imports them only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys

INSTALL_HINT = "mat-fast serve needs the app extra: pip install 'mat_fast[app]'"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``mat-fast``'s sub-commands."""
    p = subparsers.add_parser("serve", help="a local web page to paint a mask and fill it")
    p.set_defaults(run=cmd_serve)
    p.add_argument(
        "--checkpoint",
        default=os.environ.get("MAT_FAST_CHECKPOINT"),
        help="weights: upstream .pkl, .pth state dict or .safetensors "
        "(default: $MAT_FAST_CHECKPOINT)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="use a seeded random network (tries the page without weights; fills are noise)",
    )
    p.add_argument("--random-resolution", type=int, default=512, choices=[256, 512])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--backend", default=None, help="op backend (default: auto)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=50.0,
        help="largest image accepted, in megapixels (default 50)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=100.0,
        help="largest request accepted, in MB (default 100)",
    )
    return p


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # e.g. blocked with sys.modules[module] = None
        return False


def _listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so a busy port is one clear line and --port 0 can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({err.strerror}); pass another --port"
        ) from None
    sock.listen(64)
    return sock


def cmd_serve(args) -> int:
    """Run ``mat-fast serve``: load the model once, then serve until Ctrl+C."""
    from ..cli_common import DTYPES, WEIGHTS_HELP, CliError

    if not all(_installed(name) for name in ("starlette", "uvicorn", "python_multipart")):
        print(f"mat-fast: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.dtype not in DTYPES:
        raise CliError(f"--dtype must be one of {', '.join(sorted(DTYPES))}; got {args.dtype}")
    if not 0 < args.max_megapixels <= 170:  # Pillow refuses larger images as decompression bombs
        raise CliError(f"--max-megapixels must be in (0, 170]; got {args.max_megapixels:g}")
    if args.max_upload_mb <= 0:
        raise CliError(f"--max-upload-mb must be positive; got {args.max_upload_mb:g}")
    if not args.random_weights and not args.checkpoint:
        raise CliError(WEIGHTS_HELP)
    sock = _listen(args.host, args.port)  # before the model loads: a busy port fails fast

    import uvicorn

    from ..inpaint import Inpainter
    from .app import create_app

    dtype = DTYPES[args.dtype]
    print("mat-fast serve: loading the model ...", file=sys.stderr, flush=True)
    if args.random_weights:
        inpainter = Inpainter.random(
            0, resolution=args.random_resolution, device=args.device, dtype=dtype
        )
        weights = f"random weights ({args.random_resolution} px): fills are noise"
    else:
        inpainter = Inpainter.from_checkpoint(args.checkpoint, device=args.device, dtype=dtype)
        weights = os.path.basename(args.checkpoint)
    app = create_app(
        inpainter,
        max_megapixels=args.max_megapixels,
        max_upload_mb=args.max_upload_mb,
        weights=weights,
        # on this machine only: answer only to its own names (no DNS rebinding)
        allowed_hosts=["127.0.0.1", "localhost"] if args.host in LOOPBACK[:2] else None,
    )
    if args.host not in LOOPBACK:
        print(
            f"mat-fast serve: warning: listening on {args.host}: anyone who can reach this "
            f"machine on that network can use this page and its {inpainter.device.type.upper()}",
            file=sys.stderr,
        )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"mat-fast serve: open http://{shown}:{port}/ (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
