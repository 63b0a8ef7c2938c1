"""megasparse/progress.py: a bar on a terminal, plain lines in a log, nothing when switched off."""

from __future__ import annotations

import io

from megasparse.progress import Progress, format_amount, format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_lines_with_total_rate_and_eta():
    log = io.StringIO()
    with Progress("convert", total=4_000_000, unit="B", stream=log, interval_s=0) as progress:
        for _ in range(4):
            progress.update(1_000_000)
        progress.set_postfix("3 shards")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("convert: 1.0 MB / 4.0 MB (25.0%), ") and "ETA" in lines[0]
    assert lines[3].startswith("convert: 4.0 MB / 4.0 MB (100.0%), ")
    assert lines[-1].startswith("convert: done, 4.0 MB in ")
    assert len(lines) == 5


def test_lines_are_spaced_by_the_interval():
    log = io.StringIO()
    progress = Progress("measure", total=3, unit="ckpt", stream=log, interval_s=3600)
    for _ in range(3):
        progress.update()
    progress.close()
    assert log.getvalue() == ""  # nothing due within the hour, so no closing line either
    assert progress.n == 3


def test_a_terminal_gets_a_tqdm_bar_and_off_means_silent(monkeypatch):
    term = Terminal()
    for item in Progress.wrap(range(5), "fit", unit="run", stream=term):
        assert item < 5
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()
    silent = io.StringIO()
    with Progress("x", total=2, stream=silent, enabled=False) as progress:
        progress.update(2)
    monkeypatch.setenv("MEGASPARSE_PROGRESS", "off")
    with Progress("y", total=2, stream=silent, interval_s=0) as progress:
        progress.update(2)
    assert silent.getvalue() == ""
    monkeypatch.setenv("MEGASPARSE_PROGRESS", "lines")
    forced = Terminal()
    with Progress("z", total=2, stream=forced, interval_s=0) as progress:
        progress.update(2)
    assert forced.getvalue().startswith("z: 2 it / 2 it (100.0%)")


def test_formats():
    assert format_duration(42) == "42s" and format_duration(185) == "3m05s" and format_duration(7440) == "2h04m"
    assert format_duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert format_amount(999, "B") == "999 B" and format_amount(12_345_678, "B") == "12.3 MB"
    assert format_amount(12345, "doc") == "12,345 doc"
