"""Reading Sparsing-Law inputs: TensorBoard logdirs (written with torch's SummaryWriter, read
with TensorBoard's EventAccumulator), JSON/JSON-lines/CSV files, and the packaged released curves."""

import json

import numpy as np
import pytest

from megasparse.law.data import (
    DEFAULT_RATIO_TAG,
    REFERENCE_CURVES,
    TOKENS_TAG,
    LawDataError,
    load_curve,
    load_reference_curve,
    read_pairs_json,
)

# docs/sparsing-law.md §6: tokens (B) : activation ratio (%), rounded to 2 decimals.
SPEC_POINTS = {
    "0.1b_relu": "0.8:10.47; 1.6:9.54; 2.4:9.10; 3.2:8.81; 4.8:8.55; 6.4:8.21; 8.0:8.14; 9.6:7.86; 11.2:7.81; "
    "12.8:7.70; 14.4:7.58; 16.0:7.55; 17.6:7.37; 19.2:7.55; 20.8:7.46; 22.4:7.33; 24.0:7.32; "
    "25.6:7.35; 27.2:7.23; 28.8:7.30; 30.4:7.20; 32.0:7.18; 33.6:7.13; 35.2:7.14; 36.8:7.07; "
    "38.4:7.13; 40.0:7.12; 41.6:7.09",
    "0.1b_silu": "0.8:31.45; 1.6:34.03; 2.4:34.86; 3.2:35.67; 4.5:36.19; 6.4:36.90; 7.7:36.98; 9.6:37.07; "
    "10.9:37.52; 12.8:37.87; 14.1:38.23; 16.0:38.37; 17.3:38.44; 19.2:38.45; 20.5:38.46; "
    "22.4:38.56; 23.7:38.66; 25.6:38.77; 26.9:38.94; 28.8:38.95; 30.1:38.49; 32.0:39.05; "
    "33.3:39.11; 35.2:38.91; 36.5:39.16; 38.4:39.04; 39.7:39.21; 41.6:39.20",
    "0.8b_relu": "11.4:10.00; 22.7:9.72; 34.1:9.47; 45.4:9.28; 56.8:9.12; 68.1:8.91; 79.4:8.80; 90.8:8.62; "
    "102.2:8.52; 113.5:8.39; 124.9:8.30; 136.2:8.18; 147.6:8.10; 158.9:7.99; 170.3:7.91; "
    "181.6:7.83; 193.0:7.74; 204.3:7.75; 215.7:7.70; 227.0:7.66; 238.4:7.62; 249.7:7.56; "
    "261.1:7.55; 272.4:7.53",
}


@pytest.mark.parametrize("name", REFERENCE_CURVES)
def test_reference_curves_match_the_spec_table(name):
    curve = load_reference_curve(name)
    spec = np.array([[float(v) for v in p.split(":")] for p in SPEC_POINTS[name].split(";")])
    assert curve.tokens_b.shape == (spec.shape[0],)
    np.testing.assert_allclose(curve.tokens_b, spec[:, 0], atol=0.051)
    np.testing.assert_allclose(100 * curve.activation_ratio, spec[:, 1], atol=0.0051)
    assert curve.source == f"ref:{name}"
    assert load_curve(f"ref:{name}").tokens_b.size == spec.shape[0]


def _random_curve(n=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.sort(rng.integers(10**8, 5 * 10**10, size=n)).astype(np.int64)
    ratios = rng.uniform(0.05, 0.12, size=n)
    return tokens, ratios


def test_json_authors_format_with_raw_counts(tmp_path):
    tokens, ratios = _random_curve()
    path = tmp_path / "0.1b_relu.txt"  # the authors' data/*.txt: JSON, raw token counts, fractions
    path.write_text(json.dumps({"token_passed": tokens.tolist(), "activation_ratio": ratios.tolist()}))
    curve = load_curve(path)
    assert curve.name == "0.1b_relu"
    np.testing.assert_allclose(curve.tokens_b, tokens / 1e9)
    np.testing.assert_allclose(curve.activation_ratio, ratios)
    assert not curve.notes


def test_json_billions_and_percent(tmp_path):
    tokens, ratios = _random_curve(seed=1)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"token_passed": (tokens / 1e9).tolist(), "activation_ratio": (100 * ratios).tolist()}))
    curve = load_curve(path)
    np.testing.assert_allclose(curve.tokens_b, tokens / 1e9)
    np.testing.assert_allclose(curve.activation_ratio, ratios)
    assert any("percent" in n for n in curve.notes)


def test_json_records_and_jsonl(tmp_path):
    tokens, ratios = _random_curve(seed=2)
    records = [
        {"step": i, "tokens": int(t), "activation_ratio": float(a)} for i, (t, a) in enumerate(zip(tokens, ratios))
    ]
    (tmp_path / "m.json").write_text(json.dumps(records))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "b.json").write_text(
        json.dumps([{"tokens_b": t / 1e9, "activation_ratio": a} for t, a in zip(tokens.tolist(), ratios.tolist())])
    )
    for name in ("m.json", "m.jsonl", "b.json"):
        curve = load_curve(tmp_path / name)
        np.testing.assert_allclose(curve.tokens_b, tokens / 1e9)
        np.testing.assert_allclose(curve.activation_ratio, ratios)


