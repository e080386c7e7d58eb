"""The local deploy target against the real seldon-core-microservice (Seldon's app from .venv-serving):
predictions equal in-process ones, blue/green survives a broken version, bad payloads get 4xx JSON,
request samples and Prometheus metrics are written."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from freestack.errors import DeployError
from freestack.serving.local import deploy_local, describe, stop_local
from freestack.serving.records import Deployments
from freestack.serving.smoke import http_json
from freestack.serving.spec import LocalTarget
from tests.support.serving import in_process, make_version, needs_serving_env

N_FEATURES = 8
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
MAX_ROWS = 50
MAX_BODY = 64 * 1024
KEEP_MODEL_SERVERS = True  # the tests below walk one deployment through its versions (see conftest)

pytestmark = needs_serving_env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Versions v1, v2 and a broken one of model 'm'; v1 deployed (blue)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FREESTACK_MAX_BODY_BYTES", str(MAX_BODY))  # reaches the server through its environment
    mp.setenv("FREESTACK_REQUEST_LOG_FLUSH_SECONDS", "1")
    work = tmp_path_factory.mktemp("serving")
    root = (work / "storage").as_uri()
    uris = {v: make_version(root, "m", v, work, seed=i) for i, v in enumerate(("v1", "v2"), start=1)}
    uris["vbad"] = make_version(root, "m", "vbad", work, seed=9, broken=True)
    local = LocalTarget(
        workers=2, smoke_rows=16, log_sample_rate=1.0, start_timeout_seconds=90, max_batch_rows=MAX_ROWS
    )
    rec = deploy_local(root_uri=root, model="m", name="m", version="v1", version_uri=uris["v1"], local=local)
    yield {"root": root, "uris": uris, "local": local, "record": rec, "work": work}
    mp.undo()
    try:
        stop_local(root, "m", "m")
    except DeployError:
        pass


def _post(url: str, body: bytes, content_type: str | None = "application/json", method: str = "POST"):
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    ctype = resp.getheader("Content-Type", "")
    conn.close()
    return resp.status, ctype, data


def test_served_predictions_equal_in_process(served):
    rec = served["record"]
    assert rec["state"] == "serving" and rec["version"] == "v1" and rec["color"] == "blue"
    assert rec["host"] == "127.0.0.1" and rec["smoke"]["rows"] == 16 and rec["smoke"]["max_abs_diff"] < 1e-5
    rows = np.random.default_rng(7).normal(size=(40, N_FEATURES)) * 4
    code, body = http_json(rec["predict_url"], {"data": {"ndarray": rows.tolist()}})
    assert code == 200, body
    got = np.asarray(body["data"]["ndarray"])
    want = in_process(served["uris"]["v1"], rows)
    assert body["data"]["names"] == ["0", "1", "2"]
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.abs(got - want).max() < 1e-5
    assert body["meta"]["tags"]["model_version"] == "v1"
    # the tensor form and named, reordered columns give the same answer
    code, body = http_json(
        rec["predict_url"], {"data": {"tensor": {"shape": list(rows.shape), "values": rows.ravel().tolist()}}}
    )
    assert (
        code == 200
        and np.abs(np.asarray(body["data"]["tensor"]["values"]).reshape(got.shape) - got).max() < 1e-6
    )
    names = [f"f{i}" for i in range(N_FEATURES)][::-1]
    code, body = http_json(rec["predict_url"], {"data": {"names": names, "ndarray": rows[:, ::-1].tolist()}})
    assert code == 200 and np.abs(np.asarray(body["data"]["ndarray"]) - got).max() < 1e-6
    # jsonData records answer labels and probabilities
    records = [{f"f{i}": float(v) for i, v in enumerate(r)} for r in rows[:3]]
    code, body = http_json(rec["predict_url"], {"jsonData": {"instances": records}})
    assert code == 200
    assert [p["label"] for p in body["jsonData"]["predictions"]] == want[:3].argmax(1).tolist()
    # metadata: the schema behind /api/v1.0/metadata
    code, meta = http_json(f"{rec['url']}/api/v1.0/metadata")
    assert code == 200 and meta["versions"] == ["v1"]
    assert meta["inputs"][0]["schema"]["names"] == [f"f{i}" for i in range(N_FEATURES)]


def test_prediction_lane_and_app_answer_alike_over_http(served):
    """A plain request (answered by the worker's direct prediction) and the same request with a query string
    (which goes through Seldon's app) get the same status, headers and bytes."""
    host, port = served["record"]["url"].split("//", 1)[1].split(":")
    body = json.dumps(
        {"data": {"ndarray": [[0.5] * N_FEATURES]}, "meta": {"puid": "1a2e" * 8}}
    ).encode()  # a request id like the server's
    answers = []
    for path in ("/api/v1.0/predictions", "/api/v1.0/predictions?via=app"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        headers = {k: v for k, v in resp.getheaders() if k != "Date"}
        answers.append((resp.status, headers, resp.read()))
        conn.close()
    assert answers[0] == answers[1]
    assert answers[0][0] == 200 and answers[0][1]["Connection"] == "keep-alive"


def _malformed(n: int) -> list[tuple[str, bytes, str | None]]:
    good_row = [0.5] * n
    J = "application/json"  # noqa: N806

    def j(obj) -> bytes:
        return json.dumps(obj).encode()

    cases: list[tuple[str, bytes, str | None]] = [
        ("text/plain", j({"data": {"ndarray": [good_row]}}), "text/plain"),
        ("xml", b"<data/>", "application/xml"),
        ("no content type", j({"data": {"ndarray": [good_row]}}), None),
        ("octet-stream", j({"data": {"ndarray": [good_row]}}), "application/octet-stream"),
        ("form without json", b"a=1", "application/x-www-form-urlencoded"),
        ("form with bad json", b"json=%7B", "application/x-www-form-urlencoded"),
        ("empty body", b"", J),
        ("whitespace body", b"   ", J),
    ]
    for bad in (
        b"{",
        b'{"data":',
        b"nul",
        b"[1,2",
        b"{'a': 1}",
        b"\xff\xfe\x00",
        b'{"data": {"ndarray": [[1,2,]]}}',
        b"{}}",
        b'{"a" 1}',
        b"NaNx",
    ):
        cases.append((f"invalid json {bad[:12]!r}", bad, J))
    for body in ([], 1, "str", None, True, 2.5):
        cases.append((f"not an object {body!r}", j(body), J))
    for body in (
        {},
        {"meta": {}},
        {"foo": 1},
        {"data": {"ndarray": [good_row]}, "jsonData": {}},
        {"strData": "hello"},
        {"binData": "aGVsbG8="},
        {"data": []},
        {"data": 1},
        {"data": "x"},
        {"data": {}},
        {"data": {"names": []}},
        {"data": {"tftensor": {}}},
        {"data": {"ndarray": [good_row]}, "meta": []},
        {"data": None},
        {"data": None, "meta": {}},
        {"data": {"ndarray": None}},
        {"data": {"tensor": None}},
        {"data": {"names": None, "ndarray": [good_row]}},
        {"strData": None},
        {"jsonData": None},
    ):
        cases.append((f"envelope {json.dumps(body)[:40]}", j(body), J))
    for t in (
        1,
        [],
        {"values": [1.0] * n},
        {"shape": [1, n]},
        {"shape": "1x8", "values": good_row},
        {"shape": [1, -n], "values": good_row},
        {"shape": [1.5, n], "values": good_row},
        {"shape": [1, n], "values": "x"},
        {"shape": [2, n], "values": good_row},
        {"shape": [], "values": []},
        {"shape": [1, n + 1], "values": [0.0] * (n + 1)},
    ):
        cases.append((f"tensor {json.dumps(t)[:40]}", j({"data": {"tensor": t}}), J))
    for arr in (
        1,
        "x",
        {},
        [[1.0, 2.0], [3.0]],
        [good_row, [1.0]],
        [good_row, "row"],
        [[[0.0] * n]],
        [],
        [[]],
        [[None] * n],
        [["a"] * n],
        [[*good_row[:-1], "1"]],
        [[True] * n],
        [[float("nan")] * n],
        [[*good_row[:-1], float("inf")]],
        [[float("-inf"), *good_row[1:]]],
        [[1e39] * n],
        [good_row] * (MAX_ROWS + 1),
    ):
        cases.append((f"ndarray {json.dumps(arr)[:40]}", j({"data": {"ndarray": arr}}), J))
    for width in [w for w in range(0, n + 21) if w != n]:
        cases.append((f"width {width}", j({"data": {"ndarray": [[0.1] * width]}}), J))
    for names in (["f0"], [f"g{i}" for i in range(n)], [1] * n, "f0"):
        cases.append(
            (f"names {json.dumps(names)[:30]}", j({"data": {"names": names, "ndarray": [good_row]}}), J)
        )
    rec = {f"f{i}": 0.5 for i in range(n)}
    for jd in (
        [],
        {"instances": 1},
        {"instances": []},
        {"instances": [1]},
        {"instances": [{"f0": 1.0}]},
        {"instances": [{**rec, "f0": "1"}]},
        {"instances": [{**rec, "f0": None}]},
        {"instances": [{**rec, "f0": True}]},
        {"instances": [rec] * (MAX_ROWS + 1)},
        "x",
    ):
        cases.append((f"jsonData {json.dumps(jd)[:40]}", j({"jsonData": jd}), J))
    cases.append(("body over the size limit", j({"data": {"ndarray": [good_row] * 2000}}), J))
    return cases


def test_malformed_payloads_get_4xx_json(served):
    url = served["record"]["predict_url"]
    cases = _malformed(N_FEATURES)
    assert len(cases) >= 100
    failures = []
    for what, body, ctype in cases:
        status, got_type, data = _post(url, body, ctype)
        ok = 400 <= status < 500 and "json" in got_type
        if ok:
            info = json.loads(data)["status"]
            ok = bool(info.get("info")) and info.get("status") == 1
        if not ok:
            failures.append(f"{what}: HTTP {status} {got_type} {data[:200]!r}")
    assert not failures, "\n".join(failures)
    # a wrong method and an unknown path are 4xx JSON too, not Seldon's 500
    for path, method in (("/api/v1.0/predictions", "GET"), ("/nope", "POST")):
        status, got_type, data = _post(served["record"]["url"] + path, b"{}", "application/json", method)
        assert 400 <= status < 500 and "json" in got_type, (path, status, data)
    # bodies the fast JSON parser refuses reach Python's json and our own checks: NaN gets its own
    # message, an integer beyond 64 bits is still a number
    status, _, data = _post(url, b'{"data": {"ndarray": [[NaN' + b", 0" * (N_FEATURES - 1) + b"]]}}")
    assert status == 400 and "NaN or infinite" in json.loads(data)["status"]["info"], data
    status, _, data = _post(
        url, b'{"data": {"ndarray": [[' + str(2**70).encode() + b", 0" * (N_FEATURES - 1) + b"]]}}"
    )
    assert status == 200 and len(json.loads(data)["data"]["ndarray"][0]) > 0, data
    # and the server still answers
    code, _ = http_json(url, {"data": {"ndarray": [[0.1] * N_FEATURES]}})
    assert code == 200


def _read_response(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """One HTTP response off a raw socket: (status, body, bytes left over for the next one)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {buf[:200]!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = next(
        int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(head.split(b" ", 2)[1]), rest[:length], rest[length:]


def _request(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_keep_alive_worker_pipelining_slow_clients_and_balance(served):
    """The default worker class (freestack): keep-alive, pipelined and chunked requests, a client that
    stalls mid-request holds up no one, and connections are spread across both workers."""
    import psutil

    rec = served["record"]
    port, path = rec["port"], "/api/v1.0/predictions"
    body = json.dumps({"data": {"ndarray": [[0.5] * N_FEATURES]}}).encode()
    want = in_process(served["uris"]["v1"], np.full((1, N_FEATURES), 0.5))
    # a client that sends half a request and then nothing
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for s in stalled:
        s.sendall(_request(path, body)[:40])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # three pipelined requests in one write, then 20 more on the same connection
        s.sendall(_request(path, body) * 3)
        buf = b""
        for _ in range(3):
            status, data, buf = _read_response(s, buf)
            assert status == 200 and np.allclose(json.loads(data)["data"]["ndarray"], want, atol=1e-5)
        t0 = time.monotonic()
        for _ in range(20):
            s.sendall(_request(path, body))
            status, _, buf = _read_response(s, buf)
            assert status == 200
        assert time.monotonic() - t0 < 10  # not waiting on the stalled clients
        # a chunked body
        chunked = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        half = len(body) // 2
        for part in (body[:half], body[half:]):
            chunked += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        s.sendall(chunked + b"0\r\n\r\n")
        status, data, buf = _read_response(s, buf)
        assert status == 200 and np.allclose(json.loads(data)["data"]["ndarray"], want, atol=1e-5)
    for s in stalled:
        s.close()

    # eight keep-alive clients end up on both workers, four each (give or take one); deploy waits
    # for one healthy worker, so the other may still be loading the model: give it a few seconds
    deadline = time.monotonic() + 30
    while True:
        clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(8)]
        for c in clients:
            c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = c.getresponse()
            assert resp.status == 200 and resp.read()
        held: dict[int, int] = {}
        for proc in psutil.Process(int(rec["pid"])).children(recursive=True):
            n = sum(
                1 for c in proc.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"
            )
            if n:
                held[proc.pid] = n
        for c in clients:
            c.close()
        if len(held) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(held) == 2 and sum(held.values()) == 8 and max(held.values()) <= 5, held


def test_broken_version_leaves_the_old_one_serving_then_switch(served):
    root, uris, local = served["root"], served["uris"], served["local"]
    before = Deployments(root, "m").get("m")
    with pytest.raises(DeployError, match="exited with code|not healthy"):
        deploy_local(
            root_uri=root, model="m", name="m", version="vbad", version_uri=uris["vbad"], local=local
        )
    after = Deployments(root, "m").get("m")
    assert after == before  # the record never moved
    assert describe(after)["health"] == "ok"
    code, body = http_json(after["predict_url"], {"data": {"ndarray": [[0.2] * N_FEATURES]}})
    assert code == 200 and body["meta"]["tags"]["model_version"] == "v1"

    rec = deploy_local(root_uri=root, model="m", name="m", version="v2", version_uri=uris["v2"], local=local)
    assert (
        rec["version"] == "v2" and rec["color"] == "green" and rec["server_port"] == before["server_port"] + 1
    )
    assert (rec["url"], rec["port"], rec["holder_pid"]) == (
        before["url"],
        before["port"],
        before["holder_pid"],
    )
    assert rec["previous"]["version"] == "v1"
    assert not describe(before)["alive"]  # the blue server was stopped after the switch
    rows = np.random.default_rng(3).normal(size=(5, N_FEATURES))
    code, body = http_json(rec["predict_url"], {"data": {"ndarray": rows.tolist()}})
    assert (
        code == 200
        and np.abs(np.asarray(body["data"]["ndarray"]) - in_process(uris["v2"], rows)).max() < 1e-5
    )
    again = deploy_local(
        root_uri=root, model="m", name="m", version="v2", version_uri=uris["v2"], local=local
    )
    assert again.get("unchanged") and again["pid"] == rec["pid"]
    served["record"] = rec


def test_metrics_and_request_log(served):
    rec = Deployments(served["root"], "m").get("m")
    for _ in range(5):
        assert http_json(rec["predict_url"], {"data": {"ndarray": [[0.3] * N_FEATURES] * 2}})[0] == 200
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline and "freestack_predictions_total" not in text:
        time.sleep(0.5)
        text = http_json(rec["metrics_url"])[1]
    assert "freestack_predictions_total" in text and "freestack_prediction_rows_total" in text
    logs = Path(rec["request_log_uri"].removeprefix("file://"))
    table = None
    while time.monotonic() < deadline + 15 and (
        table is None or (table["input.f0"] == np.float32(0.3)).sum() < 10
    ):
        time.sleep(0.5)
        files = sorted(logs.glob("requests/ds=*/hour=*/*.parquet"))
        table = pd.concat([pq.read_table(f).to_pandas() for f in files]) if files else None
    assert table is not None, f"no request log under {logs}"
    assert set(table["version"]) <= {"v1", "v2"}
    # each of this test's two-row requests logs rows 0 and 1 (files sort by version, so other tests' requests
    # to v1, one row each, may come first in the table)
    ours = table[table["input.f0"] == np.float32(0.3)].groupby("request_id")["row"].apply(sorted)
    assert len(ours) >= 5 and all(rows == [0, 1] for rows in ours), ours
    assert {f"input.{f}" for f in FEATURES} <= set(table.columns) and (
        table["input.f0"] == np.float32(0.3)
    ).sum() >= 10
    assert table["request_id"].str.len().min() == 32 and len(table["outputs"].iloc[0]) == 3
    assert not list(logs.glob("requests/ds=*/hour=*/.*"))  # no half-written object left behind


def test_feedback_joins_the_request_log(served):
    rec = Deployments(served["root"], "m").get("m")
    code, answer = http_json(rec["predict_url"], {"data": {"ndarray": [[0.1] * N_FEATURES] * 2}})
    request_id = answer["meta"]["tags"]["request_id"]
    code, got = http_json(
        rec["url"] + "/api/v1.0/feedback",
        {"response": answer, "truth": {"data": {"ndarray": [["a"], ["b"]]}}, "reward": 1},
    )
    assert code == 200 and got["meta"]["tags"] == {"request_id": request_id, "labels": 2}, got
    code, bad = http_json(rec["url"] + "/api/v1.0/feedback", {"truth": {"data": {"ndarray": [1]}}})
    assert code == 400 and "names no request" in bad["status"]["info"]
    logs = Path(rec["request_log_uri"].removeprefix("file://"))
    deadline, labels = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        files = sorted(logs.glob("labels/ds=*/hour=*/*.parquet"))
        labels = pd.concat([pq.read_table(f).to_pandas() for f in files]) if files else None
        if labels is not None and request_id in set(labels["request_id"]):
            break
        time.sleep(0.5)
    assert labels is not None, f"no labels under {logs}"
    mine = labels[labels["request_id"] == request_id].sort_values("row")
    assert mine["label"].tolist() == ["a", "b"] and mine["reward"].tolist() == [1.0, 1.0]


def test_cli_status_predict_stop(served, capsys, monkeypatch):
    from freestack.cli import main

    root = served["root"]
    assert main(["serve", "--root", root, "status"]) == 0
    out = capsys.readouterr().out
    assert "m/m: v2 serving" in out and "health: ok" in out
    assert main(["serve", "--root", root, "predict", "m"]) == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "true label" in out
    assert main(["serve", "--root", root, "predict", "m", '{"data": {"ndarray": [[1, 2]]}}']) == 1
    assert "each row must hold 8 features" in capsys.readouterr().out
    rec = Deployments(root, "m").get("m")
    assert main(["serve", "--root", root, "stop", "m"]) == 0
    assert Deployments(root, "m").get("m")["state"] == "stopped"
    assert not describe(rec)["alive"]
