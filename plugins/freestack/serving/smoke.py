"""Checking a served model: the smoke test a new server must pass before it is switched to.

The evaluation saved its test rows and in-process outputs with the version (``evaluation/smoke.json``);
:func:`smoke_test` sends those rows to the new server and requires the same answers.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from freestack.errors import DeployError

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


def http_json(url: str, payload: Any = None, *, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (our own local server)
            body = resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode(errors="replace")


def smoke_sample(version_uri: str, n: int, spec: PipelineSpec | None = None) -> dict[str, Any]:
    """The evaluation's test rows and in-process outputs for a version (``evaluation/smoke.json``); for a
    version evaluated before that file existed, computed here from the trainer's test split."""
    from freestack.storage import join, to_path

    path = join(to_path(version_uri), "evaluation", "smoke.json")
    try:
        sample = json.loads(path.read_text())
    except FileNotFoundError:
        if spec is None:
            raise DeployError(f"{version_uri} has no evaluation/smoke.json and no pipeline spec was given") from None
        from freestack.evaluate.core import load_model_folder, test_split
        from freestack.evaluate.core import smoke_sample as compute

        model, pre, _m, lineage, _h = load_model_folder(version_uri)
        window = lineage.get("window") or {}
        test, _parts = test_split(spec, window["end_ds"], int(window.get("days") or spec.train.window_days))
        schema = spec.source.schema_
        sample = compute(model, pre, test, schema.key, schema.target, n)
    for k in ("rows", "outputs", "labels", "keys", "predicted"):
        if k in sample:
            sample[k] = sample[k][:n]
    return sample


def smoke_test(url: str, sample: dict[str, Any], *, atol: float = 1e-4) -> dict[str, Any]:
    """Send the sample's rows; every answer must equal the in-process output (same class, values within
    ``atol``). Returns what was compared; raises DeployError naming the first row that differs."""
    payload = {"data": {"names": sample["features"], "ndarray": sample["rows"]}}
    code, body = http_json(f"{url}/api/v1.0/predictions", payload, timeout=30.0)
    if code != 200 or not isinstance(body, dict) or "data" not in body:
        raise DeployError(f"the smoke request to {url} answered HTTP {code}: {str(body)[:500]}")
    got = body["data"].get("ndarray")
    if got is None and "tensor" in body["data"]:
        t = body["data"]["tensor"]
        width = t["shape"][1] if len(t["shape"]) > 1 else 1
        got = [t["values"][i : i + width] for i in range(0, len(t["values"]), width)]
    expected = sample["outputs"]
    if not isinstance(got, list) or len(got) != len(expected):
        raise DeployError(f"the smoke request sent {len(expected)} rows and got {str(got)[:200]} back")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        g_row = g if isinstance(g, list) else [g]
        e_row = e if isinstance(e, list) else [e]
        if len(g_row) != len(e_row):
            raise DeployError(f"smoke row {i}: the server answered {len(g_row)} values, evaluation had {len(e_row)}")
        diff = max(abs(float(a) - float(b)) for a, b in zip(g_row, e_row, strict=True))
        worst = max(worst, diff)
        if sample.get("task") == "classification":
            if max(range(len(g_row)), key=g_row.__getitem__) != max(range(len(e_row)), key=e_row.__getitem__):
                raise DeployError(
                    f"smoke row {i} (key {sample.get('keys', ['?'] * (i + 1))[i]}): the server predicts another "
                    "class than the evaluation did in-process; the served model is not the evaluated one"
                )
        if diff > atol:
            raise DeployError(f"smoke row {i}: the server's answer differs from the evaluation's by {diff:.2e}")
    names = body["data"].get("names")
    if sample.get("classes") and names and list(names) != list(sample["classes"]):
        raise DeployError(f"the server names its outputs {names}, the model's classes are {sample['classes']}")
    return {"rows": len(expected), "max_abs_diff": worst, "meta": body.get("meta", {})}


__all__ = ["http_json", "smoke_sample", "smoke_test"]
