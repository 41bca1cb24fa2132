"""A one-line progress display for the demo's steps."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TextIO

#: A step running longer than this shows a spinner (on a terminal).
SPIN_AFTER = 1.0
_FRAMES = "|/-\\"


class Progress:
    """Prints each step with its duration when it ends.

    On a terminal, a step still running after :data:`SPIN_AFTER` seconds
    shows a spinner and the time so far on its line; elsewhere (a log, CI)
    only the finished lines are written.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        encoding = (getattr(stream, "encoding", None) or "").lower()
        utf8 = encoding.replace("-", "") == "utf8"
        self._ok, self._failed = ("✓", "✗") if utf8 else ("+", "x")
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Show ``text`` while the block runs, then how long it took."""
        start = time.monotonic()
        done = threading.Event()
        spinner = None
        if self.interactive:
            spinner = threading.Thread(
                target=self._spin, args=(text, start, done), daemon=True
            )
            spinner.start()
        mark = self._failed
        try:
            yield
            mark = self._ok
        finally:
            done.set()
            if spinner is not None:
                spinner.join()
            elapsed = time.monotonic() - start
            self._write(f"{mark} {text} ({elapsed:.1f} s)\n")

    def _spin(self, text: str, start: float, done: threading.Event) -> None:
        if done.wait(SPIN_AFTER):
            return
        frame = 0
        while not done.wait(0.1):
            elapsed = time.monotonic() - start
            self._write(f"{_FRAMES[frame % len(_FRAMES)]} {text} {elapsed:.1f} s")
            frame += 1

    def _write(self, line: str) -> None:
        with self._lock:
            if self.interactive:
                line = "\r\x1b[K" + line  # over the spinner's line
            self.stream.write(line)
            self.stream.flush()
