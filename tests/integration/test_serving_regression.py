"""A regression model end to end: a tiny network trained on a target in the hundreds of thousands,
evaluated (its smoke sample, as the evaluation writes it), registered, deployed on the real
seldon-core-microservice and asked in every payload form. A regression model answers one value per
row named after its target, never classes; and its learning curves keep R² off the error metrics' axis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from freestack.errors import DeployError
from freestack.ml.models import FreestackNet
from freestack.ml.prep import Preprocessing
from freestack.serving.local import deploy_local, stop_local
from freestack.serving.processes import free_port_block
from freestack.serving.smoke import http_json
from freestack.serving.spec import LocalTarget
from tests.support.serving import needs_serving_env

KEEP_MODEL_SERVERS = True  # the serving tests below share one deployment (see conftest)
FEATURES = [f"x{i}" for i in range(5)]
TARGET = "price"


def train_regression(
    work: Path, *, seed: int = 0, steps: int = 150
) -> tuple[Path, pd.DataFrame, Preprocessing]:
    """A tiny regression network trained as ``freestack.train`` trains one (standardised target, scaling
    buffers in the model), saved with its preprocessing and the evaluation's smoke sample."""
    from freestack.evaluate.measure import smoke_sample

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(FEATURES))) * [1.0, 3.0, 0.5, 10.0, 2.0] + [0.0, 5.0, -1.0, 50.0, 0.0]
    y = 250_000 + 80_000 * np.tanh(x @ np.array([0.5, -0.2, 1.0, 0.03, 0.3])) + rng.normal(0, 5_000, len(x))
    df = pd.DataFrame(x, columns=FEATURES).assign(**{TARGET: y, "id": np.arange(len(x))})
    train, test = df.iloc[:300], df.iloc[300:]
    pre = Preprocessing.fit(train, FEATURES, TARGET, "regression")
    torch.manual_seed(seed)
    net = FreestackNet(
        kind="mlp",
        task="regression",
        n_features=len(FEATURES),
        n_outputs=1,
        hidden=[16],
        features=FEATURES,
        dropout=0.0,
    )
    net.set_scaling(pre.mean, pre.std)
    net.set_target_scaling(pre.target_mean, pre.target_std)
    xt, yt = torch.as_tensor(pre.features_array(train)), torch.as_tensor(pre.target_array(train))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(xt), yt)
        loss.backward()
        opt.step()
    net.eval()
    folder = work / "regression-model"
    net.save_pretrained(folder)
    (folder / "preprocessing.json").write_text(json.dumps(pre.as_dict()))
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "smoke.json").write_text(
        json.dumps(smoke_sample(net, pre, test, "id", TARGET, 16))
    )
    (folder / "lineage.json").write_text(json.dumps({"pipeline": "houses", "model": "houses"}))
    return folder, test, pre


def _in_process(version_uri: str, rows: np.ndarray) -> np.ndarray:
    net = FreestackNet.from_pretrained(version_uri.removeprefix("file://"))
    return net.predict(torch.as_tensor(np.asarray(rows, dtype=np.float32))).numpy()


@pytest.fixture(scope="module")
def regression_served(tmp_path_factory):
    from freestack.registry.core import ModelRegistry

    work = tmp_path_factory.mktemp("regression")
    root = (work / "storage").as_uri()
    folder, test, pre = train_regression(work)
    uri = ModelRegistry(root, "houses").register(folder.as_uri(), "v1")
    local = LocalTarget(
        port=free_port_block(), workers=1, smoke_rows=16, log_sample_rate=0.0, start_timeout_seconds=90
    )
    rec = deploy_local(
        root_uri=root, model="houses", name="houses", version="v1", version_uri=uri, local=local
    )
    yield {"root": root, "uri": uri, "record": rec, "test": test, "pre": pre}
    try:
        stop_local(root, "houses", "houses")
    except DeployError:
        pass


