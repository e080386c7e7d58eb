"""The MLServer runtime against hostile and careless clients: real MLServer 1.7.1 processes started through
the production entrypoint (the mlserver image's ``CMD`` and ``ENV``, tests/support/images.py).
The model repository API is closed over REST and gRPC; Triton's official client works with its
defaults (binary tensors); shapes and names are checked against the model's metadata; and a corpus of
malformed requests gets 4xx answers in the V2 error format, never a 5xx, with the server still serving."""

from __future__ import annotations

import json
import random
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

from freestack.serving.launch import health_url
from tests.integration.test_serving_mixed import b64, train_version
from tests.integration.test_serving_mixed import in_process as mixed_in_process
from tests.integration.test_serving_oip import MAX_BODY, PYTHON, post, start
from tests.support.images import start_like_image
from tests.support.serving import in_process, make_version
from tests.support.serving_hostile import TLS_HELLO
from tests.unit.ml.test_features import KINDS, frame

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(), reason="the MLServer environment is missing: run `make mlserver-venv`"
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("oip-hostile")
    root = (work / "storage").as_uri()
    toy = make_version(root, "toy", "v1", work)
    folder, pre = train_version(work, KINDS, "mixed")
    from freestack.registry.core import ModelRegistry

    mixed = ModelRegistry(root, "mixed").register(folder.as_uri(), "v1")
    out = {"toy": start(work, "toy", toy), "mixed": start(work, "mixed", mixed)}
    out["mixed"]["pre"] = pre
    yield out
    for s in (out["toy"], out["mixed"]):
        s["proc"].terminate()
        s["proc"].wait(30)


def raw(server: dict, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a new connection; the answer's status, headers and body."""
    host, port = server["http"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _answer_size(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _answer_size(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(head) + 4 + int(line.split(":", 1)[1])
    return 1 << 62  # no length: read to the end


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A well-formed HTTP/1.1 request that asks the server to close the connection after its answer."""
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT"):
        head["Content-Length"] = str(len(body))
    return (
        f"{method} {path} HTTP/1.1\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
        + b"\r\n"
        + body
    )


def v2_error(status: int, body: bytes) -> str:
    answer = json.loads(body)
    assert set(answer) == {"error"} and isinstance(answer["error"], str), answer
    return answer["error"]


def binary_request(tensors: list[tuple[dict, bytes]], **extra) -> tuple[bytes, int]:
    """A V2 request in the binary tensor extension: (body, JSON header length)."""
    inputs = [{**t, "parameters": {"binary_data_size": len(b)}} for t, b in tensors]
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + b"".join(b for _, b in tensors), len(header)


def texts(array: np.ndarray) -> list[str]:
    """A BYTES output as text (binary answers hold bytes, JSON ones strings)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]


def serves(server: dict) -> None:
    """The model is still loaded and answers."""
    rows = np.random.default_rng(9).normal(size=(2, 8)).astype(np.float32)
    code, body = post(
        server,
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8], "data": rows.ravel().tolist()}]},
    )
    assert code == 200, body
    np.testing.assert_allclose(
        np.reshape(body["outputs"][0]["data"], (2, 3)), in_process(server["uri"], rows), atol=1e-5
    )


# -- 1. the model repository API ---------------------------------------------------------------------------
def test_nobody_can_unload_load_or_list_the_model_over_rest(servers):
    toy = servers["toy"]
    for path in (
        "/v2/repository/models/toy/unload",
        "/v2/repository/models/toy/load",
        "/v2/repository/index",
    ):
        status, headers, body = raw(toy, http("POST", path, b"{}"))
        assert status == 403 and "disabled in freestack deployments" in v2_error(status, body), (path, body)
    serves(toy)


