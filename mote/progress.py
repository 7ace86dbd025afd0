"""Text progress bar for long steps (model pull, model load, perplexity runs). Side utility.

Not a pipeline stage: a tiny stand-in for tqdm, which the engine does not depend on. It writes
one line to stderr, redrawn in place with '\\r' on a terminal; when stderr is not a terminal
(CI logs, pytest capture, the browser console) it prints a fresh line only every 10 %, so logs
stay short.

    bar = Progress(total=253_113_024, label="pull gemma-3-270m")
    for chunk in chunks:
        bar.update(len(chunk))
    bar.close()
    # pull gemma-3-270m [##########..........]  126.6/253.1 MB  50.0%  84.2 MB/s

A `Progress` is also a `(done, total) -> None` callable, the callback shape `mote.pull` takes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 20          # characters inside the brackets
MIN_REDRAW_SECONDS = 0.1  # a terminal is redrawn at most this often
LOG_STEP_PERCENT = 10   # a non-terminal gets one line per this many percent


def format_amount(n: float, unit: str) -> str:
    """Human-readable amount: bytes get decimal prefixes, other units are plain counts.

    >>> format_amount(253_113_024, "B"), format_amount(1500, "tok")
    ('253.1 MB', '1500 tok')
    """
    if unit != "B":
        return f"{n:.0f} {unit}".rstrip()
    for prefix in ("", "k", "M", "G"):
        if abs(n) < 1000 or prefix == "G":
            return f"{n:.0f} B" if prefix == "" else f"{n:.1f} {prefix}B"
        n /= 1000
    raise AssertionError("unreachable")


class Progress:
    """A one-line progress bar: done/total, percent and rate, written to `stream` (stderr)."""

    def __init__(self, total: int | None, label: str = "", unit: str = "B",
                 stream: TextIO | None = None) -> None:
        self.total = total          # None: unknown, shows done and rate only
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = -1.0
        self._last_logged_step = -1
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())
        self._closed = False

    def __call__(self, done: int, total: int | None = None) -> None:
        """Callback form: set the absolute amount done (and the total, if it became known)."""
        if total is not None:
            self.total = total
        self.done = done
        self._maybe_draw()

    def update(self, n: int) -> None:
        """Add `n` to the amount done."""
        self.done += n
        self._maybe_draw()

    def line(self) -> str:
        """The current bar as text, without '\\r' or newline."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = format_amount(self.done / elapsed, self.unit) + "/s"
        parts = [self.label] if self.label else []
        if self.total:
            frac = min(max(self.done / self.total, 0.0), 1.0)
            filled = int(frac * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            if self.unit == "B":
                # "126.6/253.1 MB": both numbers in the total's prefix
                unit_s = format_amount(self.total, "B").split()[-1]
                scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit_s]
                parts.append(f"{self.done}/{self.total} B" if unit_s == "B" else
                             f"{self.done / scale:.1f}/{self.total / scale:.1f} {unit_s}")
            else:
                parts.append(f"{self.done}/{self.total} {self.unit}".rstrip())
            parts.append(f"{100 * frac:5.1f}%")
        else:
            parts.append(format_amount(self.done, self.unit))
        parts.append(rate)
        return "  ".join(parts)

    def _maybe_draw(self, final: bool = False) -> None:
        now = time.perf_counter()
        if self._tty:
            if final or now - self._last_draw >= MIN_REDRAW_SECONDS:
                self.stream.write("\r" + self.line())
                self.stream.flush()
                self._last_draw = now
            return
        # not a terminal: one line per LOG_STEP_PERCENT (or only the final line if total unknown)
        if self.total:
            step = int(100 * min(self.done / self.total, 1.0)) // LOG_STEP_PERCENT
            if step > self._last_logged_step or final:
                if step == self._last_logged_step and final:
                    return      # already printed this exact step (typically 100 %)
                self.stream.write(self.line() + "\n")
                self.stream.flush()
                self._last_logged_step = step
        elif final:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar from a terminal line so a log message can be printed; the next update
        redraws it below the message. A no-op when the stream is not a terminal."""
        if self._tty and self._last_draw >= 0:
            self.stream.write("\r" + " " * len(self.line()) + "\r")
            self.stream.flush()
            self._last_draw = -1.0

    def close(self) -> None:
        """Draw the final state and end the line; calling it twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._maybe_draw(final=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
