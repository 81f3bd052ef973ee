"""Reading files a hostile user may hand us, and writing files so that a kill leaves no torn one.

Reads are bounded and refuse anything that is not a regular file: `/dev/zero` would otherwise
grow without bound and a FIFO would block forever (both seen with `fedrec-edge install`).
Writes go to a temporary sibling, are fsynced and renamed into place.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from protocol.errors import ProtocolError


class FileRefused(ProtocolError, ValueError):
    """A file that cannot be read as asked; the message names it and says why."""


class FileTooLarge(FileRefused):
    """A file larger than the caller allows."""


def open_regular(path: Path | str, *, max_bytes: int, what: str = "file", text: bool = False,
                 encoding: str = "utf-8", newline: str | None = None) -> IO:
    """Open `path` for reading if it is a regular file of at most `max_bytes` bytes.

    The file is opened with O_NONBLOCK first, so a FIFO cannot block the open, and checked with
    fstat on the opened descriptor, so it cannot be swapped between the check and the read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise FileRefused(f"{path}: is a directory, expected a {what}") from None
    except OSError as error:
        raise FileRefused(f"{path}: cannot open the {what}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileRefused(f"{path}: is a directory, expected a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path}: is not a regular file (a device, FIFO or socket); refusing to read it")
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{path}: {info.st_size} bytes, more than the {max_bytes} a {what} may have")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "r" if text else "rb", encoding=encoding if text else None,
                           newline=newline if text else None)
    except BaseException:
        os.close(fd)
        raise
    return handle


def read_bounded(path: Path | str, *, max_bytes: int, what: str = "file") -> bytes:
    """All bytes of a regular file of at most `max_bytes` (also if it grows while being read)."""
    with open_regular(path, max_bytes=max_bytes, what=what) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as error:
            raise FileRefused(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise FileTooLarge(f"{path}: more than the {max_bytes} bytes a {what} may have")
    return data


class LineTooLong(FileRefused):
    """A text line longer than the reader allows; `line` is its 1-based number."""

    def __init__(self, line: int, max_bytes: int) -> None:
        self.line = line
        self.max_bytes = max_bytes
        super().__init__(f"line {line}: longer than {max_bytes} bytes")


class UndecodableLine(FileRefused):
    """A line that is not text in the expected encoding; `line` is its 1-based number."""

    def __init__(self, line: int, encoding: str, reason: str) -> None:
        self.line = line
        super().__init__(f"line {line}: not {encoding} text ({reason})")


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes surrogateescape could not decode


def bounded_lines(handle: IO[bytes], *, max_bytes: int, encoding: str) -> Iterator[str]:
    """The lines of a binary file as text, each at most `max_bytes` characters long.

    A file without line breaks is never read into memory whole (LineTooLong). Lines end at
    "\n", "\r\n" or a lone "\r", and the endings are kept (as `open(newline="")` does). Bytes
    that are not `encoding` are decoded as surrogates and reported with the number of their own
    line (UndecodableLine); a plain text-mode file decodes 8 KB at a time and would blame the
    first line of that block. "utf-8-sig" drops a byte-order mark at the start.
    """
    text = io.TextIOWrapper(handle, encoding=encoding, errors="surrogateescape", newline="")
    line_no = 0
    while True:
        line = text.readline(max_bytes + 1)
        if not line:
            return
        line_no += 1
        if len(line) > max_bytes:
            raise LineTooLong(line_no, max_bytes)
        bad = _UNDECODED.search(line)
        if bad:
            byte = ord(bad.group()) - 0xDC00
            raise UndecodableLine(line_no, encoding, f"byte 0x{byte:02x} at column {bad.start() + 1}")
        yield line


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Replace `path` with `data` atomically (temporary sibling, fsync, rename, fsync the folder)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path | str) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
