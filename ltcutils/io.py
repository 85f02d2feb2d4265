"""The package's one way of writing a file: atomically, durably, with a normal file's mode.

Every file the package writes (stores, heads files, metrics, run records, checkpoints) goes
through :func:`atomic_write`, so a reader sees either the old content or the new one, never a
torn file, even after a kill or a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union

__all__ = ["atomic_write", "file_mode"]

Data = Union[bytes, str, Callable[[IO[bytes]], object]]


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask (e.g. 0o644)."""
    try:  # Linux: read the umask without changing it (os.umask is process-wide, racy with threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: Data) -> Path:
    """Write ``path`` so that readers see the old or the new content, never a torn file.

    The content goes to a temporary file in the same folder, is flushed and fsync'ed, gets the
    usual file mode (``0o666`` minus the umask; ``mkstemp`` alone would give ``0o600``), and
    then replaces ``path`` in one rename; the folder is fsync'ed where the system allows it.

    Args:
        path: the file to (re)write; its folder is created if missing.
        data: bytes, text (written as UTF-8), or a callable that writes into a binary file
            object (for large content such as ``np.save``).
    Returns:
        ``path`` as a Path.
    Raises:
        OSError: the folder is not writable or the disk is full (``path`` is then unchanged
            and no temporary file is left behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)