@needs_serving_env
def test_regression_ndarray_and_tensor_answer_one_value_per_row_named_after_the_target(regression_served):
    rec, test = regression_served["record"], regression_served["test"]
    assert rec["state"] == "serving" and rec["smoke"]["rows"] == 16
    # the deploy compared the smoke rows on the target's scale (its std, from the version's preprocessing)
    target_std = regression_served["pre"].target_std
    assert rec["smoke"]["tolerance"]["basis"] == "target std"
    assert rec["smoke"]["tolerance"]["atol"] == pytest.approx(1e-4 * target_std) and target_std > 10_000
    rows = test[FEATURES].to_numpy()[:7]
    want = _in_process(regression_served["uri"], rows)
    code, body = http_json(rec["predict_url"], {"data": {"names": FEATURES, "ndarray": rows.tolist()}})
    assert code == 200, body
    assert body["data"]["names"] == [TARGET]
    got = np.asarray(body["data"]["ndarray"])
    assert got.shape == (7, 1), got
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5)
    code, body = http_json(
        rec["predict_url"], {"data": {"tensor": {"shape": list(rows.shape), "values": rows.ravel().tolist()}}}
    )
    assert code == 200, body
    assert body["data"]["names"] == [TARGET] and body["data"]["tensor"]["shape"] == [7, 1]
    np.testing.assert_allclose(body["data"]["tensor"]["values"], want, rtol=1e-5)


@needs_serving_env
def test_regression_json_data_answers_values(regression_served):
    rec, test = regression_served["record"], regression_served["test"]
    rows = test[FEATURES].to_numpy()[:3]
    want = _in_process(regression_served["uri"], rows)
    records = [dict(zip(FEATURES, map(float, r), strict=True)) for r in rows]
    code, body = http_json(rec["predict_url"], {"jsonData": {"instances": records}})
    assert code == 200, body
    preds = body["jsonData"]["predictions"]
    assert [set(p) for p in preds] == [{"value"}] * 3, preds
    np.testing.assert_allclose([p["value"] for p in preds], want, rtol=1e-5)
    assert body["jsonData"]["model_version"] == "v1"


@needs_serving_env
def test_regression_metadata_outputs_the_target_not_classes(regression_served):
    rec = regression_served["record"]
    code, meta = http_json(f"{rec['url']}/api/v1.0/metadata")
    assert code == 200, meta
    assert meta["custom"]["task"] == "regression"
    assert meta["inputs"][0]["schema"]["names"] == FEATURES
    # an answer comes in its request's form: ndarray, tensor or jsonData records of {"value": v}
    schema = {"names": [TARGET], "shape": [1]}
    assert meta["outputs"] == [
        {"messagetype": "ndarray", "schema": schema},
        {"messagetype": "tensor", "schema": schema},
        {
            "messagetype": "jsonData",
            "schema": {"predictions": "[{value: number}]", "model_version": "string"},
        },
    ]


def test_learning_curves_keep_scores_and_errors_on_separate_axes(monkeypatch):
    """R² (a score near 1) and RMSE/MAE (in the target's units, here ~1e4) must not share a y axis, nor the
    losses; classification's accuracy/F1 are kept off its log-loss axis the same way."""
    import freestack.evaluate.report as evaluation_report

    figures = []
    monkeypatch.setattr(evaluation_report, "png", lambda fig: figures.append(fig) or b"png")

    def shared(fig) -> list[set[str]]:
        return [{ln.get_label() for ln in ax.get_lines()} for ax in fig.axes if ax.get_lines()]

    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.1 / e,
            "val_rmse": 2e4 / e,
            "val_mae": 1.5e4 / e,
            "val_r2": 1 - 1 / e,
            "lr": 1e-3,
            "samples_per_s": 1e5,
        }
        for e in range(1, 6)
    ]
    report = {"task": "regression", "rmse": 1e4, "r2": 0.9, "_points": {"y": [1.0, 2.0], "pred": [1.1, 2.1]}}
    evaluation_report.plots(report, history, None)
    axes = shared(figures[-1])
    plotted = set().union(*axes)
    assert {"val_rmse", "val_mae", "val_r2"} <= plotted, axes
    for labels in axes:
        scales = {("score" if "r2" in lbl else "loss" if "loss" in lbl else "error") for lbl in labels}
        assert len(scales) == 1, f"one y axis holds metrics of different scales: {sorted(labels)}"

    figures.clear()
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.1 / e,
            "val_accuracy": 1 - 1 / (e + 1),
            "val_macro_f1": 1 - 1 / (e + 2),
            "val_log_loss": 1.1 / e,
        }
        for e in range(1, 6)
    ]
    cm = {"labels": ["0", "1"], "matrix": [[3, 1], [0, 4]]}
    per_class = {c: {"precision": 0.9, "recall": 0.8, "f1": 0.85} for c in ("0", "1")}
    evaluation_report.plots(
        {"task": "classification", "accuracy": 0.9, "confusion_matrix": cm, "per_class": per_class},
        history,
        None,
    )
    for labels in shared(figures[-1]):
        scales = {("loss" if "loss" in lbl else "score") for lbl in labels}
        assert len(scales) == 1, f"one y axis holds metrics of different scales: {sorted(labels)}"