def test_csv(tmp_path):
    tokens, ratios = _random_curve(seed=3)
    path = tmp_path / "run.csv"
    path.write_text("tokens,activation_ratio\n" + "".join(f"{t},{float(a)!r}\n" for t, a in zip(tokens, ratios)))
    curve = load_curve(path)
    np.testing.assert_allclose(curve.tokens_b, tokens / 1e9)
    np.testing.assert_allclose(curve.activation_ratio, ratios)


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("a.json", '{"token_passed": [1, 2]}', "missing field 'activation_ratio'"),
        ("b.json", '{"steps": [1], "activation_ratio": [0.1]}', "no token field"),
        ("c.json", '{"token_passed": [1, 2', "not valid JSON"),
        ("d.json", '{"token_passed": [1, 2], "activation_ratio": [0.1]}', "2 token_passed values but 1"),
        ("e.json", '{"token_passed": [1, 2], "activation_ratio": [0.1, 130]}', r"\[0, 1\].*\[0, 100\]"),
        ("f.json", '{"token_passed": [], "activation_ratio": []}', "no data points"),
        ("g.csv", "tokens,ratio\n1,0.1\n", "missing column 'activation_ratio'"),
        ("h.csv", "tokens,activation_ratio\n1,abc\n", "row 1 has a non-numeric"),
        ("i.yaml", "x: 1", "unknown file type"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LawDataError, match=match) as info:
        load_curve(path)
    assert str(path) in str(info.value)


def test_missing_path_and_unknown_reference(tmp_path):
    with pytest.raises(LawDataError, match="no such file"):
        load_curve(tmp_path / "nope.json")
    with pytest.raises(LawDataError, match="unknown reference curve"):
        load_curve("ref:9b_relu")


def _write_tb(logdir, steps, tokens_per_step, ratio_of_step, extra_tags=()):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    for step in steps:
        writer.add_scalar(TOKENS_TAG, step * tokens_per_step, step)
        writer.add_scalar("train/loss", 3.0 + 1.0 / step, step)
        if step % 2 == 0:  # calibration every other step
            writer.add_scalar(DEFAULT_RATIO_TAG, ratio_of_step(step), step)
        for tag in extra_tags:
            writer.add_scalar(tag, 0.5, step)
    writer.close()


def test_tensorboard_logdir_pairs_tokens_by_step(tmp_path):
    rng = np.random.default_rng(4)
    noise = {s: rng.uniform(-1e-3, 1e-3) for s in range(1, 21)}
    ratio = lambda s: 0.07 + 0.03 / s + noise[s]  # noqa: E731
    _write_tb(tmp_path / "run1", range(1, 21), 327_680, ratio)
    curve = load_curve(tmp_path / "run1")
    steps = np.arange(2, 21, 2)
    assert curve.name == "run1"
    np.testing.assert_allclose(curve.tokens_b, steps * 327_680 / 1e9)
    np.testing.assert_allclose(curve.activation_ratio, [ratio(s) for s in steps], rtol=1e-6)


def test_tensorboard_rewritten_steps_keep_latest(tmp_path):
    # A resumed run rewrites steps 11..20 in a second event file; the later values win.
    _write_tb(tmp_path / "r", range(1, 21), 1000, lambda s: 0.2)
    _write_tb(tmp_path / "r", range(11, 31), 1000, lambda s: 0.1)
    curve = load_curve(tmp_path / "r")
    assert curve.tokens_b.size == 15
    np.testing.assert_allclose(curve.activation_ratio, [0.2] * 5 + [0.1] * 10, rtol=1e-6)


def test_tensorboard_missing_tag_lists_available(tmp_path):
    _write_tb(tmp_path / "r", range(1, 5), 1000, lambda s: 0.1, extra_tags=("sparsity/activation_ratio",))
    with pytest.raises(LawDataError) as info:
        load_curve(tmp_path / "r", tag="sparsity/cett/nonexistent")
    msg = str(info.value)
    assert "'sparsity/cett/nonexistent' not found" in msg
    for tag in (TOKENS_TAG, DEFAULT_RATIO_TAG, "sparsity/activation_ratio", "train/loss"):
        assert tag in msg
    # The other tag works when chosen.
    assert load_curve(tmp_path / "r", tag="sparsity/activation_ratio").tokens_b.size == 4


def test_tensorboard_empty_and_nested_logdirs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LawDataError, match="no TensorBoard event files"):
        load_curve(tmp_path / "empty")
    _write_tb(tmp_path / "parent" / "child", range(1, 5), 1000, lambda s: 0.1)
    with pytest.raises(LawDataError, match="subdirectories.*child"):
        load_curve(tmp_path / "parent")


def test_pairs_json(tmp_path):
    path = tmp_path / "wd.json"
    path.write_text(json.dumps([{"ratio": 48.0, "A0": 0.061}, {"ratio": 114.0, "A0": 0.078}]))
    r, a = read_pairs_json(path, "ratio", "A0")
    np.testing.assert_allclose(r, [48.0, 114.0])
    np.testing.assert_allclose(a, [0.061, 0.078])
    path.write_text(json.dumps([{"ratio": 48.0}]))
    with pytest.raises(LawDataError, match="record 0 needs numeric"):
        read_pairs_json(path, "ratio", "A0")
