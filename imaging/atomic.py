"""Atomic output: write to a temporary name in the destination folder, then rename.

A reader never sees a half-written file or series: either the old content (or nothing)
or the complete new one.  On any exception the temporary file / folder is removed.  The
result gets the permissions of a normally created file or folder (0666 / 0777 less the
umask), not the private 0600 / 0700 of a temporary one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _created_mode(full: int) -> int:
    """`full` (0o666 for a file, 0o777 for a folder) less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


def _suffix(path: Path) -> str:
    """Full suffix such as '.nii.gz' (SimpleITK picks the writer from it)."""
    return "".join(path.suffixes) if path.suffixes else ""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path next to `path` with the same suffix; rename it onto
    `path` (os.replace) when the block succeeds, delete it when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=".tmp" + _suffix(path),
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _created_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to `folder`; rename it to `folder` when the block
    succeeds (replacing an existing one only if `overwrite`), remove it when it raises."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder}: output folder exists; pass overwrite=True to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, _created_mode(0o777))
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
