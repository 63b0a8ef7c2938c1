"""Reading activation-ratio-vs-tokens curves for the Sparsing-Law fits.

Accepted sources (every reader returns a `SparsityCurve` with tokens in billions, ratios as
fractions):

* **TensorBoard logdir** (or one event file): the ratio tag (default
  `sparsity/cett/activation_ratio`, docs/design.md §3.3) paired with `train/tokens` (cumulative token
  count) logged at the same step. Read with TensorBoard's own `EventAccumulator`.
* **JSON** (`.json`, or `.txt` holding JSON like the authors' `data/*.txt`), either
  - columns: `{"token_passed" | "tokens_b" | "tokens": [...], "activation_ratio": [...]}`, or
  - records: `[{"tokens": ..., "activation_ratio": ...}, ...]` (same key choices; extra keys
    such as `step` or `checkpoint` are ignored). `.jsonl` = one record per line.
* **CSV** with a header: a token column (`tokens`, `tokens_b` or `token_passed`) and
  `activation_ratio`.

Token units, by key: `tokens` = raw token count; `tokens_b` = billions; `token_passed` =
billions, except that values above 1e6 are raw counts (the authors' data repo stores counts
under this key, the paper's tables use billions; a run of a million *billion* tokens is not a
thing). Activation ratios: fractions, or percent when any value exceeds 1 (then all are
divided by 100).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from megasparse import tags

DEFAULT_RATIO_TAG = tags.CETT_ACTIVATION_RATIO
TOKENS_TAG = tags.TRAIN_TOKENS
TOKEN_KEYS = ("token_passed", "tokens_b", "tokens")
RATIO_KEY = "activation_ratio"
REFERENCE_CURVES = ("0.1b_relu", "0.1b_silu", "0.8b_relu")
REFERENCE_PREFIX = "ref:"
_RAW_COUNT_THRESHOLD = 1e6


class LawDataError(ValueError):
    """A run that cannot be read; the message names the file, the field and what to do."""


@dataclass
class SparsityCurve:
    """One run's activation ratio (fraction) vs tokens passed (billions), in the order read."""

    name: str
    tokens_b: np.ndarray
    activation_ratio: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)


def ratios_to_fraction(values: Sequence[float], where: str) -> tuple[np.ndarray, bool]:
    """Return (fractions, converted_from_percent). Percent is assumed when any value exceeds 1."""
    arr = np.asarray(values, dtype=float)
    if arr.size and not np.all(np.isfinite(arr)):
        raise LawDataError(f"{where}: activation_ratio has non-finite values")
    if arr.size and (arr.min() < 0 or arr.max() > 100):
        raise LawDataError(
            f"{where}: activation_ratio must lie in [0, 1] (fraction) or [0, 100] (percent); "
            f"found {arr.min():g}..{arr.max():g}"
        )
    if arr.size and arr.max() > 1.0:
        return arr / 100.0, True
    return arr, False


