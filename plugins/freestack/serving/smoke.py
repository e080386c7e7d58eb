"""Checking a served model: the smoke test a new server must pass before it is switched to.

The evaluation saved its test rows and in-process outputs with the version (``evaluation/smoke.json``);
:func:`smoke_test` sends those rows to the new server and requires the same answers: the same class, and
values within a tolerance on the output's own scale (:func:`tolerance`: probabilities, or the target's std).
A text-generation version's sample holds test conversations and the model's greedy answers, each computed
alone: :func:`smoke_generation` sends them one request at a time (``temperature: 0``, the sample's
``max_new_tokens``) and requires the very same texts.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from freestack import version
from freestack.errors import DeployError
from freestack.storage import join, to_path
from freestack.version.files import SMOKE
from freestack_server.core.requestlog import SMOKE_ID


def http_json(
    url: str, payload: Any = None, *, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (our own local server)
            body, code = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode(errors="replace")


#: how a smoke request is sent: ``post(url, payload, timeout=...)`` answers (HTTP status, parsed JSON body)
Post = Callable[..., tuple[int, Any]]


def keyed_post(api_key: SecretStr | str | None, header: str = "Authorization") -> Post | None:
    """:func:`http_json` sending a deployment's key (``Authorization: Bearer <key>``, or ``api-key: <key>``
    with ``header="api-key"``); None without a key (the plain :func:`http_json`)."""
    if api_key is None:
        return None
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    sent = {header: f"Bearer {key}" if header == "Authorization" else key}
    return functools.partial(http_json, headers=sent)


def smoke_sample(version_uri: str, n: int) -> dict[str, Any]:
    """The evaluation's test rows and in-process outputs for a version (``evaluation/smoke.json``, written
    by every evaluation): a version without them cannot be smoke-tested, so it is not deployed."""
    path = join(to_path(version_uri), *SMOKE.split("/"))
    try:
        sample = json.loads(path.read_text())
    except FileNotFoundError:
        msg = f"{version_uri} has no evaluation/smoke.json: evaluate the version again to deploy it"
        raise DeployError(msg) from None
    sample = truncated(sample, n)
    if sample.get("task") not in ("classification", "generation") and "target_std" not in sample:
        # the target's name and scale: what a regression answer is named and compared on (smoke_test)
        opened = version.open(version_uri)
        pre = opened.preprocessing.as_dict() if opened.preprocessing is not None else {}
        sample.update({k: pre[k] for k in ("target", "target_mean", "target_std") if k in pre})
    return sample


def truncated(sample: dict[str, Any], n: int) -> dict[str, Any]:
    """The sample's first ``n`` rows (and their outputs, labels, keys)."""
    rows = ("rows", "outputs", "labels", "keys", "predicted", "chats", "finish_reasons")
    return {k: v[:n] if k in rows else v for k, v in sample.items()}


#: how far a served answer may be from the evaluation's: probabilities within ATOL; a regression value
#: within ATOL x the target's std (its standardised scale, where the network computes) + RTOL x |value|
#: (float32 carries some 7 digits: a target in the hundreds of thousands is only resolved to ~0.03)
ATOL = 1e-4
RTOL = 1e-5


def tolerance(sample: dict[str, Any], *, atol: float = ATOL, rtol: float = RTOL) -> dict[str, Any]:
    """How far the server's answers may be from the sample's: ``{"atol", "rtol", "scale", "basis"}``; an
    answer ``g`` for an expected ``e`` passes when ``|g - e| <= atol + rtol * |e|``. Classification:
    probabilities, ``atol`` as given. Regression: ``atol`` times the target's scale, the first of the
    target std (``target_std``, from the version's preprocessing), the std of the sample's labels, or
    the largest expected magnitude (at least 1)."""
    if sample.get("task") == "classification":
        return {"atol": atol, "rtol": 0.0, "scale": 1.0, "basis": "probabilities"}
    scale, basis = _target_scale(sample)
    return {"atol": atol * scale, "rtol": rtol, "scale": scale, "basis": basis}


