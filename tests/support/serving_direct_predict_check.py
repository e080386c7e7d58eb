"""Run in the serving environment by tests/integration/test_serving_direct_predict.py:

    python tests/support/serving_direct_predict_check.py MODEL_URI CASES.json

Builds what the model server builds for a Seldon model (freestack's Model, Seldon's REST app with the
request checks and the orjson provider, the buffered metrics) and direct prediction over the same
objects, then asks both each case of CASES.json (``{"name", "path", "query", "headers", "body"}``):
direct prediction through ``DirectPredict.answer`` on a parsed request like gunicorn's, the app through Flask's test client. Prints
one JSON object a case: the direct answer (or null: passed on to the app) and the app's.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Request:
    """What direct prediction reads of gunicorn's parsed request."""

    def __init__(self, case: dict):
        self.method, self.path, self.query = case.get("method", "POST"), case["path"], case.get("query", "")
        self.headers = [(k.upper(), v) for k, v in case.get("headers", {}).items()]
        self.body = io.BytesIO(case["body"].encode())


def main(model_uri: str, cases_file: str) -> None:
    os.environ.setdefault("INCLUDE_METRICS_IN_CLIENT_RESPONSE", "false")
    from seldon_core import wrapper

    from freestack_server.seldon import request_checks
    from freestack_server.seldon.direct_predict import DirectPredict
    from freestack_server.seldon.lighter_flask import faster_json, lighter_flask
    from freestack_server.seldon.metrics import BufferedSeldonMetrics
    from freestack_server.seldon.model import Model

    model = Model(model_uri=model_uri)
    model.load()
    metrics = BufferedSeldonMetrics(worker_id_func=os.getpid)
    app = wrapper.get_rest_microservice(model, metrics)
    request_checks.install(app, max_body=1 << 20, inputs=model.inputs())
    lighter_flask(app)
    faster_json(app)
    direct = DirectPredict(model, metrics, inputs=model.inputs(), json_dumps=app.json.dumps)
    client = app.test_client()
    for case in json.loads(Path(cases_file).read_text()):
        answer = direct.answer(Request(case))
        url = case["path"] + (f"?{case['query']}" if case.get("query") else "")
        resp = client.open(
            url,
            method=case.get("method", "POST"),
            data=case["body"].encode(),
            headers=case.get("headers", {}),
        )
        out = {
            "name": case["name"],
            "app": {
                "status": resp.status_code,
                "body": resp.get_data(as_text=True),
                "content_type": resp.headers.get("Content-Type"),
            },
        }
        if answer is not None:
            status, headers, body = answer
            out["direct"] = {"status": status, "headers": headers, "body": body.decode()}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
