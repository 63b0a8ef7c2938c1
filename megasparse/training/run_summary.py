"""Reading a run's TensorBoard scalars back, and the quickstart's table and plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megasparse import tags

LOSS, EVAL_PPL, ACT, TOKENS = tags.TRAIN_LOSS, tags.EVAL_PPL, tags.SPARSITY_ACTIVATION_RATIO, tags.TRAIN_TOKENS
CETT_ACT = tags.CETT_ACTIVATION_RATIO


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a logdir as {tag: [(step, value), ...]} (every event kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(logdir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such TensorBoard logdir")
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    if not series:
        raise FileNotFoundError(f"{path}: holds no TensorBoard scalars; was the run started with logging.dir set?")
    return series


def last(series: dict[str, list[tuple[int, float]]], tag: str) -> Optional[float]:
    values = series.get(tag)
    return values[-1][1] if values else None


@dataclass
class RunSummary:
    name: str
    steps: int
    tokens: float
    final_loss: Optional[float]
    eval_ppl: Optional[float]
    activation_ratio: Optional[float]
    cett_activation_ratio: Optional[float]
    curve: list[tuple[float, float]]  # (tokens, activation ratio)
    cett_curve: list[tuple[float, float]]  # (tokens, CETT-threshold activation ratio)


def summarize(name: str, logdir: str | Path) -> RunSummary:
    s = read_scalars(logdir)
    tokens_at = dict(s.get(TOKENS, []))

    def against_tokens(tag: str) -> list[tuple[float, float]]:
        return [(tokens_at[step], value) for step, value in s.get(tag, []) if step in tokens_at]

    return RunSummary(
        name=name,
        steps=s[LOSS][-1][0] if LOSS in s else 0,
        tokens=last(s, TOKENS) or 0.0,
        final_loss=last(s, LOSS),
        eval_ppl=last(s, EVAL_PPL),
        activation_ratio=last(s, ACT),
        cett_activation_ratio=last(s, CETT_ACT),
        curve=against_tokens(ACT),
        cett_curve=against_tokens(CETT_ACT),
    )


def format_table(runs: list[RunSummary]) -> str:
    def fmt(v: Optional[float], spec: str) -> str:
        return "-" if v is None else format(v, spec)

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    rows = [
        ("run", "steps", "tokens", "final loss", "eval PPL", "activation ratio (σ>0)", "activation ratio (CETT-PPL-1%)")
    ]
    rows += [
        (
            r.name,
            str(r.steps),
            f"{r.tokens:,.0f}",
            fmt(r.final_loss, ".4f"),
            fmt(r.eval_ppl, ".2f"),
            pct(r.activation_ratio),
            pct(r.cett_activation_ratio),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_activation_ratio(runs: list[RunSummary], out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for i, r in enumerate(runs):
        color = f"C{i}"
        if r.curve:
            xs, ys = zip(*r.curve)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, color=color, label=f"{r.name}: σ(gate) > 0")
        if r.cett_curve:
            xs, ys = zip(*r.cett_curve)
            ax.plot(
                xs,
                [100 * y for y in ys],
                marker="s",
                markersize=3,
                linestyle="--",
                color=color,
                label=f"{r.name}: CETT-PPL-1%",
            )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("activation ratio (%)")
    ax.set_title("Activation ratio during training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
