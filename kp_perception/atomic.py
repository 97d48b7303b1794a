"""The one way files are written: to a temporary file beside the target, then renamed.

A checkpoint, sidecar, ONNX model, engine, cache or video that is interrupted
half-way therefore never appears under its final name: readers see either the
old complete file or the new complete file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kp_perception.errors import OutputError


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success fsync it and rename it to ``path``.

    The caller writes the temporary path however it likes (``torch.save``,
    ``onnx.save``, a video writer...) and closes it before the block ends.
    ``suffix`` lets writers that choose a format by extension see the right one.
    On any exception the temporary file is removed and ``path`` is untouched.
    A place that cannot be written (a directory, ``/proc``, a read-only or full
    disk) is an ``OutputError`` naming ``path``; a process killed inside the
    block leaves its temporary file, which :func:`remove_stale_temporaries` clears.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a file in {path.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any new file
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename not in (str(tmp), str(path)):
            raise  # not our file: an error of the caller's own (e.g. reading its input)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> None:
    """Raise the ``OutputError`` :func:`atomic_path` would, before long work rather than after it."""
    try:
        with atomic_path(path):
            raise _Probe  # the temporary file was created; remove it and leave ``path`` alone
    except _Probe:
        pass


class _Probe(Exception):
    """Unwinds :func:`check_writable`'s probe so that nothing is renamed into place."""


def temporary_names(path: str | Path, suffix: str = "*") -> str:
    """The glob pattern of :func:`atomic_path`'s temporary files for ``path`` (in its folder)."""
    return f".{Path(path).name}.*{suffix}"


def remove_stale_temporaries(paths: list[str | Path], suffix: str = ".tmp") -> list[Path]:
    """Delete the temporary files a killed writer of ``paths`` left behind; returns what was removed.

    Call it only where no other process writes the same files (e.g. a run directory at the start
    of training, which one trainer owns).
    """
    removed = []
    for path in map(Path, paths):
        if not path.parent.is_dir():
            continue
        for stale in path.parent.glob(temporary_names(path, suffix)):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
