"""Presenting Sparsing-Law fits: a compact text table, a markdown report, and plots."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from megasparse.law.data import SparsityCurve
from megasparse.law.fit import PAPER_TABLE2, LawFit


@dataclass
class RunFit:
    """One run's data together with its fit."""

    curve: SparsityCurve
    fit: LawFit

    @property
    def paper_key(self) -> str | None:
        """Name of the paper's Table 2 row for a released run of the same law, else None."""
        name = self.curve.name.lower()
        row = PAPER_TABLE2.get(name)
        return name if row is not None and row["law"] == self.fit.law else None

    def to_dict(self) -> dict:
        out = {"run": self.curve.name, "source": self.curve.source, **self.fit.to_dict()}
        out["warnings"] = self.curve.notes + out["warnings"]
        if self.paper_key:
            row = PAPER_TABLE2[self.paper_key]
            out["paper_table2"] = {k: row[k] for k in ("alpha", "b", "c", "A0", "skip")}
        return out


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _interval(fit: LawFit) -> str:
    """``[0.0496, 0.0676]``; ``≤``/``≥`` mark an end the data do not bound."""
    ci = fit.a0_interval
    if not fit.ok or ci is None:
        return "–"
    return f"[{'≤' if ci.low_open else ''}{ci.low:.4f}, {'≥' if ci.high_open else ''}{ci.high:.4f}]"


