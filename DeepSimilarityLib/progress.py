"""Progress bars for people (tqdm) or for programs (one JSON line per update).

Every long ``deepsim`` command makes its bars with :func:`progress_bar`. Run as
``deepsim --progress-json ...`` the bars print lines such as::

    {"progress": 0.42, "n": 21, "total": 50, "desc": "training", "stage": "finetune"}

on stdout instead of drawing on stderr, so a caller (the Slicer module runs
the command line in a background process) reads the fraction done without
parsing tqdm's terminal output, and stderr keeps only messages and errors.
"""

from __future__ import annotations

import json
import sys

from tqdm import tqdm

# A line carrying progress starts with this text (what callers look for).
JSON_PREFIX = '{"progress"'

_json_mode = False


def set_json_progress(enabled: bool) -> None:
    """Switch every bar made afterwards to JSON lines on stdout (``--progress-json``)."""
    global _json_mode
    _json_mode = bool(enabled)


def json_progress_enabled() -> bool:
    return _json_mode


class JsonProgressBar(tqdm):
    """A tqdm whose display is one JSON line; tqdm keeps the counting and the rate limiting."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = sys.stdout
        kwargs.setdefault("mininterval", 0.25)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):  # noqa: D102  (tqdm's drawing hook)
        total = self.total
        line = {"progress": (min(1.0, self.n / total) if total else None), "n": self.n, "total": total,
                "desc": self.desc or "", "stage": (self.postfix or "").lstrip(", ")}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        return True


def progress_bar(*args, **kwargs) -> tqdm:
    """A tqdm bar, or a :class:`JsonProgressBar` when JSON progress is on; same arguments as tqdm."""
    return JsonProgressBar(*args, **kwargs) if _json_mode else tqdm(*args, **kwargs)


def parse_progress_line(line: str):
    """The dict of a JSON progress line, or None for any other line."""
    line = line.strip()
    if not line.startswith(JSON_PREFIX):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
