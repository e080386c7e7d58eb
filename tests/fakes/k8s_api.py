"""A small stand-in for the Kubernetes API server's custom-objects REST API, on 127.0.0.1, serving
SeldonDeployments (``/apis/machinelearning.seldon.io/v1/namespaces/{ns}/seldondeployments[/{name}]``).

It keeps the semantics the deploy code relies on: ``Status`` bodies for errors (404 for an object,
for a namespace, and a bare "404 page not found" when the API group is not served, i.e. the CRD is
not installed), 409 AlreadyExists and 409 Conflict on a stale ``resourceVersion``, 422 when an update
carries no resourceVersion, a ``resourceVersion`` bumped on every write, ``metadata.generation``
bumped only when ``spec`` changes, ``status`` ignored on writes (the status subresource), merge
patches (RFC 7386) and JSON patches (RFC 6902), ``dryRun=All``.

A fake Seldon controller moves ``status``: ``reconcile_after`` seconds after a spec change it writes
``Creating`` with ``observedGeneration``, ``ready_after`` seconds after it the ``outcome`` (Available or
Failed). ``ready_after=None`` leaves that to the test (``set_status``). Every request is recorded.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GROUP, VERSION, PLURAL, KIND = "machinelearning.seldon.io", "v1", "seldondeployments", "SeldonDeployment"
_PATH = re.compile(rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/([^/]+)/{PLURAL}(?:/([^/]+))?/?$")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class PatchError(Exception):
    pass


def _pointer(doc: Any, path: str) -> tuple[Any, str | int]:
    if not path.startswith("/"):
        raise PatchError(f"invalid path {path!r}")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        return node, (len(node) if last == "-" else int(last))
    return node, last


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902: add, remove, replace, test, move, copy."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        try:
            if kind == "test":
                parent, key = _pointer(doc, path)
                if parent[key] != op.get("value"):
                    raise PatchError(f"testing value {path} failed")
                continue
            if kind in ("move", "copy"):
                src_parent, src_key = _pointer(doc, op["from"])
                value = copy.deepcopy(src_parent[src_key])
                if kind == "move":
                    del src_parent[src_key]
                op = {"op": "add", "path": path, "value": value}
                kind = "add"
            parent, key = _pointer(doc, path)
            if kind == "add":
                if isinstance(parent, list):
                    parent.insert(key, copy.deepcopy(op["value"]))
                else:
                    parent[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[key]
            elif kind == "replace":
                if isinstance(parent, dict) and key not in parent:
                    raise PatchError(f"replace operation does not apply: doc is missing key: {path}")
                parent[key] = copy.deepcopy(op["value"])
            else:
                raise PatchError(f"unexpected operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise PatchError(f"{kind} {path}: {exc!r}") from None
    return doc


class FakeKubeAPI:
    def __init__(
        self,
        *,
        ready_after: float | None = 0.15,
        reconcile_after: float = 0.03,
        outcome: str = "Available",
        failure_description: str = "Deployment digits-main-0-model failed: ImagePullBackOff",
    ) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self.ready_after = ready_after
        self.reconcile_after = reconcile_after
        self.outcome = outcome
        self.failure_description = failure_description
        self.crd_installed = True
        self.namespaces: set[str] | None = None  # None: every namespace exists
        self.forbidden = False
        self.fail_next: list[int] = []  # answer the next requests with these statuses (e.g. 503)
        self.before_write: list[Any] = []  # callables run (once each) before the next writes
        self.sent = threading.local()  # .headers: the request being handled's headers (lower-case names)
        self._rv = 100
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._timers: list[threading.Timer] = []

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }

    def start(self) -> FakeKubeAPI:
        self.thread.start()
        return self

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if method is None or r["method"] == method]

    # -- test controls -----------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def touch(self, namespace: str, name: str) -> None:
        """A concurrent writer: bump the object's resourceVersion (an annotation changes)."""
        with self.lock:
            obj = self.objects[(namespace, name)]
            obj["metadata"].setdefault("annotations", {})["fake/touched"] = str(time.time())
            obj["metadata"]["resourceVersion"] = self._next_rv()

    def set_status(
        self, namespace: str, name: str, state: str, description: str = "", observed: int | None = None
    ) -> None:
        """Write status as the controller would; ``observed`` defaults to the current generation."""
        with self.lock:
            obj = self.objects[(namespace, name)]
            gen = obj["metadata"]["generation"]
            obj["status"] = self._status(obj, state, description, gen if observed is None else observed)
            obj["metadata"]["resourceVersion"] = self._next_rv()

    def _status(self, obj: dict[str, Any], state: str, description: str, observed: int) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        deployments = {}
        for p in obj["spec"].get("predictors") or []:
            want = p.get("replicas") or 1
            deployments[f"{name}-{p.get('name')}-0-model"] = {
                "name": f"{name}-{p.get('name')}-0-model",
                "replicas": want,
                "availableReplicas": want if state == "Available" else 0,
                "status": state,
            }
        return {
            "state": state,
            "description": description,
            "observedGeneration": observed,
            "deploymentStatus": deployments,
            "replicas": sum(d["replicas"] for d in deployments.values()),
        }

    def _schedule(self, namespace: str, name: str, generation: int) -> None:
        def step(state: str, description: str) -> None:
            with self.lock:
                obj = self.objects.get((namespace, name))
                if obj is None or obj["metadata"]["generation"] != generation:
                    return  # deleted, or a newer spec took over
                obj["status"] = self._status(obj, state, description, generation)
                obj["metadata"]["resourceVersion"] = self._next_rv()

        t1 = threading.Timer(self.reconcile_after, step, ("Creating", "creating deployments"))
        self._timers.append(t1)
        t1.start()
        if self.ready_after is not None:
            desc = "" if self.outcome == "Available" else self.failure_description
            t2 = threading.Timer(self.reconcile_after + self.ready_after, step, (self.outcome, desc))
            self._timers.append(t2)
            t2.start()

    # -- the API -----------------------------------------------------------------------------------------
    @staticmethod
    def _status_doc(code: int, reason: str, message: str, details: dict | None = None) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details or {},
            "code": code,
        }

    def _err(self, code: int, reason: str, message: str, details: dict | None = None):
        return code, "application/json", json.dumps(self._status_doc(code, reason, message, details)).encode()

    def _ok(self, code: int, obj: Any):
        return code, "application/json", json.dumps(obj).encode()

    def handle(self, method: str, raw_path: str, content_type: str, body: bytes):
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        rec = {
            "method": method,
            "path": parts.path,
            "query": query,
            "content_type": content_type,
            "body": json.loads(body) if body else None,
        }
        with self.lock:
            self.requests.append(rec)
            if self.fail_next:
                code = self.fail_next.pop(0)
                return self._err(code, "ServiceUnavailable", "etcdserver: request timed out")
            m = _PATH.match(parts.path)
            if not parts.path.startswith(f"/apis/{GROUP}/") or not self.crd_installed or m is None:
                return 404, "text/plain; charset=utf-8", b"404 page not found\n"
            namespace, name = m.group(1), m.group(2)
            if self.forbidden:
                verb = {
                    "GET": "get",
                    "POST": "create",
                    "PUT": "update",
                    "PATCH": "patch",
                    "DELETE": "delete",
                }[method]
                return self._err(
                    403,
                    "Forbidden",
                    f'{PLURAL}.{GROUP} "{name or ""}" is forbidden: User "system:serviceaccount:airflow:'
                    f'worker" cannot {verb} resource "{PLURAL}" in API group "{GROUP}" in the '
                    f'namespace "{namespace}"',
                    {"name": name or "", "group": GROUP, "kind": PLURAL},
                )
            if self.namespaces is not None and namespace not in self.namespaces:
                return self._err(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            dry = query.get("dryRun") == ["All"]
            doc = json.loads(body) if body else None
            if name is None:
                if method == "GET":
                    items = [o for (ns, _), o in sorted(self.objects.items()) if ns == namespace]
                    return self._ok(
                        200,
                        {
                            "apiVersion": f"{GROUP}/{VERSION}",
                            "kind": f"{KIND}List",
                            "metadata": {"resourceVersion": str(self._rv)},
                            "items": items,
                        },
                    )
                if method == "POST":
                    return self._create(namespace, doc, dry)
                return self._err(405, "MethodNotAllowed", f"{method} is not supported on the collection")
            current = self.objects.get((namespace, name))
            if current is None:
                if method in ("GET", "PUT", "PATCH", "DELETE"):
                    return self._err(
                        404,
                        "NotFound",
                        f'{PLURAL}.{GROUP} "{name}" not found',
                        {"name": name, "group": GROUP, "kind": PLURAL},
                    )
            if method == "GET":
                return self._ok(200, current)
            if method == "DELETE":
                if not dry:
                    del self.objects[(namespace, name)]
                return self._ok(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": GROUP,
                            "kind": PLURAL,
                            "uid": current["metadata"]["uid"],
                        },
                    },
                )
            if method == "PUT":
                return self._update(namespace, name, current, doc, dry)
            if method == "PATCH":
                ctype = content_type.split(";")[0].strip()
                try:
                    if ctype == "application/merge-patch+json":
                        patched = merge_patch(current, doc)
                    elif ctype == "application/json-patch+json":
                        if not isinstance(doc, list):
                            return self._err(400, "BadRequest", "json patch must be a list of operations")
                        patched = json_patch(current, doc)
                    else:
                        return self._err(
                            415,
                            "UnsupportedMediaType",
                            f"the body of the request was in an unknown format - accepted media "
                            f"types include: application/json-patch+json, application/merge-patch+json "
                            f"(got {ctype!r})",
                        )
                except PatchError as exc:
                    return self._err(422, "Invalid", str(exc))
                return self._update(namespace, name, current, patched, dry)
            return self._err(405, "MethodNotAllowed", f"{method} is not supported")

    def _invalid(self, name: str, doc: Any) -> list[dict[str, str]]:
        """The API server's own structural checks, the few that matter here."""
        causes = []
        if (
            not isinstance(doc, dict)
            or doc.get("kind") != KIND
            or doc.get("apiVersion") != f"{GROUP}/{VERSION}"
        ):
            causes.append({"field": "kind", "message": f"must be {KIND} in {GROUP}/{VERSION}"})
            return causes
        preds = (doc.get("spec") or {}).get("predictors")
        if not isinstance(preds, list):
            causes.append({"field": "spec.predictors", "message": "Required value"})
            return causes
        for i, p in enumerate(preds):
            t = p.get("traffic")
            if t is not None and (not isinstance(t, int) or isinstance(t, bool)):
                causes.append(
                    {
                        "field": f"spec.predictors[{i}].traffic",
                        "message": f'Invalid value: "{type(t).__name__}": spec.predictors[{i}].traffic in '
                        f'body must be of type integer: "{type(t).__name__}"',
                    }
                )
            if "graph" not in p:
                causes.append({"field": f"spec.predictors[{i}].graph", "message": "Required value"})
        return causes

    def _reject(self, name: str, causes: list[dict[str, str]]):
        msg = f'{KIND}.{GROUP} "{name}" is invalid: ' + ", ".join(
            f"{c['field']}: {c['message']}" for c in causes
        )
        return self._err(
            422,
            "Invalid",
            msg,
            {
                "name": name,
                "group": GROUP,
                "kind": KIND,
                "causes": [{"reason": "FieldValueInvalid", **c} for c in causes],
            },
        )

    def _create(self, namespace: str, doc: Any, dry: bool):
        meta = (doc or {}).get("metadata") or {}
        name = meta.get("name")
        if not name:
            return self._err(422, "Invalid", "metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            return self._err(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if meta.get("resourceVersion"):
            return self._err(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        causes = self._invalid(name, doc)
        if causes:
            return self._reject(name, causes)
        if (namespace, name) in self.objects:
            return self._err(
                409,
                "AlreadyExists",
                f'{PLURAL}.{GROUP} "{name}" already exists',
                {"name": name, "group": GROUP, "kind": PLURAL},
            )
        self._run_before_write()
        obj = copy.deepcopy(doc)
        obj.pop("status", None)
        obj["metadata"] = {
            **meta,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "resourceVersion": self._next_rv(),
        }
        if not dry:
            self.objects[(namespace, name)] = obj
            self._schedule(namespace, name, 1)
        return self._ok(201, obj)

    def _update(self, namespace: str, name: str, current: dict[str, Any], doc: Any, dry: bool):
        meta = (doc or {}).get("metadata") or {}
        rv = meta.get("resourceVersion")
        if not rv:
            return self._reject(
                name,
                [
                    {
                        "field": "metadata.resourceVersion",
                        "message": "Invalid value: 0x0: must be specified for an update",
                    }
                ],
            )
        if meta.get("name", name) != name:
            return self._err(400, "BadRequest", "the name of the object does not match the name on the URL")
        causes = self._invalid(name, doc)
        if causes:
            return self._reject(name, causes)
        self._run_before_write()
        current = self.objects.get((namespace, name), current)
        if rv != current["metadata"]["resourceVersion"]:
            return self._err(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "group": GROUP, "kind": PLURAL},
            )
        obj = copy.deepcopy(doc)
        obj["status"] = copy.deepcopy(current.get("status"))
        if obj["status"] is None:
            obj.pop("status")
        keep = {k: current["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "namespace")}
        obj["metadata"] = {**meta, **keep}
        changed = obj.get("spec") != current.get("spec")
        if changed:
            obj["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if obj == current:  # a no-op write keeps the resourceVersion
            return self._ok(200, current)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        if not dry:
            self.objects[(namespace, name)] = obj
            if changed:
                self._schedule(namespace, name, obj["metadata"]["generation"])
        return self._ok(200, obj)

    def _run_before_write(self) -> None:
        while self.before_write:
            self.before_write.pop(0)()

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                api.sent.headers = {k.lower(): v for k, v in self.headers.items()}
                code, ctype, data = api.handle(
                    self.command, self.path, self.headers.get("Content-Type") or "", body
                )
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format, *args):  # noqa: A002  (quiet)
                pass

        return Handler


_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/:]+):http/proxy(/.*)$")
_SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets/([^/]+)$")


class ProxyingKubeAPI(FakeKubeAPI):
    """The fake API server plus the core API's service proxy: a POST to ``services/<svc>:http/proxy/<path>``
    is answered by the version ``pods[svc]`` names, predicting in this process as its pods would (Seldon's
    protocol, or V2 on ``/v2/...``); a service in ``keys`` answers 401 without ``api-key: <its key>``, since the
    proxy passes the pod no ``Authorization`` (the API server's own credential). ``secrets[(namespace,
    name)]`` are the Secrets it serves (their values in clear: it answers them base64-encoded)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pods: dict[str, str] = {}  # service -> the version URI its pods serve
        self.keys: dict[str, str] = {}  # service -> the key its pods ask for
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}

    def handle(self, method, raw_path, content_type, body):
        path = raw_path.split("?")[0]
        if (secret := _SECRET.match(path)) is not None:
            return self._secret(secret.group(1), secret.group(2))
        m = _PROXY.match(path)
        if m is None:
            return super().handle(method, raw_path, content_type, body)
        doc, service = json.loads(body), m.group(2)
        with self.lock:
            self.requests.append({"method": method, "path": m.group(0), "service": service, "body": doc})
        if service not in self.pods:
            return self._err(503, "ServiceUnavailable", f'no endpoints available for service "{service}"')
        if service in self.keys and self.sent.headers.get("api-key") != self.keys[service]:
            return 401, "application/json", json.dumps({"error": "a missing or wrong API key"}).encode()
        return self._ok(200, self._predicted(self.pods[service], doc, m.group(3).startswith("/v2/")))

    def _secret(self, namespace: str, name: str):
        import base64

        if (namespace, name) not in self.secrets:
            return self._err(
                404, "NotFound", f'secrets "{name}" not found', {"name": name, "kind": "secrets"}
            )
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[namespace, name].items()}
        return self._ok(200, {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": name}, "data": data})

    @staticmethod
    def _predicted(uri: str, doc: dict, v2: bool) -> dict:
        import numpy as np

        from tests.support.serving import in_process

        if not v2:
            rows = np.asarray(doc["data"]["ndarray"], dtype=np.float32)
            return {
                "data": {"names": stored_sample(uri)["classes"], "ndarray": in_process(uri, rows).tolist()}
            }
        rows = np.asarray([t["data"] for t in doc["inputs"]], dtype=np.float32).T
        out = in_process(uri, rows)
        probabilities = {"name": "probabilities", "datatype": "FP32", "shape": list(out.shape)}
        return {"id": doc.get("id"), "outputs": [{**probabilities, "data": out.reshape(-1).tolist()}]}


def stored_sample(version_uri: str) -> dict:
    """The rows and answers a version stored for its smoke test."""
    from pathlib import Path

    return json.loads(Path(version_uri.removeprefix("file://"), "evaluation", "smoke.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# Kubeflow PyTorchJobs (train.distributed, launcher kubernetes)

JOB_GROUP, JOB_PLURAL, JOB_KIND = "kubeflow.org", "pytorchjobs", "PyTorchJob"
_JOB_PATH = re.compile(rf"^/apis/{re.escape(JOB_GROUP)}/v1/namespaces/([^/]+)/{JOB_PLURAL}(?:/([^/]+))?/?$")


class FakeTrainingAPI(FakeKubeAPI):
    """The fake API server serving PyTorchJobs (``/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}]``:
    get, create, delete) and a fake Training Operator: ``reconcile_after`` seconds after a create the job is
    Created, then Running, and ``ready_after`` seconds later ``outcome`` (Succeeded, or Failed with
    ``failure_reason`` and ``failure_message``). ``on_finish(job)`` runs just before the final condition (where
    rank 0 would have written its outcome). A delete keeps the job ``delete_after`` seconds more with a
    ``deletionTimestamp`` (foreground deletion: its pods go first). The Seldon paths answer as before."""

    def __init__(
        self,
        *,
        outcome: str = "Succeeded",
        failure_reason: str = "PyTorchJobFailed",
        failure_message: str = "PyTorchJob default/x is failed because 1 Master replica(s) failed.",
        delete_after: float = 0.0,
        on_finish: Any = None,
        **kw: Any,
    ) -> None:
        super().__init__(outcome=outcome, **kw)
        self.failure_reason, self.failure_message = failure_reason, failure_message
        self.delete_after = delete_after
        self.on_finish = on_finish

    def handle(self, method, raw_path, content_type, body):
        parts = urlsplit(raw_path)
        m = _JOB_PATH.match(parts.path)
        if m is None and not parts.path.startswith(f"/apis/{JOB_GROUP}/"):
            return super().handle(method, raw_path, content_type, body)
        with self.lock:
            self.requests.append(
                {
                    "method": method,
                    "path": parts.path,
                    "query": parse_qs(parts.query),
                    "content_type": content_type,
                    "body": json.loads(body) if body else None,
                }
            )
            if self.fail_next:
                return self._err(self.fail_next.pop(0), "ServiceUnavailable", "etcdserver: request timed out")
            if m is None or not self.crd_installed:
                return 404, "text/plain; charset=utf-8", b"404 page not found\n"
            namespace, name = m.group(1), m.group(2)
            if self.forbidden:
                return self._err(
                    403,
                    "Forbidden",
                    f'{JOB_PLURAL}.{JOB_GROUP} "{name or ""}" is forbidden',
                    {"name": name or "", "group": JOB_GROUP, "kind": JOB_PLURAL},
                )
            if self.namespaces is not None and namespace not in self.namespaces:
                return self._err(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            if name is None and method == "POST":
                return self._create_job(namespace, json.loads(body) if body else None)
            current = self.objects.get((namespace, name))
            if current is None:
                return self._err(
                    404,
                    "NotFound",
                    f'{JOB_PLURAL}.{JOB_GROUP} "{name}" not found',
                    {"name": name, "group": JOB_GROUP, "kind": JOB_PLURAL},
                )
            if method == "GET":
                return self._ok(200, current)
            if method == "DELETE":
                return self._delete_job(namespace, name, current)
            return self._err(405, "MethodNotAllowed", f"{method} is not supported by this fake")

    def _create_job(self, namespace: str, doc: Any):
        meta = (doc or {}).get("metadata") or {}
        name = meta.get("name")
        if (
            not isinstance(doc, dict)
            or doc.get("kind") != JOB_KIND
            or doc.get("apiVersion") != f"{JOB_GROUP}/v1"
        ):
            return self._err(422, "Invalid", f"must be {JOB_KIND} in {JOB_GROUP}/v1")
        if not isinstance((doc.get("spec") or {}).get("pytorchReplicaSpecs"), dict):
            return self._err(
                422,
                "Invalid",
                f'{JOB_KIND}.{JOB_GROUP} "{name}" is invalid: spec.pytorchReplicaSpecs: Required value',
                {
                    "name": name,
                    "group": JOB_GROUP,
                    "kind": JOB_KIND,
                    "causes": [{"field": "spec.pytorchReplicaSpecs", "message": "Required value"}],
                },
            )
        if (namespace, name) in self.objects:
            return self._err(
                409,
                "AlreadyExists",
                f'{JOB_PLURAL}.{JOB_GROUP} "{name}" already exists',
                {"name": name, "group": JOB_GROUP, "kind": JOB_PLURAL},
            )
        obj = copy.deepcopy(doc)
        obj.pop("status", None)
        obj["metadata"] = {
            **meta,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "resourceVersion": self._next_rv(),
        }
        self.objects[(namespace, name)] = obj
        self._schedule_job(namespace, name, obj["metadata"]["uid"])
        return self._ok(201, obj)

    def _delete_job(self, namespace: str, name: str, current: dict[str, Any]):
        uid = current["metadata"]["uid"]
        if self.delete_after <= 0:
            del self.objects[(namespace, name)]
        else:
            current["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

            def gone() -> None:
                with self.lock:
                    if (self.objects.get((namespace, name)) or {}).get("metadata", {}).get("uid") == uid:
                        del self.objects[(namespace, name)]

            t = threading.Timer(self.delete_after, gone)
            self._timers.append(t)
            t.start()
        return self._ok(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": JOB_GROUP, "kind": JOB_PLURAL, "uid": uid},
            },
        )

    def set_condition(
        self, namespace: str, name: str, kind: str, reason: str = "", message: str = ""
    ) -> None:
        """Add a true condition as the operator would (the earlier ones stay, no longer true when final)."""
        with self.lock:
            obj = self.objects[(namespace, name)]
            conditions = (obj.setdefault("status", {})).setdefault("conditions", [])
            if kind in ("Succeeded", "Failed"):
                for c in conditions:
                    if c["type"] == "Running":
                        c["status"] = "False"
            conditions.append(
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason or f"PyTorchJob{kind}",
                    "message": message or f"PyTorchJob {namespace}/{name} is {kind.lower()}.",
                    "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
            obj["metadata"]["resourceVersion"] = self._next_rv()

    def _schedule_job(self, namespace: str, name: str, uid: str) -> None:
        def step(kind: str) -> None:
            with self.lock:
                obj = self.objects.get((namespace, name))
                if obj is None or obj["metadata"]["uid"] != uid or obj["metadata"].get("deletionTimestamp"):
                    return  # deleted, or replaced by a new job of the same name
                if kind in ("Succeeded", "Failed") and self.on_finish is not None:
                    self.on_finish(copy.deepcopy(obj))
                failed = kind == "Failed"
                self.set_condition(
                    namespace,
                    name,
                    kind,
                    self.failure_reason if failed else "",
                    self.failure_message if failed else "",
                )

        plan = [(self.reconcile_after, "Created"), (2 * self.reconcile_after, "Running")]
        if self.ready_after is not None:
            plan.append((2 * self.reconcile_after + self.ready_after, self.outcome))
        for delay, kind in plan:
            t = threading.Timer(delay, step, (kind,))
            self._timers.append(t)
            t.start()
