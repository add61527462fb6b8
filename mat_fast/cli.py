"""``mat-fast`` command line: inpaint files or folders, convert checkpoints, show the setup,
serve the web page, write evaluation masks and evaluate fills (one module per subcommand
group, plugged in through ``SUBCOMMANDS``).

Errors a user can cause print one line saying what is wrong and how to fix it (no
traceback) and exit with status 2; outputs are written atomically, after all inputs have
been checked, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from typing import Optional, Sequence

import torch

from . import cli_eval, cli_inpaint, cli_train, serve
from .backend import BackendUnavailableError, available_backends, get_backend, resolve
from .cli_common import CliError, OneLineParser
from .errors import CheckpointError, InputError
from .version import __version__


def _build_parser() -> argparse.ArgumentParser:
    """One function per subcommand adds its parser (and sets ``run``): new subcommands
    plug in by adding theirs to SUBCOMMANDS."""
    parser = OneLineParser(prog="mat-fast", description="Fast MAT inpainting.")
    parser.add_argument("--version", action="version", version=f"mat_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _add_convert(sub) -> None:
    c = sub.add_parser("convert", help="convert a checkpoint to .safetensors or .pth")
    c.set_defaults(run=cmd_convert)
    c.add_argument("src", help="upstream .pkl, .pth/.pt or .safetensors")
    c.add_argument("dst", help="output path ending in .safetensors, .pth or .pt")


def _add_info(sub) -> None:
    sub.add_parser(
        "info", help="versions, devices and backends (and why any cannot run)"
    ).set_defaults(run=cmd_info)


def cmd_convert(args) -> int:
    from .checkpoints import load_generator, save_generator
    from .destinations import check_destination

    if not args.dst.lower().endswith((".safetensors", ".pth", ".pt")):
        raise CliError(f"output {args.dst} must end in .safetensors, .pth or .pt")
    check_destination(args.dst, "output", [(args.src, "the checkpoint to convert")])
    G = load_generator(args.src)
    try:
        save_generator(G, args.dst)
    except Exception as err:  # safetensors raises its own error type for I/O failures
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            raise CliError(f"cannot write {args.dst}: {err}; choose another output path") from None
        raise
    print(f"wrote {args.dst} (img_resolution={G.img_resolution}, use_noise={G.use_noise})")
    return 0


def cmd_info(args) -> int:
    import numpy
    import PIL

    try:
        import triton

        triton_version = triton.__version__
    except Exception as err:  # noqa: BLE001 - any import failure is worth reporting
        triton_version = f"not importable ({type(err).__name__}: {err})"
    print(f"mat_fast {__version__}")
    print(f"python   {platform.python_version()} ({platform.platform()})")
    print(f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"triton   {triton_version}")
    print(f"numpy    {numpy.__version__}, pillow {PIL.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"device   cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print("device   cpu only (no CUDA GPU visible)")
    print(f"backend  requested: {get_backend()}")
    for device in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        try:
            chosen = resolve(device)
        except BackendUnavailableError as err:
            chosen = f"unavailable ({err})"
        print(f"  on {device}: runs {chosen}")
        for name, reason in available_backends(device).items():
            print(f"    {name:<10} {'ok' if reason is None else reason}")
    from .ops import native_build
    from .ops.resample.cpu import half_convolutions_in_fp32

    # The native kernels: a layer under the 'cpu' backend, all of the 'cuda' one.
    print(f"native   {native_build.describe()}")
    halves = [
        name
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
        if half_convolutions_in_fp32(dtype)
    ]
    if halves:  # users choosing a half dtype on this CPU should know where its time goes
        print(
            f"cpu half {'/'.join(halves)} convolutions computed in fp32 (this CPU has no "
            "oneDNN kernels for them; memory stays half)"
        )
    return 0


#: Each adds its subparser(s) to ``mat-fast`` and sets ``run`` to the command's function.
SUBCOMMANDS = [
    cli_inpaint.add_parser,
    _add_convert,
    _add_info,
    cli_eval.add_subcommands,  # masks, evaluate
    cli_train.add_subcommands,  # train
    serve.add_serve_parser,
]


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = _build_parser().parse_args(argv)
    try:
        if getattr(args, "backend", None):
            from .backend import set_backend

            # checked for the device the command will run on, not the default one
            device = getattr(args, "device", "auto")
            set_backend(args.backend, None if device == "auto" else device)
        return args.run(args)
    except (
        CliError,
        InputError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        OSError,
    ) as err:
        print(f"mat-fast: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError):
        print(
            "mat-fast: error: out of memory; use --strategy auto or resize, --dtype bf16, "
            "or a smaller --max-memory",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("mat-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