def text_table(results: Sequence[RunFit]) -> str:
    """Fixed-width table for stdout: one line per run."""
    head = ("run", "law", "n", "skip", "alpha", "b", "c", "A0", "A0 95% interval", "A0_se", "MAE", "warn")
    rows = [head]
    for r in results:
        f = r.fit
        p, se = f.params, f.stderr
        rows.append(
            (
                r.curve.name,
                f.law,
                str(f.n_points),
                str(f.skipped),
                _num(p.get("alpha")),
                _num(p.get("b")),
                _num(p.get("c")),
                _num(p.get("A0"), ".4f"),
                _interval(f),
                _num(se.get("A0"), ".2g"),
                _num(f.mae, ".2e"),
                "FAILED" if not f.ok else str(len(f.warnings) + len(r.curve.notes)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def markdown_report(results: Sequence[RunFit], title: str = "Sparsing-Law fits") -> str:
    """Markdown: fitted parameters per run, the paper's Table 2 alongside for released runs, warnings."""
    lines = [
        f"# {title}",
        "",
        "Laws (D = tokens in billions, A = activation ratio as a fraction): "
        "ReLU `A = exp(-c·D^α + b) + A0`; SiLU `A = -c·D^(-α) + A0`. "
        "A0 is the limit activation ratio; it is the robust quantity, α, b, c trade off "
        "against each other.",
        "",
        "A0's interval is the 95% profile-likelihood interval (≤ or ≥: the data do not bound that end).",
        "",
        "| run | law | points | skipped | α | b | c | A0 (± s.e.) | A0 95% interval | MAE | method | paper α "
        "| paper b | paper c | paper A0 | ΔA0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, p = r.fit, r.fit.params
        a0 = f"{_num(p.get('A0'), '.4f')} ± {_num(f.stderr.get('A0'), '.2g')}" if f.ok else "FAILED"
        cells = [
            r.curve.name,
            f.law,
            str(f.n_points),
            str(f.skipped),
            _num(p.get("alpha")),
            _num(p.get("b")),
            _num(p.get("c")),
            a0,
            _interval(f),
            _num(f.mae, ".2e"),
            f.method,
        ]
        if r.paper_key:
            row = PAPER_TABLE2[r.paper_key]
            delta = p["A0"] - row["A0"] if f.ok else math.nan
            cells += [_num(row["alpha"]), _num(row["b"]), _num(row["c"]), _num(row["A0"], ".4f"), _num(delta, "+.5f")]
        else:
            cells += ["", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    released = [r for r in results if r.paper_key]
    if released:
        lines += [
            "",
            "Paper values: Table 2 of arXiv 2411.02335. Points the published fit dropped: "
            + ", ".join(f"{r.paper_key} {_skip_text(PAPER_TABLE2[r.paper_key]['skip'])}" for r in released)
            + ". Compare A0 and its interval; α, b, c trade off against each other.",
        ]
    notes = [
        (r.curve.name, w)
        for r in results
        for w in r.curve.notes + r.fit.warnings + ([r.fit.error] if r.fit.error else [])
    ]
    if notes:
        lines += ["", "## Warnings", ""] + [f"- **{name}**: {w}" for name, w in notes]
    lines += ["", "## Sources", ""] + [f"- {r.curve.name}: `{r.curve.source}`" for r in results]
    return "\n".join(lines) + "\n"


def _skip_text(skip: int | None) -> str:
    return "not reproducible by truncation" if skip is None else ("none" if skip == 0 else f"first {skip}")


def plot_fits(results: Sequence[RunFit], out_png: str | Path, params: Sequence[float] | None = None) -> None:
    """Writes :func:`fit_figure` to ``out_png``."""
    import matplotlib.pyplot as plt

    fig = fit_figure(results, params)
    fig.savefig(str(out_png), dpi=120)
    plt.close(fig)


def fit_figure(results: Sequence[RunFit], params: Sequence[float] | None = None):
    """Data, fitted curve, A0 and its 95% interval (a band) per run, activation ratio in %; with
    `params` (non-embedding parameter count per run) a second panel shows d(1 - A)/dD against the
    data-scale ratio tokens/params. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megasparse.law.width_depth import sparsity_slope_vs_data_ratio

    ncols = 2 if params is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    for i, r in enumerate(results):
        color = f"C{i % 10}"
        D, A = r.curve.tokens_b, r.curve.activation_ratio
        ax.scatter(D, 100 * A, s=12, color=color, label=f"{r.curve.name} data")
        if r.fit.ok:
            pos = D[D > 0]
            grid = np.geomspace(pos.min(), pos.max(), 200) if pos.size else np.array([])
            ax.plot(
                grid,
                100 * r.fit.predict(grid),
                color=color,
                label=f"{r.fit.law} fit, A0={100 * r.fit.params['A0']:.2f}%",
            )
            ax.axhline(100 * r.fit.params["A0"], color=color, ls=":", lw=0.8)
            ci = r.fit.a0_interval
            if ci is not None:
                label = f"A0 95% interval {ci.text()}"
                ax.axhspan(100 * ci.low, 100 * ci.high, color=color, alpha=0.12, lw=0, label=label)
    # The y range follows the data, the limits and the bounded interval ends; an end the data do
    # not bound (0 or 100%) would flatten the curves.
    shown = [100 * v for r in results for v in r.curve.activation_ratio]
    for r in results:
        if r.fit.ok:
            shown.append(100 * r.fit.params["A0"])
            ci = r.fit.a0_interval
            if ci is not None:
                shown += ([] if ci.low_open else [100 * ci.low]) + ([] if ci.high_open else [100 * ci.high])
    if shown:
        pad = 0.08 * (max(shown) - min(shown) or 1.0)
        ax.set_ylim(max(min(shown) - pad, 0.0), min(max(shown) + pad, 100.0))
    ax.set_xlabel("tokens passed (B)")
    ax.set_ylabel("activation ratio (%)")
    names = ", ".join(r.curve.name for r in results[:3]) + (", …" if len(results) > 3 else "")
    laws = " and ".join(sorted({r.fit.law for r in results}))
    ax.set_title(f"Sparsing law ({laws}): {names}", fontsize=9)
    ax.legend(fontsize=7)
    if params is not None:
        ax2 = axes[0][1]
        for i, (r, n) in enumerate(zip(results, params)):
            if not r.fit.ok:
                continue
            ratio_data = r.curve.tokens_b[r.curve.tokens_b > 0] * 1e9 / n
            grid = np.geomspace(ratio_data.min(), ratio_data.max(), 200)
            ax2.plot(grid, sparsity_slope_vs_data_ratio(r.fit, n, grid), color=f"C{i % 10}", label=r.curve.name)
        ax2.axhline(0.0, color="k", lw=0.5)
        ax2.set_xlabel("data-scale ratio (tokens / non-embedding params)")
        ax2.set_ylabel("d(1 - A)/dD (per B tokens)")
        ax2.set_title("sparsity slope (convergence speed)")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig
