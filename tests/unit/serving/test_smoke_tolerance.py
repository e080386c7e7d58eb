"""The deploy smoke test's comparison: a regression answer is compared with a tolerance on the target's
scale (a fixed 1e-4 absolute is below float32's resolution for a target in the hundreds of thousands),
classification keeps the exact-class check, and a failure says plainly which row and output differ."""

from __future__ import annotations

import json

import numpy as np
import pytest

from freestack.errors import DeployError
from freestack.serving import smoke


def _serve(monkeypatch, answer) -> None:
    """``smoke_test``'s HTTP call answers ``answer`` (a Seldon response body)."""
    monkeypatch.setattr(smoke, "http_json", lambda url, payload=None, **kw: (200, answer))


def _regression_sample(outputs: list[float], **extra) -> dict:
    n = len(outputs)
    return {
        "task": "regression",
        "features": ["a", "b"],
        "keys": [f"k{i}" for i in range(n)],
        "rows": [[float(i), 1.0] for i in range(n)],
        "outputs": outputs,
        "labels": [o + (-1) ** i * 9_000.0 for i, o in enumerate(outputs)],
        **extra,
    }


PRICES = [251_234.56, 198_765.43, 310_000.12, 275_432.1]


def test_regression_within_float32_resolution_of_a_large_target_passes(monkeypatch):
    # float32 carries ~7 digits: a server computing in another thread layout differs by a few ulps (~0.03)
    served = [[float(np.float32(p) + np.float32(p) * 2e-7)] for p in PRICES]
    _serve(monkeypatch, {"data": {"names": ["price"], "ndarray": served}, "meta": {}})
    checked = smoke.smoke_test("http://x", _regression_sample(PRICES, target="price", target_std=80_000.0))
    assert checked["rows"] == 4 and 0 < checked["max_abs_diff"] < 1.0
    assert checked["tolerance"]["atol"] == pytest.approx(1e-4 * 80_000.0)


def test_regression_tolerance_from_the_labels_when_the_sample_has_no_target_std(monkeypatch):
    served = [float(np.float32(p) * (1 + 3e-7)) for p in PRICES]  # one value per row, as a flat list
    _serve(monkeypatch, {"data": {"names": [], "ndarray": served}, "meta": {}})
    checked = smoke.smoke_test("http://x", _regression_sample(PRICES))
    assert checked["rows"] == 4 and checked["tolerance"]["atol"] > 0.1


def test_regression_answer_off_by_a_real_amount_fails_plainly(monkeypatch):
    served = [[p] for p in PRICES]
    served[2] = [PRICES[2] + 500.0]  # 0.6 % of the target's std: another model, not rounding
    _serve(monkeypatch, {"data": {"names": ["price"], "ndarray": served}, "meta": {}})
    with pytest.raises(DeployError) as err:
        smoke.smoke_test("http://x", _regression_sample(PRICES, target="price", target_std=80_000.0))
    msg = str(err.value)
    for part in ("row 2", "key k2", "price", "310500.12", "310000.12", "tolerance", "8"):
        assert part in msg, msg


def test_regression_answer_named_after_another_output_fails(monkeypatch):
    _serve(monkeypatch, {"data": {"names": ["0", "1"], "ndarray": [[p] for p in PRICES]}, "meta": {}})
    with pytest.raises(DeployError, match=r"names its outputs \['0', '1'\].*target 'price'"):
        smoke.smoke_test("http://x", _regression_sample(PRICES, target="price", target_std=80_000.0))


def _classification_sample() -> dict:
    outputs = [[0.7, 0.2, 0.1], [0.1, 0.45, 0.45 - 1e-3], [0.2, 0.3, 0.5]]
    return {
        "task": "classification",
        "features": ["a"],
        "keys": ["r0", "r1", "r2"],
        "rows": [[0.0], [1.0], [2.0]],
        "outputs": outputs,
        "classes": ["cat", "dog", "eel"],
        "labels": ["cat", "dog", "eel"],
    }


