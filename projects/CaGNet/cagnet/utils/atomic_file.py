# Copyright (c) CaGNet-D2 contributors.
"""Write a file so that ``path`` holds either its previous content or the complete new one.

The content goes to ``path + suffix`` first, is flushed to disk, then renamed over ``path``
(atomic on POSIX). When writing fails (a full disk, a quota, an I/O error), the temporary file is
removed, ``path`` is left as it was, and ``FileSaveError`` names the path, the reason and the
free space of its filesystem: a run must stop there rather than go on as if it had saved.
"""
import contextlib
import errno
import os
import shutil
from typing import Callable, Iterator

__all__ = ["FileSaveError", "atomic_write", "atomic_write_with", "free_space"]

# errno values that mean "no room": the message then says so.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


class FileSaveError(OSError):
    pass


def free_space(path: str) -> str:
    """The free space of the filesystem holding ``path``, e.g. '12.3 MB free' (or why unknown)."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    except OSError as e:
        return f"free space unknown: {e.strerror}"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.1f} {unit} free" if unit != "B" else f"{free} B free"
        free /= 1000
    return ""


def save_error(path: str, e: OSError) -> FileSaveError:
    reason = "the disk is full" if e.errno in _NO_SPACE else (e.strerror or str(e))
    err = FileSaveError(f"Could not write {path}: {reason} ({free_space(path)} on its filesystem). The previous "
                        f"{os.path.basename(path)} (if any) is unchanged; free space and continue with --resume")
    err.errno = e.errno
    return err


@contextlib.contextmanager
def _replacing(path: str, suffix: str) -> Iterator[str]:
    """Yields the temporary name to write; then renames it over ``path``. On any error the
    temporary file is removed (the previous ``path`` stays) and an OSError becomes FileSaveError."""
    tmp = path + suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileSaveError):
            raise save_error(path, e) from e
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", suffix: str = ".tmp") -> Iterator:
    """``with atomic_write(path) as f: f.write(...)``: see the module doc."""
    with _replacing(path, suffix) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_with(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """For writers that take a file name (PIL, numpy): ``write(tmp_name)``, then rename."""
    with _replacing(path, suffix) as tmp:
        write(tmp)
