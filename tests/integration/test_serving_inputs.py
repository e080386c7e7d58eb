"""What the model server takes, on the real server (Seldon's app under gunicorn from .venv-serving,
started the way ``deploy`` starts it):

- text: any Unicode string, the empty one included: ``strData: ""``, ``[[""]]``, ``[[null]]`` and a
  record's ``""`` all answer what the model answers for empty text; a lone surrogate (``"\\ud800"``)
  gets a 400 naming the row and the column, never a 500;
- ``data.ndarray`` rows of a model with several raw-input columns need ``names`` (400 without; swapped
  columns no longer pass by position), while a model of numeric features only takes plain feature
  vectors as before; text in a numeric column (``"40"``) gets a 400;
- the metadata lists the forms answers come in (ndarray, tensor, jsonData), and the server's log
  names the model's columns, not "0 features", for a text model;
- a worker loading the model is not killed by gunicorn's worker timeout, and a server that is not
  healthy in time is reported with the setting to raise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freestack.registry.core import ModelRegistry
from freestack.serving.launch import LocalServer, Slot, server_config, start_server
from freestack.serving.smoke import http_json
from freestack.serving.spec import LocalTarget
from tests.integration.test_serving_mixed import train_version
from tests.support.ports import free_ports
from tests.support.serving import in_process, make_version, needs_serving_env
from tests.unit.ml.test_features import frame

KEEP_MODEL_SERVERS = True
N_PIXELS = 64  # a digits-like model: 64 numeric columns sent as plain feature vectors

pytestmark = needs_serving_env


def shop_frame(n: int, seed: int = 0):
    """Two numeric columns and a category (the label follows the colour; the weight is noise)."""
    rows = frame(n, seed)
    return rows.assign(weight=np.random.default_rng(seed + 100).normal(size=n) * 10)


def _start(name: str, uri: str, **local) -> LocalServer:
    port, metrics_port = free_ports(2)
    cfg = server_config(
        name,
        name,
        "v1",
        Slot("blue", port, metrics_port),
        LocalTarget(workers=1, **local),
        model_uri=uri,
        request_log_uri=None,
    )
    return start_server(cfg, model_env={})


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("inputs")
    root = (work / "storage").as_uri()
    uris = {}
    for name, kinds, make in (
        ("reviews", {"review": "text"}, frame),
        ("shop", {"size": "float", "weight": "float", "colour": "category"}, shop_frame),
    ):
        folder, _ = train_version(work, kinds, name, make)
        uris[name] = ModelRegistry(root, name).register(folder.as_uri(), "v1")
    uris["pixels"] = make_version(root, "pixels", "v1", work, n_features=N_PIXELS)
    started = {name: _start(name, uri) for name, uri in uris.items()}
    try:
        for server in started.values():
            server.wait_ready(120)
        yield {
            name: {"server": s, "url": f"{s.url}/api/v1.0/predictions", "uri": uris[name]}
            for name, s in started.items()
        }
    finally:
        for server in started.values():
            server.stop()


def _log(server: LocalServer) -> str:
    return Path(server.log_path).read_text(errors="replace")


def _probabilities(body: dict) -> list[float]:
    if "jsonData" in body:
        return list(body["jsonData"]["predictions"][0]["probabilities"].values())
    data = body["data"]
    return data["ndarray"][0] if "ndarray" in data else data["tensor"]["values"]


# ---------------------------------------------------------------------------------------------------------
# empty text: one rule


def test_empty_text_is_accepted_in_every_form_and_answers_alike(servers):
    url = servers["reviews"]["url"]
    answers = {}
    for form, payload in (
        ("strData", {"strData": ""}),
        ("ndarray empty", {"data": {"ndarray": [[""]]}}),
        ("ndarray null", {"data": {"ndarray": [[None]]}}),
        ("names", {"data": {"names": ["review"], "ndarray": [[""]]}}),
        ("record", {"jsonData": {"instances": [{"review": ""}]}}),
        ("record null", {"jsonData": {"review": None}}),
    ):
        code, body = http_json(url, payload)
        assert code == 200, (form, body)
        answers[form] = _probabilities(body)
    first = answers["strData"]
    for form, got in answers.items():
        assert got == pytest.approx(first, abs=1e-6), form


@pytest.mark.parametrize(
    "payload",
    [
        {"strData": "\ud800"},
        {"strData": "fine \udfff text"},
        {"data": {"ndarray": [["\ud800"]]}},
        {"data": {"names": ["review"], "ndarray": [["ok"], ["\udc00 then"]]}},
        {"jsonData": {"review": "\ud800"}},
    ],
)
def test_a_lone_surrogate_in_text_gets_400_naming_row_and_column(servers, payload):
    code, body = http_json(servers["reviews"]["url"], payload)
    assert code == 400, body
    info = body["status"]["info"]
    assert "lone surrogate" in info and "review" in info and "row " in info, info


def test_a_lone_surrogate_in_a_category_gets_400(servers):
    record = {"size": 1.0, "weight": 2.0, "colour": "r\ud83ded"}  # half of a pair
    code, body = http_json(servers["shop"]["url"], {"jsonData": {"instances": [record]}})
    assert code == 400 and "row 0, colour: the text holds a lone surrogate" in body["status"]["info"], body
    code, body = http_json(
        servers["shop"]["url"], {"jsonData": {"size": 1.0, "weight": 2.0, "colour": "\U0001f534"}}
    )
    assert code == 200, body  # a whole pair (an emoji) is text like any other: an unseen category


# ---------------------------------------------------------------------------------------------------------
# columns by name, numbers as numbers


def test_several_raw_columns_need_names_and_are_placed_by_them(servers):
    url = servers["shop"]["url"]
    code, body = http_json(url, {"data": {"ndarray": [[0.5, 12.0, "red"]]}})
    assert code == 400, body
    info = body["status"]["info"]
    assert (
        '"data.ndarray" needs "data.names"' in info
        and "size (numeric), weight (numeric), colour (category)" in info
    )
    named = {"data": {"names": ["size", "weight", "colour"], "ndarray": [[0.5, 12.0, "red"]]}}
    swapped = {"data": {"names": ["colour", "weight", "size"], "ndarray": [["red", 12.0, 0.5]]}}
    record = {"jsonData": {"size": 0.5, "weight": 12.0, "colour": "red"}}
    answers = []
    for payload in (named, swapped, record):
        code, body = http_json(url, payload)
        assert code == 200, body
        answers.append(_probabilities(body))
    assert answers[1] == pytest.approx(answers[0], abs=1e-6) and answers[2] == pytest.approx(
        answers[0], abs=1e-6
    )
    crossed = {"data": {"names": ["weight", "size", "colour"], "ndarray": [[0.5, 12.0, "red"]]}}
    code, body = http_json(url, crossed)
    assert code == 200 and _probabilities(body) != pytest.approx(answers[0], abs=1e-6), (
        body
    )  # the names decide


def test_a_number_written_as_text_reads_as_that_number_in_every_form(servers):
    """Seldon turns the numbers of an ndarray row that also holds text into text, so a raw-input model
    reads "12" as 12 whatever the message form; text that is no number gets a 400."""
    url, names = servers["shop"]["url"], ["size", "weight", "colour"]
    answers = []
    for payload in (
        {"jsonData": {"size": 0.5, "weight": 12, "colour": "red"}},
        {"jsonData": {"size": "0.5", "weight": "12", "colour": "red"}},
        {"data": {"names": names, "ndarray": [[0.5, "12", "red"]]}},
    ):
        code, body = http_json(url, payload)
        assert code == 200, body
        answers.append(_probabilities(body))
    assert answers[1] == pytest.approx(answers[0], abs=1e-6) and answers[2] == pytest.approx(
        answers[0], abs=1e-6
    )
    for payload in (
        {"jsonData": {"size": "forty", "weight": 1.0, "colour": "red"}},
        {"data": {"names": names, "ndarray": [[0.5, "nan", "red"]]}},
    ):
        code, body = http_json(url, payload)
        assert code == 400 and "row 0, " in body["status"]["info"], body


def test_one_text_column_and_numeric_feature_vectors_need_no_names(servers):
    code, body = http_json(servers["reviews"]["url"], {"data": {"ndarray": [["love it"], ["awful smell"]]}})
    assert code == 200 and len(body["data"]["ndarray"]) == 2, body
    rows = np.random.default_rng(4).uniform(0, 16, size=(3, N_PIXELS)).round(1)
    code, body = http_json(servers["pixels"]["url"], {"data": {"ndarray": rows.tolist()}})
    assert code == 200, body
    np.testing.assert_allclose(body["data"]["ndarray"], in_process(servers["pixels"]["uri"], rows), atol=1e-5)
    code, body = http_json(servers["pixels"]["url"], {"data": {"ndarray": [[*rows[0].tolist()[:-1], "4"]]}})
    assert code == 400 and "features must be numbers" in body["status"]["info"], body


# ---------------------------------------------------------------------------------------------------------
# metadata and log


def test_metadata_lists_the_forms_answers_come_in(servers):
    base = servers["reviews"]["server"].url
    code, meta = http_json(f"{base}/api/v1.0/metadata")
    assert code == 200, meta
    forms = [o["messagetype"] for o in meta["outputs"]]
    assert forms == ["ndarray", "tensor", "jsonData"], meta
    assert meta["outputs"][0]["schema"] == {"names": ["no", "yes"], "shape": [2]}
    assert "ndarray for data.ndarray" in meta["custom"]["answers"]
    # and the answers do come in those forms
    url = servers["reviews"]["url"]
    for payload, form in (({"data": {"ndarray": [["ok"]]}}, "ndarray"), ({"strData": "ok"}, "tensor")):
        code, body = http_json(url, payload)
        assert code == 200 and form in body["data"] and body["data"]["names"] == ["no", "yes"], body
    code, body = http_json(url, {"jsonData": {"review": "ok"}})
    assert code == 200 and set(body["jsonData"]["predictions"][0]) == {"label", "probabilities"}, body


def test_the_log_names_what_the_model_takes(servers):
    assert "(1 column: review (text), task classification)" in _log(servers["reviews"]["server"])
    assert "(3 columns: 2 numeric, 1 category, task classification)" in _log(servers["shop"]["server"])
    assert f"({N_PIXELS} numeric features, task classification)" in _log(servers["pixels"]["server"])
    assert "(0 features" not in _log(servers["reviews"]["server"])


# ---------------------------------------------------------------------------------------------------------
# timeouts


def test_loading_the_model_is_not_bound_by_the_worker_timeout(servers):
    """A worker timeout of 2 s, shorter than the load (torch, transformers, the tokenizer, the weights, a
    forward pass): the worker loads, is not killed, and the server answers. (Not shorter: a heartbeat
    thread cannot run while an import holds the interpreter, and loading torch's libraries does.)"""
    server = _start("reviews-slow", servers["reviews"]["uri"], timeout_seconds=2)
    try:
        server.wait_ready(90)
        code, body = http_json(f"{server.url}/api/v1.0/predictions", {"strData": "love it"})
        assert code == 200, body
        log = _log(server)
        assert "WORKER TIMEOUT" not in log and log.count("Booting worker") == 1, log[-3000:]
    finally:
        server.stop()
