"""The drift tests on the demo's data: in-distribution intervals stay quiet, the shifted digits alert."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freestack.monitor import stats
from freestack.monitor.core import build_reference, judge_version
from freestack.spec import load_spec, spec_file

INTERVALS, ROWS = 20, 300


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    model = LogisticRegression(max_iter=400).fit(d.data, d.target)
    spec = load_spec(spec_file("digits"))
    frame = pd.DataFrame(d.data, columns=[f"px_{i}" for i in range(64)])
    ref = build_reference(
        spec,
        frame,
        [str(c) for c in model.predict(d.data)],
        version="v1",
        source="window",
        metric=("accuracy", 0.97),
    )
    return spec, d, model, ref


def logged(model, X: np.ndarray) -> pd.DataFrame:
    rows = pd.DataFrame(X, columns=[f"input.px_{i}" for i in range(64)])
    rows["prediction"] = [str(c) for c in model.predict(X)]
    rows["request_id"], rows["row"] = [f"r{i}" for i in range(len(X))], 0
    return rows


def shifted(X: np.ndarray, pixels: int = 1) -> np.ndarray:
    images = np.roll(X.reshape(-1, 8, 8), pixels, axis=2)
    images[:, :, :pixels] = 0
    return images.reshape(-1, 64)


def test_in_distribution_intervals_raise_at_most_one_alert(digits):
    spec, d, model, ref = digits
    rng = np.random.default_rng(7)
    verdicts = [
        judge_version(ref, logged(model, d.data[rng.choice(len(d.data), ROWS)]), pd.DataFrame(), spec)
        for _ in range(INTERVALS)
    ]
    alerts = sum(v["status"] == "drift" for v in verdicts)
    worst = max(s["psi"] for v in verdicts for s in v["series"])
    print(
        f"in-distribution: {alerts} alert(s) in {INTERVALS} intervals of {ROWS} rows; largest PSI {worst:.3f}"
    )
    assert alerts <= 1


def test_the_shifted_digits_alert_in_the_first_interval(digits):
    spec, d, model, ref = digits
    rng = np.random.default_rng(8)
    verdict = judge_version(
        ref, logged(model, shifted(d.data[rng.choice(len(d.data), ROWS)])), pd.DataFrame(), spec
    )
    print(f"shifted one pixel: {len(verdict['drifted'])} drifted columns, first {verdict['drifted'][:5]}")
    assert verdict["status"] == "drift" and len(verdict["drifted"]) >= 5


def test_labels_join_by_request_id_and_a_metric_drop_alerts(digits):
    spec, d, model, ref = digits
    rows = logged(model, shifted(d.data[:400]))
    labels = pd.DataFrame(
        {"request_id": rows["request_id"], "row": 0, "label": [str(c) for c in d.target[:400]]}
    )
    got = judge_version(ref, rows, labels, spec)["labels"]
    assert got["rows"] == 400 and got["metric"] == "accuracy" and got["drifted"] and got["value"] < 0.8
    few = judge_version(ref, rows, labels.head(10), spec)["labels"]
    assert few["value"] is None and "50 are needed" in few["note"]


def test_psi_and_category_drift():
    assert stats.psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    ref = stats.category_reference(stats.category_values(["a"] * 50 + ["b"] * 50))
    same = stats.drift(ref, "category", stats.category_values(["a"] * 60 + ["b"] * 40), 0.2, 0.01)
    new = stats.drift(ref, "category", stats.category_values(["c"] * 80 + ["a"] * 20), 0.2, 0.01)
    assert not same["drifted"] and new["drifted"] and new["unseen"] == ["c"]


def test_text_and_image_proxies():
    import io

    from PIL import Image

    vocab = set(stats.vocabulary(["the cat sat", "the dog ran"]))
    got = stats.text_series("t", ["the cat ran", "zebra quokka", None], vocab)
    assert got["t.unknown_rate"].tolist() == [0.0, 1.0, 0.0] and got["t.length"].tolist() == [11, 12, 0]
    buf = io.BytesIO()
    Image.new("L", (4, 3), color=200).save(buf, format="PNG")
    img = stats.image_series("i", [buf.getvalue(), b"not an image", None])
    assert img["i.brightness"][0] == 200 and img["i.width"][0] == 4 and np.isnan(img["i.brightness"][1])
