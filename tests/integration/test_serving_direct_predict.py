"""The model server's direct prediction answers the everyday Seldon request exactly as Seldon's app
does, and passes everything else on to the app. Both run on the same model in the serving environment
(tests/support/serving_direct_predict_check.py): direct prediction on a parsed request, the app through
Flask's test client."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from freestack.serving.launch import serving_python
from tests.support.serving import make_version, needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 8
JSON = {"Content-Type": "application/json"}
ROW = [0.5, -1.0, 2.0, 0.0, 3.5, 1.0, -2.0, 0.25]

pytestmark = needs_serving_env


def _case(
    name: str,
    message,
    *,
    path: str = "/api/v1.0/predictions",
    headers=None,
    query: str = "",
    method: str = "POST",
) -> dict:
    body = message if isinstance(message, str) else json.dumps(message)
    return {
        "name": name,
        "path": path,
        "query": query,
        "method": method,
        "headers": headers or JSON,
        "body": body,
    }


# each answered case carries its own request id (meta.puid): the model uses it, so the bodies are equal bytes
ANSWERED = [
    _case("one row", {"data": {"ndarray": [ROW]}, "meta": {"puid": "r1"}}),
    _case(
        "rows with names",
        {
            "data": {"names": [f"f{i}" for i in range(N_FEATURES)][::-1], "ndarray": [ROW[::-1], ROW[::-1]]},
            "meta": {"puid": "r2"},
        },
    ),
    _case(
        "tensor", {"data": {"tensor": {"shape": [2, N_FEATURES], "values": ROW * 2}}, "meta": {"puid": "r3"}}
    ),
    _case(
        "records",
        {"jsonData": {"instances": [{f"f{i}": v for i, v in enumerate(ROW)}]}, "meta": {"puid": "r4"}},
    ),
    _case(
        "charset",
        {"data": {"ndarray": [ROW]}, "meta": {"puid": "r5"}},
        headers={"Content-Type": "application/json; charset=utf-8"},
    ),
    _case("old path", {"data": {"ndarray": [ROW]}, "meta": {"puid": "r6"}}, path="/predict"),
]
PASSED_ON = [
    _case("query string", {"data": {"ndarray": [ROW]}}, query="x=1"),
    _case(
        "browser origin", {"data": {"ndarray": [ROW]}}, headers={**JSON, "Origin": "http://localhost:3000"}
    ),
    _case("not json", {"data": {"ndarray": [ROW]}}, headers={"Content-Type": "text/plain"}),
    _case("compressed", {"data": {"ndarray": [ROW]}}, headers={**JSON, "Content-Encoding": "gzip"}),
    _case("invalid json", '{"data": {"ndarray": [[1, 2'),
    _case("NaN", '{"data": {"ndarray": [[NaN, 1, 2, 3, 4, 5, 6, 7]]}}'),
    _case("ragged", {"data": {"ndarray": [ROW, ROW[:3]]}}),
    _case("text in rows", {"data": {"ndarray": [["a"] * N_FEATURES]}}),
    _case("wrong width", {"data": {"ndarray": [ROW[:5]]}}),
    _case("two kinds", {"data": {"ndarray": [ROW]}, "jsonData": {}}),
    _case("empty body", ""),
    _case("feedback", {"truth": {"data": {"ndarray": [1]}}}, path="/api/v1.0/feedback"),
    _case("GET", {"data": {"ndarray": [ROW]}}, path="/predict", method="GET"),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("direct")
    uri = make_version((work / "storage").as_uri(), "m", "v1", work, seed=3, n_features=N_FEATURES)
    cases = work / "cases.json"
    cases.write_text(json.dumps(ANSWERED + PASSED_ON))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT / "plugins"), str(ROOT)))
    proc = subprocess.run(
        [
            serving_python(),
            str(ROOT / "tests" / "support" / "serving_direct_predict_check.py"),
            uri,
            str(cases),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {o["name"]: o for o in out}


@pytest.mark.parametrize("name", [c["name"] for c in ANSWERED])
def test_direct_prediction_answers_what_the_app_answers(answers, name):
    got = answers[name]
    assert "direct" in got, f"direct prediction passed {name!r} on to the app"
    direct, app = got["direct"], got["app"]
    assert app["status"] == 200, app["body"]
    assert direct["status"] == "200 OK"
    assert direct["body"] == app["body"]  # the same bytes: same names, values, tags and request path
    assert dict(direct["headers"]) == {
        "Content-Type": app["content_type"],
        "Content-Length": str(len(direct["body"])),
    }
    tags = json.loads(direct["body"])["meta"]["tags"]
    assert tags["model_version"] == "v1" and tags["request_id"].startswith("r")


@pytest.mark.parametrize("name", [c["name"] for c in PASSED_ON])
def test_direct_prediction_passes_everything_else_to_the_app(answers, name):
    got = answers[name]
    assert "direct" not in got, f"direct prediction answered {name!r}: {got.get('direct')}"
    if name not in ("query string", "browser origin", "GET"):  # those the app serves
        assert 400 <= got["app"]["status"] < 500, got["app"]
        assert json.loads(got["app"]["body"])["status"]["info"]