def test_nobody_can_unload_load_or_list_the_model_over_grpc(servers):
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    toy = servers["toy"]
    client = grpcclient.InferenceServerClient(toy["grpc"])
    for call in (
        lambda: client.unload_model("toy"),
        lambda: client.load_model("toy"),
        client.get_model_repository_index,
    ):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert (
            refused.value.status() == "StatusCode.PERMISSION_DENIED" and "disabled" in refused.value.message()
        )
    with grpc.insecure_channel(toy["grpc"]) as channel:  # MLServer's older service of the same methods
        unload = channel.unary_unary(
            "/inference.model_repository.ModelRepositoryService/RepositoryModelUnload"
        )
        with pytest.raises(grpc.RpcError) as refused:
            unload(b"\x12\x03toy", timeout=10)  # RepositoryModelUnloadRequest(model_name="toy")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert client.is_model_ready("toy")
    serves(toy)


def test_a_deployment_whose_model_is_gone_reads_down(servers):
    """The health check of runtime mlserver is the model's readiness: the server's own says ready with no
    model loaded."""
    url = f"http://{servers['toy']['http']}"
    assert health_url(url, "mlserver", "toy") == f"{url}/v2/models/toy/ready"
    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(health_url(url, "mlserver", "gone"), timeout=5)
    assert gone.value.code == 404