def tokens_to_billions(values: Sequence[float], key: str, where: str) -> np.ndarray:
    """Convert a token column to billions according to its key (see module docstring)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise LawDataError(f"{where}: {key} must be numbers ({e})") from None
    if key == "tokens":
        return arr / 1e9
    if key == "token_passed" and arr.size and np.nanmax(arr) > _RAW_COUNT_THRESHOLD:
        return arr / 1e9
    return arr


def _curve(name, tokens_key, tokens, ratios, where, notes=None) -> SparsityCurve:
    if len(tokens) != len(ratios):
        raise LawDataError(f"{where}: {len(tokens)} {tokens_key} values but {len(ratios)} {RATIO_KEY} values")
    if len(tokens) == 0:
        raise LawDataError(f"{where}: no data points")
    frac, converted = ratios_to_fraction(ratios, where)
    notes = list(notes or [])
    if converted:
        notes.append("activation_ratio given in percent; divided by 100")
    return SparsityCurve(
        name=name,
        tokens_b=tokens_to_billions(tokens, tokens_key, where),
        activation_ratio=frac,
        source=where,
        notes=notes,
    )


def _pick_token_key(keys, where: str) -> str:
    for key in TOKEN_KEYS:
        if key in keys:
            return key
    raise LawDataError(
        f"{where}: no token field; expected one of {', '.join(TOKEN_KEYS)} "
        f"(found {', '.join(map(str, keys)) or 'nothing'})"
    )


def _from_records(records: list, name: str, where: str) -> SparsityCurve:
    if not records:
        raise LawDataError(f"{where}: empty list of records")
    if not all(isinstance(r, dict) for r in records):
        raise LawDataError(f'{where}: a list must hold objects like {{"tokens": ..., "activation_ratio": ...}}')
    key = _pick_token_key(records[0].keys(), where)
    for i, r in enumerate(records):
        if key not in r or RATIO_KEY not in r:
            raise LawDataError(f"{where}: record {i} lacks {key!r} or {RATIO_KEY!r}")
    return _curve(name, key, [r[key] for r in records], [r[RATIO_KEY] for r in records], where)


def read_json_curve(path: str | Path, name: str | None = None) -> SparsityCurve:
    """Read a JSON (columns or records), JSON-lines, or authors' `data/*.txt` file."""
    path = Path(path)
    where, name = str(path), name or path.stem
    try:
        text = path.read_text()
    except OSError as e:
        raise LawDataError(f"{where}: cannot read ({e.strerror})") from None
    try:
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LawDataError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(data, list):
        return _from_records(data, name, where)
    if not isinstance(data, dict):
        raise LawDataError(f"{where}: expected an object with token/{RATIO_KEY} lists or a list of records")
    key = _pick_token_key(data.keys(), where)
    if RATIO_KEY not in data:
        raise LawDataError(f"{where}: missing field {RATIO_KEY!r}")
    tokens, ratios = data[key], data[RATIO_KEY]
    if not isinstance(tokens, list) or not isinstance(ratios, list):
        raise LawDataError(f"{where}: {key!r} and {RATIO_KEY!r} must be lists of numbers")
    return _curve(name, key, tokens, ratios, where)


