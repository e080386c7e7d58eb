"""The MLServer runtime (freestack_server.mlserver.runtime) serves registry versions over the Open Inference
Protocol: real MLServer 1.7.1 processes in .venv-mlserver, spoken to with Triton's official OIP client
(tritonclient, HTTP and gRPC) and with plain HTTP for the payloads a client library would not send."""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from tests.integration.test_serving_mixed import b64, train_version
from tests.integration.test_serving_mixed import in_process as mixed_in_process
from tests.support.images import start_like_image
from tests.support.serving import in_process, make_version
from tests.unit.ml.test_features import KINDS, frame

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-mlserver" / "bin" / "python"
pytestmark = pytest.mark.skipif(
    not PYTHON.exists(), reason="the MLServer environment is missing: run `make mlserver-venv`"
)
MAX_BODY = 200_000


def start(work: Path, name: str, uri: str, log_uri: str = "") -> dict:
    """MLServer started exactly as docker/mlserver.Dockerfile starts it (tests/support/images.py), with
    what a manifest sets: the model's name, its limits and its request log."""
    env = {
        "FREESTACK_MODEL_NAME": name,
        "FREESTACK_MAX_BATCH_ROWS": "64",
        "FREESTACK_SERVER_BATCH_ROWS": "32",
        "FREESTACK_REQUEST_LOG_URI": log_uri,
        "FREESTACK_REQUEST_LOG_RATE": "1.0" if log_uri else "0.0",
        "FREESTACK_HOME": str(work),
        "FREESTACK_MAX_BODY_BYTES": str(MAX_BODY),
        "FREESTACK_REQUEST_LOG_FLUSH_SECONDS": "1",
    }
    server = start_like_image(
        "mlserver", uri, work / f"mlserver-{name}", env=env, ready_path=f"/v2/models/{name}/ready"
    )
    return {
        "proc": server.proc,
        "server": server,
        "http": f"127.0.0.1:{server.port}",
        "grpc": f"127.0.0.1:{server.grpc_port}",
        "metrics": f"127.0.0.1:{server.metrics_port}",
        "name": name,
        "uri": uri,
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("oip")
    root = (work / "storage").as_uri()
    toy = make_version(root, "toy", "v1", work)
    folder, pre = train_version(work, KINDS, "mixed")
    from freestack.registry.core import ModelRegistry

    mixed = ModelRegistry(root, "mixed").register(folder.as_uri(), "v1")
    out = {
        "toy": start(work, "toy", toy, f"{root}/monitoring/toy"),
        "mixed": start(work, "mixed", mixed),
        "root": work / "storage",
    }
    out["mixed"]["pre"] = pre
    yield out
    for s in (out["toy"], out["mixed"]):
        s["proc"].terminate()
        s["proc"].wait(30)


def post(server: dict, body, path: str = "") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{server['http']}/v2/models/{path or server['name']}/infer",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_official_oip_client_reads_health_metadata_and_answers_over_http_and_grpc(servers):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    toy = servers["toy"]
    client = httpclient.InferenceServerClient(toy["http"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("toy")
    meta = client.get_model_metadata("toy")
    assert meta["versions"] == ["v1"] and meta["inputs"][0]["shape"] == [-1, 8]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    rows = np.random.default_rng(3).normal(size=(5, 8)).astype(np.float32)
    want = in_process(toy["uri"], rows)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    got = client.infer("toy", [inp], request_id="client-7", outputs=outputs)
    assert got.get_response()["id"] == "client-7"
    np.testing.assert_allclose(got.as_numpy("probabilities"), want, atol=1e-5)
    assert got.as_numpy("label").astype(str).tolist() == [str(i) for i in want.argmax(1)]
    grpc = grpcclient.InferenceServerClient(toy["grpc"])
    assert grpc.is_model_ready("toy")
    ginp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    ginp.set_data_from_numpy(rows)
    np.testing.assert_allclose(grpc.infer("toy", [ginp]).as_numpy("probabilities"), want, atol=1e-5)


def test_one_tensor_per_feature_and_concurrent_requests_each_get_their_own_answer(servers):
    toy = servers["toy"]
    rows = np.random.default_rng(4).normal(size=(40, 8)).astype(np.float32)
    want = in_process(toy["uri"], rows)
    per_feature = {
        "inputs": [
            {"name": f"f{j}", "datatype": "FP64", "shape": [2], "data": rows[:2, j].tolist()}
            for j in reversed(range(8))
        ]
    }
    code, body = post(toy, per_feature)
    assert code == 200, body
    np.testing.assert_allclose(np.reshape(body["outputs"][0]["data"], (2, 3)), want[:2], atol=1e-5)

    def one(i: int):  # a bad request among them is refused alone
        row = rows[i].tolist() if i % 10 else rows[i].tolist()[:5]
        return i, post(
            toy,
            {
                "id": f"r{i}",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(row)], "data": row}],
            },
        )

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(40)))
    for i, (code, body) in results:
        if i % 10 == 0:
            assert code == 400 and "8 features" in body["error"], body
            continue
        assert code == 200 and body["id"] == f"r{i}", body
        np.testing.assert_allclose(body["outputs"][0]["data"], want[i], atol=1e-5)