def _target_scale(sample: dict[str, Any]) -> tuple[float, str]:
    std = sample.get("target_std")
    if _number(std) and math.isfinite(std) and std > 0:
        return float(std), "target std"
    labels = [float(v) for v in sample.get("labels") or [] if _number(v) and math.isfinite(v)]
    if len(labels) >= 2 and statistics.pstdev(labels) > 0:
        return statistics.pstdev(labels), "std of the sample's labels"
    values = [
        abs(float(v))
        for row in sample.get("outputs") or []
        for v in (row if isinstance(row, list) else [row])
        if _number(v) and math.isfinite(v)
    ]
    return max([1.0, *values]), "largest expected value"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def smoke_test(
    url: str, sample: dict[str, Any], *, atol: float = ATOL, rtol: float = RTOL, post: Post | None = None
) -> dict[str, Any]:
    """Send the sample's rows; every answer must equal the in-process output: the same class, and values
    within :func:`tolerance` (for regression, relative to the target's scale). Returns what was compared;
    raises DeployError naming the first row, key and output that differ, both values and the tolerance.
    ``post`` sends the request: plain HTTP (:func:`http_json`) by default, the Kubernetes API server's
    service proxy for a cluster. A text-generation sample: :func:`smoke_generation`."""
    if sample.get("task") == "generation":
        return smoke_generation(url, sample, post=post)
    code, body = (post or http_json)(f"{url}/api/v1.0/predictions", seldon_request(sample), timeout=30.0)
    if code != 200 or not isinstance(body, dict) or "data" not in body:
        raise DeployError(f"the smoke request to {url} answered HTTP {code}: {str(body)[:500]}")
    got = body["data"].get("ndarray")
    if got is None and "tensor" in body["data"]:
        t = body["data"]["tensor"]
        width = t["shape"][1] if len(t["shape"]) > 1 else 1
        got = [t["values"][i : i + width] for i in range(0, len(t["values"]), width)]
    checked = _checked(got, sample, atol, rtol, body.get("meta", {}))
    _check_names(body["data"].get("names"), sample)
    return checked