def read_csv_curve(path: str | Path, name: str | None = None) -> SparsityCurve:
    """Read a CSV with a header naming a token column and `activation_ratio`."""
    path = Path(path)
    where = str(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise LawDataError(f"{where}: cannot read ({e.strerror})") from None
    if not rows:
        raise LawDataError(f"{where}: no data rows (a header line {','.join((TOKEN_KEYS[-1], RATIO_KEY))} is required)")
    cols = [c.strip() for c in rows[0].keys() if c is not None]
    key = _pick_token_key(cols, where)
    if RATIO_KEY not in cols:
        raise LawDataError(f"{where}: missing column {RATIO_KEY!r} (found {', '.join(cols)})")
    rows = [{(k or "").strip(): v for k, v in r.items()} for r in rows]
    try:
        tokens = [float(r[key]) for r in rows]
        ratios = [float(r[RATIO_KEY]) for r in rows]
    except (TypeError, ValueError):
        bad = next(i for i, r in enumerate(rows) if not _is_number(r[key]) or not _is_number(r[RATIO_KEY]))
        raise LawDataError(f"{where}: data row {bad + 1} has a non-numeric {key} or {RATIO_KEY}") from None
    return _curve(name or path.stem, key, tokens, ratios, where)


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _last_by_step(events) -> dict[int, float]:
    """step -> value; when a resumed run rewrote a step, the latest write wins."""
    out: dict[int, tuple[float, float]] = {}
    for e in events:
        if e.step not in out or e.wall_time >= out[e.step][0]:
            out[e.step] = (e.wall_time, e.value)
    return {s: v for s, (_, v) in out.items()}


def read_tensorboard_curve(
    logdir: str | Path, tag: str = DEFAULT_RATIO_TAG, tokens_tag: str = TOKENS_TAG, name: str | None = None
) -> SparsityCurve:
    """Pair `tag` with `tokens_tag` by step from a TensorBoard logdir or event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(logdir)
    where = str(path)
    if path.is_dir() and not any(path.glob("*tfevents*")):
        nested = sorted({str(p.parent) for p in path.rglob("*tfevents*")})
        hint = f"; event files are in subdirectories, pass one of: {', '.join(nested[:5])}" if nested else ""
        raise LawDataError(f"{where}: no TensorBoard event files in this directory{hint}")
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    available = sorted(acc.Tags().get("scalars", []))
    if not available:
        raise LawDataError(f"{where}: the event files hold no scalar summaries")
    for wanted in (tag, tokens_tag):
        if wanted not in available:
            raise LawDataError(
                f"{where}: scalar tag {wanted!r} not found; available tags: {', '.join(available)}"
                + (" (choose one with --tag)" if wanted == tag else "")
            )
    ratio_by_step = _last_by_step(acc.Scalars(tag))
    tokens_by_step = _last_by_step(acc.Scalars(tokens_tag))
    steps = sorted(s for s in ratio_by_step if s in tokens_by_step)
    notes = []
    unmatched = len(ratio_by_step) - len(steps)
    if unmatched:
        notes.append(f"{unmatched} {tag} step(s) had no {tokens_tag} value at the same step; dropped")
    if not steps:
        raise LawDataError(f"{where}: no step has both {tag!r} and {tokens_tag!r}")
    default_name = path.name if path.is_dir() else path.parent.name
    return _curve(
        name or default_name,
        "tokens",
        [tokens_by_step[s] for s in steps],
        [ratio_by_step[s] for s in steps],
        where,
        notes,
    )


def reference_curve_path(name: str) -> Path:
    """Path of a packaged released curve (REFERENCE_CURVES), e.g. '0.1b_relu'."""
    if name not in REFERENCE_CURVES:
        raise LawDataError(f"unknown reference curve {name!r}: use one of {', '.join(REFERENCE_CURVES)}")
    return Path(__file__).resolve().parent.parent / "resources" / "sparsing_law" / f"{name}.json"


def load_reference_curve(name: str) -> SparsityCurve:
    """A released CETT-PPL-1% curve of the paper (docs/sparsing-law.md §6)."""
    curve = read_json_curve(reference_curve_path(name), name=name)
    curve.source = f"{REFERENCE_PREFIX}{name}"
    return curve


def load_curve(run: str | Path, *, tag: str = DEFAULT_RATIO_TAG, tokens_tag: str = TOKENS_TAG) -> SparsityCurve:
    """Read a run: `ref:NAME`, a TensorBoard logdir/event file, or a .json/.jsonl/.txt/.csv file."""
    text = str(run)
    if text.startswith(REFERENCE_PREFIX):
        return load_reference_curve(text[len(REFERENCE_PREFIX) :])
    path = Path(text)
    if not path.exists():
        raise LawDataError(f"{text}: no such file or directory")
    if path.is_dir() or "tfevents" in path.name:
        return read_tensorboard_curve(path, tag=tag, tokens_tag=tokens_tag)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_curve(path)
    if suffix in (".json", ".jsonl", ".txt"):
        return read_json_curve(path)
    raise LawDataError(
        f"{text}: unknown file type {suffix or '(none)'}; give a TensorBoard logdir, .json/.jsonl/.txt (JSON) or .csv"
    )


def read_pairs_json(path: str | Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `[{x_key: .., y_key: ..}, ...]` or `{x_key: [...], y_key: [...]}` (width-depth / scale inputs)."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise LawDataError(f"{where}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise LawDataError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(data, dict):
        data = (
            [dict(zip((x_key, y_key), xy)) for xy in zip(data.get(x_key, []), data.get(y_key, []))]
            if x_key in data and y_key in data
            else None
        )
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        raise LawDataError(
            f'{where}: expected a non-empty list of {{"{x_key}": .., "{y_key}": ..}} records '
            f"or an object with {x_key!r} and {y_key!r} lists"
        )
    for i, r in enumerate(data):
        if not _is_number(r.get(x_key)) or not _is_number(r.get(y_key)):
            raise LawDataError(f"{where}: record {i} needs numeric {x_key!r} and {y_key!r}")
    return (np.array([float(r[x_key]) for r in data]), np.array([float(r[y_key]) for r in data]))
