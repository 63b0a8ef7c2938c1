"""One JSON line per measurement, printed and optionally appended to a file: the lab scripts'
output format (the benchmarks' own helper lives in benchmarks/bench_common.py; the lab keeps
this copy so that it imports nothing from another folder)."""

from __future__ import annotations

import json
from typing import Optional


def emit(record: dict, out: Optional[str]) -> None:
    """Prints ``record`` as one JSON line, and appends it to ``out`` too when given."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