@pytest.mark.parametrize(
    "body,status,says",
    [
        (
            {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
            400,
            "takes numbers",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8], "data": [1, 2, 3]}]},
            400,
            "holds 16 values, but its data has 3",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP99", "shape": [1, 8], "data": [0] * 8}]},
            400,
            "datatype",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 8], "data": [1e39] + [0] * 7}]},
            400,
            "infinite",
        ),
        ({"inputz": []}, 400, "inputs: Field required"),
        (b"{not json", 400, "not valid JSON"),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [100, 8], "data": [0.5] * 800}]},
            413,
            "at most 64",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [30000, 8], "data": [0.5] * 240000}]},
            413,
            "bytes",
        ),
    ],
    ids=[
        "wrong-datatype",
        "shape-mismatch",
        "unknown-datatype",
        "overflow",
        "no-inputs",
        "invalid-json",
        "too-many-rows",
        "oversized-body",
    ],
)
def test_bad_v2_payloads_get_4xx_in_the_v2_error_format(servers, body, status, says):
    code, answer = post(servers["toy"], body)
    assert code == status and set(answer) == {"error"} and says in answer["error"], answer


def test_an_oversized_body_is_read_and_dropped_so_the_client_gets_its_413(servers):
    """A client that writes its whole body before it reads (urllib) gets the answer every time, not a broken
    pipe; a chunked body over the limit gets the same answer."""
    import http.client

    rows = 200_000  # 8 MB: far more than the socket buffers, so the client is still writing when refused
    big = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 8], "data": [0.5] * rows * 8}]}
    )
    for _ in range(5):
        code, answer = post(servers["toy"], big.encode())
        assert code == 413 and "bytes" in answer["error"], answer
    host, port = servers["toy"]["http"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (big[i : i + 65536].encode() for i in range(0, len(big), 65536))
    conn.request(
        "POST",
        f"/v2/models/{servers['toy']['name']}/infer",
        body=chunks,
        encode_chunked=True,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    answer = conn.getresponse()
    assert answer.status == 413 and "bytes" in json.loads(answer.read())["error"]
    conn.close()


def test_an_unknown_model_is_404_in_the_v2_error_format(servers):
    code, answer = post(servers["toy"], {"inputs": []}, path="nope")
    assert code == 404 and answer == {"error": "Model nope not found"}


def test_raw_category_text_and_image_values_as_bytes_tensors(servers):
    mixed = servers["mixed"]
    rows = frame(4, 7)
    body = {
        "inputs": [
            {"name": "size", "datatype": "FP32", "shape": [4], "data": rows["size"].tolist()},
            {"name": "colour", "datatype": "BYTES", "shape": [4], "data": rows["colour"].tolist()},
            {"name": "review", "datatype": "BYTES", "shape": [4], "data": rows["review"].tolist()},
            {"name": "photo", "datatype": "BYTES", "shape": [4], "data": [b64(p) for p in rows["photo"]]},
        ]
    }
    code, answer = post(mixed, body)
    assert code == 200, answer
    want = mixed_in_process(mixed, rows)
    np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (4, 2)), want, atol=1e-5)
    assert answer["outputs"][1]["data"] == rows["label"].tolist()
    body["inputs"][3]["data"][1] = b64(b"not an image")
    code, answer = post(mixed, body)
    assert code == 400 and "photo" in answer["error"], answer


def test_requests_are_logged_under_the_answer_id_and_feedback_joins_them(servers):
    toy = servers["toy"]
    rows = np.random.default_rng(5).normal(size=(3, 8)).astype(np.float32)
    code, body = post(
        toy,
        {
            "id": "logged-1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 8], "data": rows.ravel().tolist()}],
        },
    )
    assert code == 200
    truth = {
        "id": "fb",
        "parameters": {"feedback_for": "logged-1"},
        "inputs": [{"name": "truth", "datatype": "BYTES", "shape": [3], "data": ["0", "1", "2"]}],
    }
    code, answer = post(toy, truth)
    assert code == 200 and answer["outputs"][0]["data"] == [3], answer
    folder = servers["root"] / "monitoring" / "toy"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        req = [pq.read_table(f) for f in (folder / "requests").rglob("*.parquet")]
        lab = [pq.read_table(f) for f in (folder / "labels").rglob("*.parquet")]
        if any("logged-1" in t.column("request_id").to_pylist() for t in req) and lab:
            break
        time.sleep(0.5)
    ids = [i for t in req for i in t.column("request_id").to_pylist()]
    assert ids.count("logged-1") == 3
    labels = [
        (r, v)
        for t in lab
        for r, v in zip(t.column("request_id").to_pylist(), t.column("label").to_pylist(), strict=True)
    ]
    assert sorted(v for r, v in labels if r == "logged-1") == ["0", "1", "2"]


def test_every_listener_is_on_127_0_0_1(servers):
    """REST, gRPC (an IPv6 socket bound to the IPv4 loopback address) and metrics."""
    for name in ("toy", "mixed"):
        proc = psutil.Process(servers[name]["proc"].pid)
        procs = [proc, *proc.children(recursive=True)]
        listening = [
            c.laddr for p in procs for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN
        ]
        assert len(listening) >= 3 and {a.ip.removeprefix("::ffff:") for a in listening} == {"127.0.0.1"}, (
            listening
        )
    with urllib.request.urlopen(f"http://{servers['toy']['metrics']}/metrics", timeout=5) as r:
        assert b"model_infer_request_success" in r.read()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
