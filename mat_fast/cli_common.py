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


def _int_at_least(low: int, name: str):
    """An argparse type: an integer >= ``low``; argparse names it ``name`` in its errors."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is not a {name}")
        return value

    parse.__name__ = name
    return parse


positive_int = _int_at_least(1, "positive integer")
non_negative_int = _int_at_least(0, "non-negative integer")