def test_the_readiness_of_an_unknown_model_over_grpc_is_not_found(servers):
    """As REST answers 404: NOT_FOUND naming the model (MLServer's own ModelReady answers UNKNOWN, with the
    exception's traceback in the server's log)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    toy = servers["toy"]
    client = grpcclient.InferenceServerClient(toy["grpc"])
    with pytest.raises(InferenceServerException) as unknown:
        client.is_model_ready("gone")
    assert unknown.value.status() == "StatusCode.NOT_FOUND", unknown.value
    assert unknown.value.message().startswith("Model gone ") and unknown.value.message().endswith(
        " not found"
    )
    assert "ModelNotFound" not in toy["server"].log()
    assert client.is_model_ready("toy")


def test_without_freestack_model_name_the_image_serves_the_model_its_uri_names(tmp_path):
    """docker/mlserver.Dockerfile started with FREESTACK_MODEL_URI alone (the compose stack's alias URI):
    the model is served under its registry name, not as "model"."""
    from freestack.registry.core import ModelRegistry

    root = (tmp_path / "storage").as_uri()
    make_version(root, "digits", "v1", tmp_path)
    ModelRegistry(root, "digits").promote("v1")
    server = start_like_image(
        "mlserver",
        f"{root}/registry/digits@production",
        tmp_path / "mlserver",
        env={"FREESTACK_HOME": str(tmp_path)},
        ready_path="/v2/models/digits/ready",
    )
    try:
        with urllib.request.urlopen(f"{server.url}/v2/models/digits", timeout=10) as r:
            meta = json.loads(r.read())
        assert meta["name"] == "digits" and meta["versions"] == ["v1"], meta
        with pytest.raises(urllib.error.HTTPError) as unnamed:
            urllib.request.urlopen(f"{server.url}/v2/models/model/ready", timeout=10)
        assert unnamed.value.code == 404
    finally:
        server.stop()


# -- 2. the official client's defaults: binary tensors ---------------------------------------------------
def test_the_official_client_with_its_defaults_answers_as_json_requests_do(servers):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    toy = servers["toy"]
    rows = np.random.default_rng(11).normal(size=(6, 8)).astype(np.float32)
    code, body = post(
        toy,
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [6, 8], "data": rows.ravel().tolist()}]},
    )
    assert code == 200, body
    want, labels = np.reshape(body["outputs"][0]["data"], (6, 3)), body["outputs"][1]["data"]
    np.testing.assert_allclose(want, in_process(toy["uri"], rows), atol=1e-5)
    client = httpclient.InferenceServerClient(toy["http"])
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)  # binary_data=True
    for outputs in (
        None,
        [httpclient.InferRequestedOutput("probabilities"), httpclient.InferRequestedOutput("label")],
    ):
        got = client.infer("toy", [inp], request_id="bin-1", outputs=outputs)
        assert got.get_response()["id"] == "bin-1"
        assert all(
            "binary_data_size" in o["parameters"] for o in got.get_response()["outputs"]
        )  # answered binary
        np.testing.assert_allclose(got.as_numpy("probabilities"), want, atol=1e-6)
        assert texts(got.as_numpy("label")) == labels
    for dtype, datatype in ((np.float64, "FP64"), (np.int32, "INT32")):  # other numeric datatypes in binary
        ints = np.round(rows).astype(dtype)
        inp2 = httpclient.InferInput("input", list(rows.shape), datatype)
        inp2.set_data_from_numpy(ints)
        np.testing.assert_allclose(
            client.infer("toy", [inp2]).as_numpy("probabilities"),
            in_process(toy["uri"], ints.astype(np.float32)),
            atol=1e-5,
        )
    grpc = grpcclient.InferenceServerClient(toy["grpc"])
    ginp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    ginp.set_data_from_numpy(rows)  # raw_input_contents
    got = grpc.infer("toy", [ginp])
    np.testing.assert_allclose(got.as_numpy("probabilities"), want, atol=1e-6)
    assert texts(got.as_numpy("label")) == labels


def test_bytes_tensors_in_binary_text_categories_and_raw_image_files(servers):
    """BYTES elements are length-prefixed; an image's raw file bytes reach the model as base64."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    mixed = servers["mixed"]
    rows = frame(4, 8)
    want = mixed_in_process(mixed, rows)
    columns = {
        "size": rows["size"].to_numpy(np.float32),
        "colour": np.array(rows["colour"].tolist(), dtype=object),
        "review": np.array(rows["review"].tolist(), dtype=object),
        "photo": np.array(list(rows["photo"]), dtype=object),
    }
    json_body = {
        "inputs": [
            {
                "name": n,
                "datatype": "FP32" if n == "size" else "BYTES",
                "shape": [4],
                "data": [b64(p) for p in v] if n == "photo" else v.tolist(),
            }
            for n, v in columns.items()
        ]
    }
    code, body = post(mixed, json_body)
    assert code == 200, body
    for module in (httpclient, grpcclient):
        client = module.InferenceServerClient(mixed["http" if module is httpclient else "grpc"])
        inputs = []
        for name, values in columns.items():
            inputs.append(module.InferInput(name, [4], "FP32" if name == "size" else "BYTES"))
            inputs[-1].set_data_from_numpy(values)
        got = client.infer("mixed", inputs)
        np.testing.assert_allclose(
            got.as_numpy("probabilities"), np.reshape(body["outputs"][0]["data"], (4, 2)), atol=1e-6
        )
        np.testing.assert_allclose(got.as_numpy("probabilities"), want, atol=1e-5)
        assert texts(got.as_numpy("label")) == body["outputs"][1]["data"], module.__name__


def test_a_json_request_may_ask_for_binary_outputs(servers):
    toy = servers["toy"]
    rows = np.random.default_rng(12).normal(size=(2, 8)).astype(np.float32)
    request = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8], "data": rows.ravel().tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
    }
    status, headers, body = raw(toy, http("POST", "/v2/models/toy/infer", json.dumps(request).encode()))
    assert status == 200 and headers["content-type"] == "application/octet-stream", body[:300]
    n = int(headers["inference-header-content-length"])
    answer = json.loads(body[:n])
    probabilities, label = answer["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 2 * 3 * 4 and "data" not in probabilities
    np.testing.assert_allclose(
        np.frombuffer(body[n:], "<f4").reshape(2, 3), in_process(toy["uri"], rows), atol=1e-5
    )
    assert len(label["data"]) == 2  # not asked for in binary: JSON


# -- 3. shapes and names against the metadata ------------------------------------------------------------
@pytest.mark.parametrize(
    "inp,says",
    [
        (
            {"name": "input", "datatype": "FP32", "shape": [8], "data": [0.5] * 8},
            "[8]; the model takes [rows, 8]",
        ),
        (
            {"name": "input", "datatype": "FP32", "shape": [-1, 8], "data": [0.5] * 8},
            "[-1, 8]: a request's dimensions",
        ),
        (
            {"name": "input", "datatype": "FP32", "shape": [1, -8], "data": [0.5] * 8},
            "[1, -8]: a request's dimensions",
        ),
        (
            {"name": "input", "datatype": "FP32", "shape": [1, 8, 1], "data": [0.5] * 8},
            "[1, 8, 1]; the model takes [rows, 8]",
        ),
        (
            {"name": "input", "datatype": "FP32", "shape": [3, 8], "data": [0.5] * 8},
            "[3, 8] holds 24 values, but its data has 8",
        ),
        (
            {"name": "nope", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8},
            "'nope' is not one this model takes",
        ),
    ],
    ids=["flat", "minus-one", "negative", "3-d", "count", "unknown-name"],
)
def test_shapes_and_names_are_checked_against_the_metadata(servers, inp, says):
    code, answer = post(servers["toy"], {"inputs": [inp]})
    assert code == 400 and says in answer["error"] and "[rows, 8]" in answer["error"], answer
    assert repr(inp["name"]) in answer["error"]


def test_a_per_feature_tensor_with_a_negative_shape_is_refused(servers):
    body = {"inputs": [{"name": f"f{j}", "datatype": "FP64", "shape": [-1], "data": [0.5]} for j in range(8)]}
    code, answer = post(servers["toy"], body)
    assert code == 400 and "'f0' has shape [-1]" in answer["error"] and "[rows]" in answer["error"], answer


@pytest.mark.parametrize(
    "request_,status,says",
    [
        (http("GET", "/v2/nowhere"), 404, "no such V2 endpoint"),
        (http("POST", "/v2/models/..%2f..%2fetc/infer", b"{}"), 404, "no such V2 endpoint"),
        (http("GET", "/v2/models/toy/infer"), 405, "takes POST"),
        (http("DELETE", "/v2/models/toy"), 405, "takes GET"),
        (http("GET", "/v2/health/ready", headers={"X-Big": "a" * 100_000}), 431, "at most 16384"),
    ],
    ids=["unknown-route", "traversal", "get-infer", "delete-model", "100kb-header"],
)
def test_routing_refusals_are_in_the_v2_error_format(servers, request_, status, says):
    got, _, body = raw(servers["toy"], request_)
    assert got == status and says in v2_error(got, body), body


# -- the hostile corpus ----------------------------------------------------------------------------------
def _infer(body: bytes | dict, model: str = "toy", headers: dict[str, str] | None = None) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", f"/v2/models/{model}/infer", data, headers)


def _tensor(**kw) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8, **kw}]}