def test_classification_keeps_exact_class_and_probability_checks(monkeypatch):
    sample = _classification_sample()
    ok = [[v + 5e-6 for v in row] for row in sample["outputs"]]
    _serve(monkeypatch, {"data": {"names": sample["classes"], "ndarray": ok}, "meta": {}})
    assert smoke.smoke_test("http://x", sample)["rows"] == 3
    # another class: named plainly
    flipped = [list(r) for r in sample["outputs"]]
    flipped[1] = [0.1, 0.445, 0.455]
    _serve(monkeypatch, {"data": {"names": sample["classes"], "ndarray": flipped}, "meta": {}})
    with pytest.raises(DeployError, match=r"row 1 \(key r1\).*'eel'.*'dog'"):
        smoke.smoke_test("http://x", sample)
    # the same class but a probability off by 1e-3: a probability's tolerance is 1e-4, not the target's scale
    off = [list(r) for r in sample["outputs"]]
    off[0] = [0.701, 0.199, 0.1]
    _serve(monkeypatch, {"data": {"names": sample["classes"], "ndarray": off}, "meta": {}})
    with pytest.raises(DeployError, match=r"row 0 \(key r0\), output 'cat': the server answered 0.701"):
        smoke.smoke_test("http://x", sample)


def test_smoke_sample_carries_the_target_scale(tmp_path):
    """An evaluation's smoke.json has no target scale; the version's preprocessing.json does."""
    folder = tmp_path / "v1"
    (folder / "evaluation").mkdir(parents=True)
    (folder / "evaluation" / "smoke.json").write_text(json.dumps(_regression_sample(PRICES)))
    pre = {
        "task": "regression",
        "features": ["a", "b"],
        "mean": [0, 0],
        "std": [1, 1],
        "classes": [],
        "target": "price",
        "target_mean": 250_000.0,
        "target_std": 80_000.0,
    }
    (folder / "preprocessing.json").write_text(json.dumps(pre))
    (folder / "config.json").write_text(json.dumps({"task": "regression", "n_features": 2}))
    sample = smoke.smoke_sample(folder.as_uri(), 2)
    assert sample["target"] == "price" and sample["target_std"] == 80_000.0 and len(sample["outputs"]) == 2


def test_the_v2_smoke_test_sends_one_tensor_per_column_and_compares_the_same_way(monkeypatch):
    """runtime: mlserver: the evaluation's rows as a V2 request (numbers FP64, raw values BYTES), and the
    ``prediction`` / ``probabilities`` output compared with the same tolerance and class check."""
    sent = {}

    def answer(url, payload=None, **kw):
        sent.update(url=url, payload=payload)
        return 200, {
            "id": payload["id"],
            "outputs": [
                {
                    "name": "prediction",
                    "datatype": "FP32",
                    "shape": [4],
                    "data": [float(np.float32(p)) for p in PRICES],
                }
            ],
        }

    monkeypatch.setattr(smoke, "http_json", answer)
    sample = _regression_sample(PRICES, target="price", target_std=80_000.0)
    sample["rows"] = [[float(i), "red" if i % 2 else "blue"] for i in range(4)]
    checked = smoke.smoke_test_v2("http://x", "houses", sample)
    assert sent["url"] == "http://x/v2/models/houses/infer" and checked["rows"] == 4
    a, b = sent["payload"]["inputs"]
    assert (a["name"], a["datatype"], a["shape"], b["datatype"], b["data"]) == (
        "a",
        "FP64",
        [4],
        "BYTES",
        ["blue", "red", "blue", "red"],
    )
    assert sent["payload"]["id"].startswith(smoke.SMOKE_ID)  # left out of the request log
    monkeypatch.setattr(
        smoke,
        "http_json",
        lambda url, payload=None, **kw: (
            200,
            {"outputs": [{"name": "prediction", "shape": [4], "data": [p + 5_000.0 for p in PRICES]}]},
        ),
    )
    with pytest.raises(DeployError, match="smoke row 0 \\(key k0\\), output 'price'"):
        smoke.smoke_test_v2("http://x", "houses", sample)
