"""What every ``mat-fast`` subcommand shares: the user-error type, the one-line argument
errors, the option types and the no-weights hint."""

from __future__ import annotations

import argparse
import sys

import torch

WEIGHTS_HELP = (
    "no checkpoint given. MAT's weights are not shipped (CC BY-NC): download upstream's "
    "Places_512_FullData.pkl or CelebA-HQ_512.pkl (links in the README of github.com/"
    "fenglinglwb/MAT) or IOPaint's converted Places_512_FullData_G.pth, then pass "
    "--checkpoint PATH (or set MAT_FAST_CHECKPOINT). To try the pipeline without weights, "
    "use --random-weights."
)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line saying what to do (not usage + error)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


positive_int.__name__ = "positive integer"


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not 0 or a positive integer")
    return value


non_negative_int.__name__ = "non-negative integer"
