"""Atomic file output for pbpk: write to a temporary file in the destination folder, then
`os.replace` it onto the destination, so a reader sees the old file or the complete new
one, never half of it.  On any exception the temporary file is removed.  The file gets
the permissions of a normally created file (0666 less the umask), not the private 0600
of a temporary file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable, mode: str = "w") -> Path:
    """Call `write(f)` on a temporary file opened with `mode` ("w" or "wb") next to `path`,
    then rename it onto `path`; returns `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
