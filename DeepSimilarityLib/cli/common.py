"""Small helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_output
from ..errors import InputError


def parse_point(text: str) -> tuple:
    """``"x,y[,z]"`` -> floats; the error names the option."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 12.5,-30,4, got {text!r}") from None
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected 2 or 3 coordinates, got {len(values)}")
    return values


def positive_numbers(text: str) -> list:
    """``"0.25,1,4"`` -> ``[0.25, 1.0, 4.0]``, every one above zero (an argparse type: the error names the option)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"every value must be positive, got {text!r}")
    return values


def output_path(path, name: str) -> Path:
    """Check that an output file can be created (its folder exists), before any work starts."""
    path = Path(path)
    if not path.parent.exists():
        raise InputError(name, f"folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(name, f"{path} is a folder, expected a file name")
    return path


def write_text(text: str, path) -> Path:
    """Write a text file (a result table) atomically (temporary file, then rename)."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(data, path) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=float)
        f.write("\n")
    return Path(path)


def add_resume_option(p) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.ckpt (saved after every epoch, removed on success); "
                        "the result equals an uninterrupted run's")


@contextmanager
def resumable_training(args):
    """Checkpoint the training inside the block to ``args.out + '.ckpt'``; the options are its fingerprint.

    The caller discards the checkpoint once the output is written.
    """
    from ..training_checkpoint import training_checkpoint

    # options that do not change the result may differ between the interrupted and the resumed run
    # (lists such as --images count too: resuming on other images would mix two trainings)
    fingerprint = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in sorted(vars(args).items())
                   if k not in ("func", "resume", "threads")
                   and isinstance(v, (str, int, float, bool, type(None), list, tuple))}
    with training_checkpoint(args.out, fingerprint, args.resume) as checkpoint:
        yield checkpoint
