"""Small helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
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


def output_path(path, name: str) -> Path:
    """Check that an output file can be created (its folder exists), before any work starts."""
    path = Path(path)
    if not path.parent.exists():
        raise InputError(name, f"folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(name, f"{path} is a folder, expected a file name")
    return path


def write_json(data, path) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=float)
        f.write("\n")
    return Path(path)