def _binary(
    tensors: list[tuple[dict, bytes]], *, header_length: int | None = None, tail: bytes = b"", cut: int = 0
) -> bytes:
    """A binary request; ``cut``: that many bytes fewer in the body than its sizes say (negative: more)."""
    body, n = binary_request(tensors)
    body = body[: len(body) - cut] if cut > 0 else body
    if cut < 0:  # the last input claims bytes the body does not have
        header = json.loads(body[:n])
        header["inputs"][-1]["parameters"]["binary_data_size"] = -cut
        body, n = json.dumps(header).encode() + b"".join(b for _, b in tensors), len(json.dumps(header))
    return _infer(
        body + tail,
        headers={"Inference-Header-Content-Length": str(n if header_length is None else header_length)},
    )


ROW = np.full(8, 0.5, dtype="<f4").tobytes()
FP32 = {"name": "input", "datatype": "FP32", "shape": [1, 8]}
#: the malformed requests uvicorn's HTTP parser refuses before any application code runs; uvicorn answers
#: them 400 "Invalid HTTP request received." in plain text, the launcher's protocol
#: (oip_server.JsonBadRequest) in the V2 error format like every other refusal
PARSER = {
    "random-bytes": random.Random(7).randbytes(64),
    "nul-bytes": b"\x00\x01\x02\x03",
    "tls-client-hello": TLS_HELLO,
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "header-without-colon": b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "bad-chunk-size": b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "bad-content-length": b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n{}",
}
CORPUS = {
    "invalid-json": _infer(b"{not json"),
    "empty-body": _infer(b""),
    "json-array": _infer(b"[]"),
    "nan-literal": _infer(
        b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [NaN, 1, 1, 1, 1, 1, 1, 1]}]}'
    ),
    "inputs-not-a-list": _infer({"inputs": "x"}),
    "input-missing-fields": _infer({"inputs": [{"name": 1}]}),
    "shape-not-a-list": _infer(_tensor(shape="x")),
    "shape-of-strings": _infer(_tensor(shape=["a", "b"])),
    "unknown-datatype": _infer(_tensor(datatype="FP99")),
    "bytes-to-a-numeric-model": _infer(_tensor(datatype="BYTES", data=["x"] * 8)),
    "strings-as-fp32": _infer(_tensor(data=["a"] * 8)),
    "flat-shape": _infer(_tensor(shape=[8])),
    "minus-one-shape": _infer(_tensor(shape=[-1, 8])),
    "negative-shape": _infer(_tensor(shape=[1, -8])),
    "three-d-shape": _infer(_tensor(shape=[1, 8, 1])),
    "count-mismatch": _infer(_tensor(shape=[2, 8])),
    "too-few-features": _infer(_tensor(shape=[1, 5], data=[0.5] * 5)),
    "ragged-data": _infer(_tensor(shape=[2, 8], data=[[0.5] * 8, [0.5] * 3])),
    "unknown-input": _infer(_tensor(name="nope")),
    "no-inputs": _infer({"inputs": []}),
    "overflow": _infer(_tensor(datatype="FP64", data=[1e39] + [0] * 7)),
    "too-many-rows": _infer(_tensor(shape=[100, 8], data=[0.5] * 800)),
    "over-max-body": _infer(b'{"inputs": [], "pad": "' + b"x" * (MAX_BODY + 10) + b'"}'),
    "duplicate-features": _infer(
        {"inputs": [{"name": "f0", "datatype": "FP64", "shape": [1], "data": [1]}] * 2}
    ),
    "unknown-and-missing-features": _infer(
        {
            "inputs": [
                {"name": "f0", "datatype": "FP64", "shape": [1], "data": [1]},
                {"name": "zz", "datatype": "FP64", "shape": [1], "data": [1]},
            ]
        }
    ),
    "unknown-model": _infer(_tensor(), model="nope"),
    "traversal-encoded-slashes": _infer(_tensor(), model="..%2f..%2fetc"),
    "traversal-dots": _infer(_tensor(), model="%2e%2e"),
    "traversal-get": http("GET", "/v2/models/toy/../../etc/passwd"),
    "get-infer": http("GET", "/v2/models/toy/infer"),
    "delete-model": http("DELETE", "/v2/models/toy"),
    "put-health": http("PUT", "/v2/health/ready", b"{}"),
    "post-openai-health": http("POST", "/health", b"{}"),
    "unknown-route": http("GET", "/v2/nowhere"),
    "root": http("GET", "/"),
    "repository-unload": http("POST", "/v2/repository/models/toy/unload", b"{}"),
    "repository-load": http("POST", "/v2/repository/models/toy/load", b"{}"),
    "repository-index": http("POST", "/v2/repository/index", b"{}"),
    "huge-header": http("GET", "/v2/health/ready", headers={"X-Big": "a" * 100_000}),
    "binary-length-not-a-number": _infer(b"{}", headers={"Inference-Header-Content-Length": "ten"}),
    "binary-length-past-the-body": _binary([(FP32, ROW)], header_length=10_000),
    "binary-header-not-json": _binary([(FP32, ROW)], header_length=5),
    "binary-truncated-body": _binary([(FP32, ROW)], cut=8),
    "binary-size-past-the-body": _binary([(FP32, ROW), ({**FP32, "name": "f0", "shape": [1]}, b"")], cut=-8),
    "binary-bytes-left-over": _binary([(FP32, ROW)], tail=b"\0" * 12),
    "binary-size-not-whole-values": _binary([(FP32, ROW[:30])]),
    "binary-size-not-the-shape": _binary([({**FP32, "shape": [2, 8]}, ROW)]),
    "binary-unknown-datatype": _binary([({**FP32, "datatype": "FP99"}, ROW)]),
    "binary-bytes-cut-prefix": _binary([({"name": "input", "datatype": "BYTES", "shape": [1]}, b"\x05\x00")]),
    "binary-bytes-cut-element": _binary(
        [({"name": "input", "datatype": "BYTES", "shape": [1]}, b"\x09\x00\x00\x00abc")]
    ),
    "binary-nan": _binary([(FP32, np.full(8, np.nan, dtype="<f4").tobytes())]),
    "binary-flat-shape": _binary([({**FP32, "shape": [8]}, ROW)]),
    **PARSER,
}


