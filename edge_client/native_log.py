"""Drop known-harmless lines that native libraries print to stderr, and keep everything else.

Two libraries print, on every start, lines that users read as failures:
- TensorFlow 2.14 on a machine without a GPU: three `E ... Unable to register cuDNN/cuFFT/cuBLAS
  factory` lines (a known duplicate-registration message, harmless on a CPU);
- LiteRT: `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` at the first call of the
  first interpreter (XNNPACK is what makes repeated calls fast, so it stays on, except for a
  one-shot fit: `LiteModel.from_bytes`).
Neither library has a switch that silences only these lines (TF_CPP_MIN_LOG_LEVEL=3 would hide
real errors too, LiteRT reads no variable at all), so `filtered_stderr` routes the process's
file descriptor 2 through a pipe for the duration of a block and forwards every line that does
not match, as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator

TENSORFLOW_CPU_NOISE = (
    re.compile(r"Unable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting to register factory for plugin"),
    re.compile(r"TF-TRT Warning: Could not find TensorRT"),
)
LITERT_NOISE = (re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),)


@contextlib.contextmanager
def filtered_stderr(drop: Iterable[re.Pattern[str]]) -> Iterator[None]:
    """Forward what native code writes to fd 2 inside the block, except lines matching `drop`."""
    patterns = tuple(drop)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    forwarder = threading.Thread(target=_forward, args=(read_end, os.dup(saved), patterns), daemon=True,
                                 name="filtered-stderr")
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes our last reference to the pipe's write end
        forwarder.join(timeout=5)
        os.close(saved)


def _forward(read_end: int, target: int, patterns: tuple[re.Pattern[str], ...]) -> None:
    """Copy lines from the pipe to `target` (the real stderr, a descriptor this thread owns)."""
    try:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if not any(p.search(line) for p in patterns):
                    with contextlib.suppress(OSError):
                        os.write(target, raw)
    finally:
        os.close(target)
