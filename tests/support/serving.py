"""Registered model versions for the serving tests: a small real network, its preprocessing, and the
evaluation's smoke sample (test rows with in-process outputs), committed by the registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from freestack.ml.models import FreestackNet

ROOT = Path(__file__).resolve().parents[2]

# the model-server tests need the serving environment (.venv-serving, or another named by FREESTACK_SERVING_PYTHON)
needs_serving_env = pytest.mark.skipif(
    not (ROOT / ".venv-serving" / "bin" / "python").exists()
    and not os.environ.get("FREESTACK_SERVING_PYTHON"),
    reason="the serving environment is missing: run `make serving-venv`",
)


def make_version(
    root: str,
    model: str,
    version: str,
    work: Path,
    *,
    seed: int = 0,
    n_features: int = 8,
    classes: tuple = (0, 1, 2),
    broken: bool = False,
) -> str:
    """Register ``version`` of ``model`` under ``root``; ``broken``: its config no longer fits its weights,
    so the version is intact in storage but fails to load."""
    from freestack.registry.core import ModelRegistry

    torch.manual_seed(seed)
    features = [f"f{i}" for i in range(n_features)]
    net = FreestackNet(
        kind="mlp",
        n_features=n_features,
        n_outputs=len(classes),
        hidden=[16],
        features=features,
        classes=list(classes),
    )
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=n_features), rng.uniform(0.5, 2.0, size=n_features)
    net.set_scaling(mean, std)
    folder = work / f"{model}-{version}"
    net.save_pretrained(folder)
    pre = {
        "task": "classification",
        "features": features,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "classes": list(classes),
        "target": "label",
        "target_mean": 0.0,
        "target_std": 1.0,
    }
    (folder / "preprocessing.json").write_text(json.dumps(pre))
    rows = rng.normal(size=(24, n_features)).astype(np.float32) * 3
    out = net.predict_proba(torch.as_tensor(rows))
    smoke = {
        "task": "classification",
        "features": features,
        "keys": [str(i) for i in range(len(rows))],
        "rows": rows.tolist(),
        "labels": [classes[i % len(classes)] for i in range(len(rows))],
        "outputs": out.tolist(),
        "classes": [str(c) for c in classes],
        "predicted": [classes[i] for i in out.argmax(-1).tolist()],
    }
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "smoke.json").write_text(json.dumps(smoke))
    (folder / "lineage.json").write_text(json.dumps({"pipeline": model, "model": model}))
    if broken:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["n_features"] = n_features + 3  # the weights no longer fit: load_state_dict fails in the server
        (folder / "config.json").write_text(json.dumps(cfg))
    return ModelRegistry(root, model).register(folder.as_uri(), version)


def in_process(version_uri: str, rows: np.ndarray) -> np.ndarray:
    """What the version predicts in this process (the evaluation's way)."""
    path = version_uri.removeprefix("file://")
    net = FreestackNet.from_pretrained(path)
    return net.predict_proba(torch.as_tensor(np.asarray(rows, dtype=np.float32))).numpy()


# ---------------------------------------------------------------------------------------------------------
# a load loop against one address


class LoadLoop:
    """Client threads that POST one prediction after another to ``host:port`` until stopped, in four
    styles: ``fresh`` (a new connection per request, ``Connection: close``), ``keepalive`` (one
    ``http.client`` connection reused, no retry: a request on a connection the server closed fails),
    ``session`` (``requests.Session``, as most Python clients do) and ``idle`` (like ``keepalive``, but
    pausing IDLE_S between requests, so its connection is idle when a switch begins). Every request is
    kept as (style, start, latency s, served version or the error)."""

    STYLES = ("fresh", "keepalive", "session", "idle")
    IDLE_S = 2.0

    def __init__(
        self,
        host: str,
        port: int,
        row: list[float],
        *,
        threads: dict[str, int] | None = None,
        v2_model: str | None = None,
    ):
        import threading

        self.host, self.port = host, port
        # Seldon's message, or (v2_model) a V2 inference request for that model
        self.path = f"/v2/models/{v2_model}/infer" if v2_model else "/api/v1.0/predictions"
        self.body = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(row)], "data": row}]}
            if v2_model
            else {"data": {"ndarray": [row]}}
        ).encode()
        self.threads = threads or {"fresh": 2, "keepalive": 2, "session": 1, "idle": 2}
        self.stopping = threading.Event()
        self.results: list[tuple[str, float, float, str, bool]] = []
        self._workers = [
            threading.Thread(target=self._run, args=(style,), daemon=True)
            for style, n in self.threads.items()
            for _ in range(n)
        ]

    def __enter__(self) -> LoadLoop:
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self._workers:
            t.join(timeout=30)

    def _run(self, style: str) -> None:
        import http.client
        import time

        import requests

        session = requests.Session() if style == "session" else None
        conn = None
        url, path = f"http://{self.host}:{self.port}", self.path
        headers = {
            "Content-Type": "application/json",
            **({"Connection": "close"} if style == "fresh" else {}),
        }
        out = []
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                if session is not None:
                    resp = session.post(url + path, data=self.body, headers=headers, timeout=30)
                    status, data = resp.status_code, resp.content
                else:
                    if conn is None or style == "fresh":
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                    conn.request("POST", path, body=self.body, headers=headers)
                    resp = conn.getresponse()
                    status, data = resp.status, resp.read()
                    if style == "fresh":
                        conn.close()
                ok = status == 200
                answer = json.loads(data) if ok else {}
                what = (
                    (answer.get("model_version") or answer["meta"]["tags"]["model_version"])
                    if ok
                    else f"HTTP {status}"
                )
            except Exception as exc:  # every failure counts; the next request reconnects
                ok, what = False, f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            out.append((style, t0, time.monotonic() - t0, what, ok))
            if style == "idle":
                self.stopping.wait(self.IDLE_S)
        self.results.extend(out)

    def figures(self, since: float = 0.0, until: float = float("inf")) -> dict[str, dict]:
        """Per style, for the requests started in [since, until]: sent, failed, max and p50 latency (ms),
        the versions that answered, and the first few errors."""
        out = {}
        for style in self.threads:
            rs = [r for r in self.results if r[0] == style and since <= r[1] <= until]
            lat = sorted(r[2] for r in rs)
            out[style] = {
                "sent": len(rs),
                "failed": sum(1 for r in rs if not r[4]),
                "max_ms": round(lat[-1] * 1000, 1) if lat else None,
                "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
                "versions": sorted({r[3] for r in rs if r[4]}),
                "errors": [r[3] for r in rs if not r[4]][:5],
            }
        return out