def test_a_hostile_corpus_gets_4xx_v2_errors_and_the_server_keeps_serving(servers, capsys):
    toy = servers["toy"]
    answers = {name: raw(toy, request) for name, request in CORPUS.items()}
    plain = {
        n for n, (_, h, _) in answers.items() if not h.get("content-type", "").startswith("application/json")
    }
    server_errors = {n: (s, b[:200]) for n, (s, _, b) in answers.items() if s >= 500}
    assert not server_errors, server_errors
    assert all(400 <= s < 500 for s, _, _ in answers.values()), {n: s for n, (s, _, _) in answers.items()}
    assert not plain, plain
    for name, (status, headers, body) in answers.items():
        error = v2_error(status, body)
        if name in PARSER:  # answered by the launcher's uvicorn protocol, which then closes the connection
            assert status == 400 and "not HTTP/1.1" in error and headers.get("connection") == "close", (
                name,
                headers,
                body,
            )
    with capsys.disabled():
        print(
            f"\nV2 hostile corpus: {len(answers)} requests, {len(answers) - len(plain)} 4xx JSON {{'error'}} "
            f"({len(PARSER)} of them refused by uvicorn's parser), {len(server_errors)} 5xx, {len(plain)} plain text"
        )
    serves(toy)


_UVICORN_CHECK = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
import mlserver.rest.server as rest_server, uvicorn
from freestack_server.mlserver import server as oip_server
written_for = oip_server.json_400_protocol()
print("WRITTEN-FOR", uvicorn.__version__, [c.__name__ for c in written_for.__mro__[:3]])
oip_server.json_400_protocol.cache_clear()
uvicorn.__version__ = "0.99.0"
stock = rest_server.RESTServer._get_config
oip_server._json_400_everywhere()
print("OTHER", oip_server.json_400_protocol(), rest_server.RESTServer._get_config is stock)
"""


def test_on_another_uvicorn_release_its_own_400_stays_and_the_launcher_says_so():
    """The JSON 400 overrides a method of uvicorn's protocol classes that is not public API: only on the
    release it was written for; on another, MLServer's uvicorn config is left as it is, with one warning."""
    import os
    import subprocess

    from tests.integration.test_serving_oip import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    got = subprocess.run(
        [str(PYTHON), "-c", _UVICORN_CHECK], capture_output=True, text=True, env=env, timeout=120
    )
    assert got.returncode == 0, got.stderr
    assert (
        "WRITTEN-FOR 0.54.0 ['JsonBadRequestHttpToolsProtocol', 'JsonBadRequest', 'HttpToolsProtocol']"
        in got.stdout
    ), got.stdout
    assert "OTHER None True" in got.stdout, got.stdout
    assert (
        "WARNING uvicorn 0.99.0: freestack's V2 error answer to requests its HTTP parser cannot read was written for 0.54."
        in got.stdout
    )
