"""megasparse fit (tools/fit_sparsing_law.py) end to end: in-process for outputs, as a subprocess for --help,
exit codes and the one-line error contract."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megasparse.cli.fit import main
from megasparse.law.data import DEFAULT_RATIO_TAG, TOKENS_TAG
from megasparse.law.fit import PAPER_TABLE2, law_value

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "fit_sparsing_law.py"
TRUE = dict(alpha=0.5, b=-2.3, c=0.6, A0=0.068)


def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    """A TensorBoard logdir whose CETT activation ratio follows the ReLU law plus noise."""
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path_factory.mktemp("tb") / "relu_run"
    rng = np.random.default_rng(99)
    writer = SummaryWriter(log_dir=str(logdir))
    tokens_per_step = 50_000_000
    for step in range(10, 810, 10):
        writer.add_scalar(TOKENS_TAG, step * tokens_per_step, step)
        if step % 20 == 0:
            D = step * tokens_per_step / 1e9
            writer.add_scalar(DEFAULT_RATIO_TAG, float(law_value("relu", D, TRUE)) + rng.normal(0, 1e-4), step)
    writer.close()
    return logdir


def test_logdir_fit_writes_json_report_plot(tb_run, tmp_path, capsys):
    out_json, out_md, out_png = tmp_path / "f.json", tmp_path / "f.md", tmp_path / "f.png"
    rc = main(
        [
            str(tb_run),
            "ref:0.8b_relu",
            "--law",
            "relu",
            "--json",
            str(out_json),
            "--report",
            str(out_md),
            "--plot",
            str(out_png),
            "--params",
            "1.08e8",
            "7.60e8",
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "relu_run" in table and "0.8b_relu" in table and "A0" in table
    fits = json.loads(out_json.read_text())
    assert [f["run"] for f in fits] == ["relu_run", "0.8b_relu"]
    for f in fits:
        for key in (
            "alpha",
            "b",
            "c",
            "A0",
            "alpha_se",
            "b_se",
            "c_se",
            "A0_se",
            "mae",
            "n_points",
            "skipped",
            "law",
            "warnings",
        ):
            assert key in f
    assert fits[0]["n_points"] == 40 and fits[0]["A0"] == pytest.approx(TRUE["A0"], abs=2e-3)
    assert fits[1]["paper_table2"]["A0"] == PAPER_TABLE2["0.8b_relu"]["A0"]
    assert abs(fits[1]["A0"] - PAPER_TABLE2["0.8b_relu"]["A0"]) < 1e-3
    report = out_md.read_text()
    assert "| 0.8b_relu | relu | 24 | 0 |" in report and "0.0721" in report and "paper A0" in report
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_skip_reproduces_silu(tmp_path, capsys):
    out_json = tmp_path / "s.json"
    assert main(["ref:0.1b_silu", "--law", "silu", "--paper-skip", "--json", str(out_json)]) == 0
    fit = json.loads(out_json.read_text())[0]
    assert fit["skipped"] == 5 and fit["b"] is None
    assert abs(fit["A0"] - PAPER_TABLE2["0.1b_silu"]["A0"]) < 1e-2


def test_skip_first_and_method(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    assert (
        main(["ref:0.1b_relu", "--law", "relu", "--skip-first", "3", "--method", "trf", "--json", str(out_json)]) == 0
    )
    fit = json.loads(out_json.read_text())[0]
    assert fit["skipped"] == 3 and fit["n_points"] == 25 and fit["method"] == "trf" and fit["A0"] >= 0


def test_width_depth_mode(tmp_path, capsys):
    rng = np.random.default_rng(8)
    ratios = [6.0, 14.2, 48.0, 74.7, 113.8, 164.6, 213.3, 281.6, 384.0]
    records = [{"ratio": r, "A0": 100 * (0.06 + 1.7e-4 * min(r, 114)) + rng.normal(0, 0.01)} for r in ratios]
    path = tmp_path / "wd.json"
    path.write_text(json.dumps(records))
    assert main(["--width-depth", str(path)]) == 0
    out = capsys.readouterr().out
    assert "width-depth (9 points)" in out and "plateau" in out


def test_help_has_examples():
    res = _run_tool("--help")
    assert res.returncode == 0
    assert "examples:" in res.stdout and "ref:0.1b_silu" in res.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (["{empty}", "--law", "relu"], "no TensorBoard event files"),
        (["{tb}", "--law", "relu", "--tag", "sparsity/cett/nope"], "available tags: sparsity/cett/activation_ratio"),
        (["{tb}"], "--law relu|silu is required"),
        (["{few}", "--law", "relu"], "too few points for the relu law: 3"),
        (["{few}", "--law", "relu", "--skip-first", "-1"], "--skip-first must be >= 0"),
        (["ref:0.1b_relu", "ref:0.8b_relu", "--law", "relu", "--params", "1", "2", "3"], "one per run (2)"),
        ([], "no RUN given"),
        (["ref:0.1b_relu", "--law", "gelu"], "argument --law: invalid choice: 'gelu'"),
    ],
)
def test_bad_input_is_one_error_line(tb_run, tmp_path, args, match):
    (tmp_path / "empty").mkdir()
    few = tmp_path / "few.csv"
    few.write_text("tokens_b,activation_ratio\n1,0.1\n2,0.09\n4,0.085\n")
    args = [a.format(empty=tmp_path / "empty", tb=tb_run, few=few) for a in args]
    res = _run_tool(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("fit_sparsing_law.py: error: ") and match in lines[0]


def test_law_comes_from_a_ref_name_and_the_plot_has_the_band(tmp_path, capsys):
    out_json = tmp_path / "f.json"
    assert main(["ref:0.1b_relu", "ref:0.1b_silu", "--paper-skip", "--json", str(out_json)]) == 0
    fits = json.loads(out_json.read_text())
    assert [f["law"] for f in fits] == ["relu", "silu"] and fits[1]["skipped"] == 5
    table = capsys.readouterr().out
    assert "A0 95% interval" in table and f"[{fits[0]['A0_ci_low']:.4f}, {fits[0]['A0_ci_high']:.4f}]" in table

    from megasparse.law.data import load_reference_curve
    from megasparse.law.fit import fit_sparsing_law
    from megasparse.law.report import RunFit, fit_figure

    curve = load_reference_curve("0.8b_relu")
    run = RunFit(curve, fit_sparsing_law(curve.tokens_b, curve.activation_ratio, "relu"))
    ax = fit_figure([run]).axes[0]
    (band,) = [p for p in ax.patches if p.get_label().startswith("A0 95% interval")]
    y = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]  # the band's corners, in %
    ci = run.fit.a0_interval
    assert min(y) == pytest.approx(100 * ci.low) and max(y) == pytest.approx(100 * ci.high)
    assert "0.8b_relu" in ax.get_title()


def test_a_law_against_the_trend_is_reported(capsys):
    assert main(["ref:0.1b_relu", "--law", "silu"]) == 0
    out = capsys.readouterr().out
    assert "0.1b_relu: the data fall with the tokens" in out and "did you mean --law relu?" in out
