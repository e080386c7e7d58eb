"""Adaptive batching in the freestack worker (the real server from .venv-serving, started as ``deploy``
starts it): requests that arrive together share one forward pass, and each still gets its own answer,
request id and error, through direct prediction and through Seldon's app alike."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from freestack.serving.launch import Slot, server_config, start_server
from freestack.serving.spec import LocalTarget
from tests.support.ports import free_ports
from tests.support.serving import in_process, make_version, needs_serving_env
from tests.support.serving_hostile import PREDICT, read_answer, request

N_FEATURES = 8
CONNECTIONS = 12
ROUNDS = 20

pytestmark = needs_serving_env


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("batching")
    return make_version((work / "storage").as_uri(), "b", "v1", work, seed=5, n_features=N_FEATURES)


def _start(version_uri: str, name: str, **local):
    port, metrics_port = free_ports(2)
    target = LocalTarget(
        workers=2, threads=1, worker_class="freestack", max_batch_rows=50, start_timeout_seconds=90, **local
    )
    cfg = server_config(
        name, "b", "v1", Slot("blue", port, metrics_port), target, model_uri=version_uri, request_log_uri=None
    )
    server = start_server(cfg, model_env={})
    server.wait_ready(90)
    deadline = time.monotonic() + 60  # every worker has loaded the model
    while (
        Path(server.log_path).read_text(errors="replace").count("INFO serving b v1") < 2
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    return server, port


def _message(i: int, rows: np.ndarray, round_: int) -> tuple[bytes, str]:
    """Request ``i`` of a round: most a good message (every third by Seldon's app, through a query
    string), some refused by the model (the wrong width, a NaN). Returns the request and its kind."""
    if i % 7 == 3:
        return request(
            "POST", PREDICT, json.dumps({"data": {"ndarray": [[1.0] * (N_FEATURES - 1)]}}).encode()
        ), "width"
    if i % 7 == 5:
        return request("POST", PREDICT, b'{"data": {"ndarray": [[NaN, 1, 2, 3, 4, 5, 6, 7]]}}'), "nan"
    path = PREDICT + ("?via=app" if i % 3 == 0 else "")
    body = {"data": {"ndarray": rows.tolist()}, "meta": {"puid": f"r{round_}-{i}"}}
    return request("POST", path, json.dumps(body).encode()), "good"


def _rounds(port: int) -> list[tuple[str, np.ndarray, dict, int]]:
    """ROUNDS rounds of CONNECTIONS requests written at once, one per keep-alive connection; every answer."""
    rng = np.random.default_rng(0)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(CONNECTIONS)]
    out = []
    try:
        for r in range(ROUNDS):
            sent = []
            for i, sock in enumerate(socks):
                rows = rng.normal(size=(1 + i % 3, N_FEATURES)).astype(np.float32)
                raw, kind = _message(i, rows, r)
                sent.append((kind, rows))
                sock.sendall(raw)
            for (kind, rows), sock in zip(sent, socks, strict=True):
                answer, rest = read_answer(sock)
                assert rest == b"" and answer.status, answer.error
                out.append((kind, rows, answer.json(), answer.status))
    finally:
        for sock in socks:
            sock.close()
    return out


def test_requests_that_arrive_together_share_a_forward_and_each_gets_its_own_answer(version):
    server, port = _start(version, "batching")
    try:
        answers = _rounds(port)
    finally:
        server.stop()
    ids, got, sent = set(), [], []
    for kind, rows, body, status in answers:
        if kind == "good":
            assert status == 200, body
            got.append(np.asarray(body["data"]["ndarray"], dtype=np.float64))
            sent.append(rows)
            ids.add(body["meta"]["tags"]["request_id"])
        else:
            assert status == 400, body
            info = body["status"]["info"]
            assert ("7" in info and str(N_FEATURES) in info) if kind == "width" else "NaN" in info, info
    # every good answer is the model's in-process answer for its own rows (the model loaded once)
    np.testing.assert_allclose(
        np.concatenate(got), in_process(version, np.concatenate(sent)), rtol=1e-5, atol=1e-6
    )
    good = len(sent)
    assert len(ids) == good  # each its own request id (its puid)
    log = Path(server.log_path).read_text(errors="replace")
    shared = [line for line in log.splitlines() if "adaptive batching answered" in line]
    assert len(shared) == 2, log[-3000:]  # one line per worker, when it stops
    batched = sum(int(line.split("answered ")[1].split()[0]) for line in shared)
    assert batched >= good // 2, shared  # most good requests of a round shared a forward pass


def test_adaptive_batching_off_answers_each_alone(version):
    server, port = _start(version, "batching-off", adaptive_batching=False)
    try:
        answers = _rounds(port)
    finally:
        server.stop()
    assert all(status == (200 if kind == "good" else 400) for kind, _, _, status in answers)
    assert "adaptive batching" not in Path(server.log_path).read_text(errors="replace")
