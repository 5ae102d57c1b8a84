"""Writing files so that a reader never sees half of one.

Every output of the project (images, transforms, networks, JSON, caches) is
written to a temporary file in the destination folder and renamed over the
destination only once complete: an error or a kill mid-write leaves the old
file (or nothing) in place.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` keeps the extension for writers that choose the format by it
    (SimpleITK). The file gets the permissions a plain ``open`` would give
    (mkstemp's are owner-only), so shipped files stay readable.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