def seldon_request(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's rows as a Seldon message, under the smoke test's own request id: the model server
    leaves it out of the request log (not traffic)."""
    return {
        "data": {"names": sample["features"], "ndarray": sample["rows"]},
        "meta": {"puid": f"{SMOKE_ID}-{time.time_ns()}"},
    }


def v2_request(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's rows as an Open Inference Protocol request: one tensor per feature column (numbers
    as FP64, anything else, categories, text, base64 images, as BYTES), under the smoke test's id."""
    inputs = []
    for j, name in enumerate(sample["features"]):
        values = [row[j] for row in sample["rows"]]
        numeric = all(_number(v) for v in values)
        inputs.append(
            {
                "name": name,
                "datatype": "FP64" if numeric else "BYTES",
                "shape": [len(values)],
                "data": values if numeric else [str(v) for v in values],
            }
        )
    return {"id": f"{SMOKE_ID}-{time.time_ns()}", "inputs": inputs}


def smoke_test_v2(
    url: str,
    model: str,
    sample: dict[str, Any],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    post: Post | None = None,
) -> dict[str, Any]:
    """:func:`smoke_test` over the Open Inference Protocol (``POST /v2/models/<model>/infer``): the
    ``probabilities`` output (classification) or ``prediction`` (regression) must equal the evaluation's
    (a text-generation sample: :func:`smoke_generation`, over V2)."""
    if sample.get("task") == "generation":
        return smoke_generation(url, sample, post=post, v2_model=model)
    code, body = (post or http_json)(f"{url}/v2/models/{model}/infer", v2_request(sample), timeout=30.0)
    if code != 200 or not isinstance(body, dict) or "outputs" not in body:
        raise DeployError(f"the smoke request to {url} answered HTTP {code}: {str(body)[:500]}")
    want = "probabilities" if sample.get("task") == "classification" else "prediction"
    out = next((o for o in body["outputs"] if o.get("name") == want), None)
    if out is None:
        raise DeployError(f"the smoke request to {url} got no {want!r} output: {str(body)[:500]}")
    width = out["shape"][1] if len(out["shape"]) > 1 else 1
    data = out["data"]
    got = [data[i : i + width] for i in range(0, len(data), width)]
    return _checked(got, sample, atol, rtol, {"id": body.get("id")})


#: how long one smoke prompt may take to answer (a CPU generates some tokens a second for a large model)
GENERATION_TIMEOUT_S = 300.0


def generation_request(
    chat: list[dict[str, str]], max_new_tokens: int, request_id: str, *, v2: bool = False
) -> dict[str, Any]:
    """One smoke conversation as a greedy request (``temperature: 0``): Seldon's ``jsonData`` ``messages``, or
    (``v2``) mlserver-huggingface's ``array_inputs`` tensor of ``hg_jsonlist`` messages."""
    params = {"max_new_tokens": int(max_new_tokens), "temperature": 0}
    if v2:
        return {
            "id": request_id,
            "parameters": params,
            "inputs": [
                {
                    "name": "array_inputs",
                    "datatype": "BYTES",
                    "shape": [len(chat)],
                    "parameters": {"content_type": "hg_jsonlist"},
                    "data": [json.dumps(m) for m in chat],
                }
            ],
        }
    return {"jsonData": {"messages": chat, "parameters": params}, "meta": {"puid": request_id}}


def smoke_generation(
    url: str, sample: dict[str, Any], *, post: Post | None = None, v2_model: str | None = None
) -> dict[str, Any]:
    """Send each of the sample's conversations (``chats``) alone, greedy with its ``max_new_tokens``, to
    Seldon's ``/api/v1.0/predictions`` or (``v2_model``) ``/v2/models/<model>/infer``; every answer must
    be the evaluation's text (``outputs``), exactly. DeployError names the first row that differs, what was
    expected and what came back."""
    path = f"/v2/models/{v2_model}/infer" if v2_model else "/api/v1.0/predictions"

    def ask(chat: list[dict[str, str]], n: int, request_id: str) -> tuple[int, Any, str | None]:
        body = generation_request(chat, n, request_id, v2=v2_model is not None)
        code, answer = (post or http_json)(url + path, body, timeout=GENERATION_TIMEOUT_S)
        return code, answer, _generated_text(answer, v2_model is not None) if code == 200 else None

    return _smoke_chats(url, sample, ask)


def smoke_openai(
    url: str, sample: dict[str, Any], model: str, *, api_key: str | None = None
) -> dict[str, Any]:
    """:func:`smoke_generation` through the server's OpenAI API (``/v1/chat/completions``) for ``model``
    (``<model>:<version>``: a version the server is not serving yet), with the API's key when it has one; the
    answers must name that version (``x-freestack-version``) as well as equal the evaluation's."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def ask(chat: list[dict[str, str]], n: int, request_id: str) -> tuple[int, Any, str | None]:
        body = {"model": model, "messages": chat, "max_tokens": n, "temperature": 0}
        code, answer = http_json(
            url + "/v1/chat/completions",
            body,
            timeout=GENERATION_TIMEOUT_S,
            headers={**headers, "X-Request-Id": request_id},
        )
        try:
            ok = code == 200 and answer["model"] == model
            return code, answer, answer["choices"][0]["message"]["content"] if ok else None
        except (KeyError, IndexError, TypeError):
            return code, answer, None

    return _smoke_chats(url, sample, ask)


def _smoke_chats(url: str, sample: dict[str, Any], ask) -> dict[str, Any]:
    """The smoke loop: ``ask(chat, max_new_tokens, request_id) -> (status, answer, its text or None)`` for
    each conversation of the sample, whose text must be the evaluation's."""
    chats, expected = sample.get("chats") or [], sample.get("outputs") or []
    if not chats or len(chats) != len(expected):
        raise DeployError(
            f"the smoke sample holds {len(chats)} conversations and {len(expected)} answers: evaluate "
            "the version again to deploy it"
        )
    n, keys = int(sample.get("max_new_tokens") or 64), sample.get("keys") or []
    stamp = time.time_ns()
    for i, (chat, want) in enumerate(zip(chats, expected, strict=True)):
        code, answer, got = ask(chat, n, f"{SMOKE_ID}-{stamp}-{i}")
        if got is None:
            raise DeployError(f"the smoke request {i} to {url} answered HTTP {code}: {str(answer)[:500]}")
        if got != want:
            where = f"smoke row {i}" + (f" (key {keys[i]})" if i < len(keys) else "")
            raise DeployError(
                f"{where}: the server answered {got!r}, the evaluation {want!r} in-process (greedy, "
                f"max_new_tokens {n}, one prompt at a time): the served model does not answer as the "
                "evaluated one"
            )
    return {
        "rows": len(chats),
        "max_abs_diff": 0.0,
        "tolerance": {"basis": "the same text"},
        "meta": {"max_new_tokens": n},
    }


def _generated_text(answer: Any, v2: bool) -> str | None:
    """The one completion's text of a generation answer (None: not such an answer)."""
    try:
        if v2:
            out = next(o for o in answer["outputs"] if o.get("name") == "output")
            return json.loads(out["data"][0])["generated_text"]
        return answer["jsonData"]["completions"][0]["text"]
    except (KeyError, IndexError, TypeError, StopIteration, ValueError):
        return None


def _checked(got: Any, sample: dict[str, Any], atol: float, rtol: float, meta: Any) -> dict[str, Any]:
    """What a smoke test compared (:func:`_compare`): rows, the largest difference, the tolerance, and
    the answer's ``meta``."""
    worst, tol = _compare(got, sample, atol, rtol)
    return {"rows": len(sample["outputs"]), "max_abs_diff": worst, "tolerance": tol, "meta": meta}


def _compare(got: Any, sample: dict[str, Any], atol: float, rtol: float) -> tuple[float, dict[str, Any]]:
    """The largest difference between the server's rows and the evaluation's; DeployError on the first
    row that differs beyond the tolerance or predicts another class."""
    expected = sample["outputs"]
    if not isinstance(got, list) or len(got) != len(expected):
        raise DeployError(f"the smoke request sent {len(expected)} rows and got {str(got)[:200]} back")
    classification = sample.get("task") == "classification"
    tol = tolerance(sample, atol=atol, rtol=rtol)
    outputs = _outputs(sample)
    keys = sample.get("keys") or []
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        g_row = g if isinstance(g, list) else [g]
        e_row = e if isinstance(e, list) else [e]
        where = f"smoke row {i}" + (f" (key {keys[i]})" if i < len(keys) else "")
        if len(g_row) != len(e_row):
            counts = f"the server answered {len(g_row)} values, the evaluation {len(e_row)}"
            raise DeployError(f"{where}: {counts}")
        if classification:
            gc = max(range(len(g_row)), key=g_row.__getitem__)
            ec = max(range(len(e_row)), key=e_row.__getitem__)
            if gc != ec:
                raise DeployError(
                    f"{where}: the server predicts class {_name(outputs, gc)!r}, the evaluation predicted "
                    f"{_name(outputs, ec)!r} in-process; the served model is not the evaluated one"
                )
        for j, (a, b) in enumerate(zip(g_row, e_row, strict=True)):
            diff, allowed = abs(float(a) - float(b)), tol["atol"] + tol["rtol"] * abs(float(b))
            worst = max(worst, diff)
            if not diff <= allowed:  # NaN fails too
                raise DeployError(
                    f"{where}, output {_name(outputs, j)!r}: the server answered {float(a)!r}, the evaluation "
                    f"{float(b)!r} in-process; the difference {diff:.3g} exceeds the tolerance {allowed:.3g} "
                    f"({_explain(tol, atol)}): the served model does not answer as the evaluated one"
                )
    return worst, tol


def _outputs(sample: dict[str, Any]) -> list[str]:
    if sample.get("task") == "classification":
        return [str(c) for c in sample.get("classes") or []]
    return [sample.get("target") or "value"]


def _check_names(names: list[str] | None, sample: dict[str, Any]) -> None:
    outputs = _outputs(sample)
    if sample.get("task") == "classification":
        if sample.get("classes") and names and list(names) != outputs:
            raise DeployError(f"the server names its outputs {names}, the model's classes are {outputs}")
    elif sample.get("target") and names is not None and list(names) != outputs:
        raise DeployError(
            f"the server names its outputs {names}; a regression model answers one value per row, "
            f"named after its target {outputs[0]!r}"
        )


def _name(outputs: list[str], j: int) -> str:
    return outputs[j] if j < len(outputs) else str(j)


def _explain(tol: dict[str, Any], atol: float) -> str:
    if not tol["rtol"]:
        return f"{tol['atol']:.3g} on probabilities"
    return f"{atol:.0e} x {tol['basis']} {tol['scale']:.6g} + {tol['rtol']:.0e} x |expected|"


__all__ = [
    "keyed_post",
    "ATOL",
    "RTOL",
    "generation_request",
    "http_json",
    "smoke_generation",
    "smoke_openai",
    "smoke_sample",
    "seldon_request",
    "smoke_test",
    "smoke_test_v2",
    "tolerance",
    "v2_request",
]
