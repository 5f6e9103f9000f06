"""Atomic file output for the dose package: the writer fills a temporary file next to
the destination (same suffix, so SimpleITK and pydicom pick the format from it), which
is then renamed onto the destination (`os.replace`).  A reader sees the old file or the
complete new one; when the writer raises, the temporary file is removed and the
destination is untouched.  The file gets the permissions of a normally created file (0666
less the umask), not the private 0600 of a temporary file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` with a temporary path next to `path`, then rename it onto `path`
    (parent folders created); returns `path` as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
