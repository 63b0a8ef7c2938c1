"""Progress of long work: a tqdm bar with a total and an ETA on a terminal, plain lines elsewhere.

A batch log (SLURM, ``nohup``, a pipe) cannot render a bar: tqdm would write ``\\r`` frames into
it. So :class:`Progress` looks at its stream: on a terminal it draws tqdm's bar, otherwise it
prints one line every ``interval_s`` seconds, such as

    preprocess: 120.5 MB / 450.0 MB (26.8%), 11.9 MB/s, elapsed 10s, ETA 28s

and a closing line when it printed any. ``MEGASPARSE_PROGRESS`` (``auto``, ``bar``, ``lines``,
``off``) overrides the choice, ``MEGASPARSE_PROGRESS_INTERVAL`` the seconds between lines.

Usage::

    with Progress("convert", total=total_bytes, unit="B") as progress:
        for part in parts:
            ...
            progress.update(part_bytes)

or ``for item in Progress.wrap(items, "measure", unit="ckpt"): ...``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Generic, Iterable, Iterator, Optional, TypeVar

MODES = ("auto", "bar", "lines", "off")
DEFAULT_INTERVAL_S = 30.0
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``, ``3d04h``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_amount(value: float, unit: str) -> str:
    """Bytes with a decimal prefix (``12.3 MB``); anything else with thousands separators."""
    if unit == "B":
        for prefix in ("", "k", "M", "G", "T"):
            if abs(value) < 1000 or prefix == "T":
                return f"{value:.0f} B" if prefix == "" else f"{value:.1f} {prefix}B"
            value /= 1000
    return f"{value:,.0f} {unit}"


def _resolve_mode(mode: Optional[str], stream: IO, enabled: bool) -> str:
    if not enabled:
        return "off"
    mode = mode or os.environ.get("MEGASPARSE_PROGRESS", "auto")
    if mode not in MODES:
        mode = "auto"
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"
    return mode


def _interval_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get("MEGASPARSE_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class Progress:
    """Counts work done against an optional total; see the module docstring.

    ``enabled=False`` (a ``--no-progress`` flag) silences it; the amount done is still counted.
    """

    def __init__(
        self,
        desc: str,
        total: Optional[float] = None,
        unit: str = "it",
        enabled: bool = True,
        stream: Optional[IO] = None,
        interval_s: Optional[float] = None,
        mode: Optional[str] = None,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode = _resolve_mode(mode, self.stream, enabled)
        self.interval_s = _interval_from_env() if interval_s is None else interval_s
        self.n = 0.0
        self.postfix = ""
        self.start = time.monotonic()
        self._last_line = self.start
        self._lines_printed = 0
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit == "B",
                file=self.stream,
                dynamic_ncols=True,
            )

    # ------------------------------------------------------------------------------------------
    @classmethod
    def wrap(cls, iterable: Iterable[T], desc: str, total: Optional[float] = None, **kwargs) -> "ProgressIterable[T]":
        """``iterable`` counted one unit per item (``set_postfix`` and ``close`` as tqdm's)."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        return ProgressIterable(iterable, cls(desc, total=total, **kwargs))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last_line >= self.interval_s:
                self._last_line = now
                self._write(self.status_line(now))

    def set_total(self, total: Optional[float]) -> None:
        """A total learnt after the start (e.g. once every input was opened)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        """A short note after the numbers, e.g. ``"1.2M tok/s"``."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def status_line(self, now: Optional[float] = None) -> str:
        """``desc: done / total (pct), rate/s, elapsed, ETA`` (the ``lines`` mode's line)."""
        elapsed = max((now if now is not None else time.monotonic()) - self.start, 1e-9)
        rate = self.n / elapsed
        parts = [f"{self.desc}: {format_amount(self.n, self.unit)}"]
        if self.total:
            parts[0] += f" / {format_amount(self.total, self.unit)} ({100 * min(self.n / self.total, 1):.1f}%)"
        parts.append(f"{format_amount(rate, self.unit)}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration(max(self.total - self.n, 0) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self._lines_printed:
            elapsed = time.monotonic() - self.start
            self._write(f"{self.desc}: done, {format_amount(self.n, self.unit)} in {format_duration(elapsed)}")
        self.mode = "off"

    def _write(self, line: str) -> None:
        self._lines_printed += 1
        print(line, file=self.stream, flush=True)


class ProgressIterable(Generic[T]):
    """What :meth:`Progress.wrap` returns: iterate it like tqdm's wrapper."""

    def __init__(self, iterable: Iterable[T], progress: Progress):
        self.iterable, self.progress = iterable, progress

    def __iter__(self) -> Iterator[T]:
        try:
            for item in self.iterable:
                yield item
                self.progress.update(1)
        finally:
            self.progress.close()

    def set_postfix(self, text: str = "", **values) -> None:
        """``set_postfix(cett="0.1234")`` or ``set_postfix("3 shards")``."""
        self.progress.set_postfix(text or ", ".join(f"{k} {v}" for k, v in values.items()))

    def close(self) -> None:
        self.progress.close()
