"""``freestack serve``: what is served, and a handle on it.

    freestack serve status [--json]                 every deployment: version, URL, pid, health
    freestack serve stop NAME                       stop a local deployment's server
    freestack serve logs NAME [-n 50] [-f]          the local server's log
    freestack serve predict NAME [JSON | -]         send a Seldon message (default: one test row of
                                                    the served version's evaluation) and print the answer
    freestack serve deploy PIPELINE [--version V]   deploy production (or V) now, as the DAG's deploy does
    freestack serve canary PIPELINE promote|rollback|traffic [--percent N]
                                                    Kubernetes: the canary takes over, is removed, or gets N%

NAME is a deployment name (``deploy.name``, default the model name); ``--model`` picks among models
that share one. ``--root`` picks the storage root (default: ``FREESTACK_STORAGE_ROOT``, else the project's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _root(args: argparse.Namespace) -> str:
    from freestack.settings import default_storage_root

    return args.root or default_storage_root()


def _find(args: argparse.Namespace) -> dict[str, Any]:
    from freestack.serving.records import all_deployments

    found = [r for r in all_deployments(_root(args)) if r.get("name") == args.name
             and (not getattr(args, "model", None) or r.get("model") == args.model)]  # fmt: skip
    if not found:
        raise SystemExit(f"no deployment named {args.name!r} under {_root(args)}; see `freestack serve status`")
    if len(found) > 1:
        raise SystemExit(f"{len(found)} models have a deployment {args.name!r}: pass --model")
    return found[0]


def status(args: argparse.Namespace) -> int:
    from freestack.serving.local import describe
    from freestack.serving.records import all_deployments

    records = [describe(r) for r in all_deployments(_root(args))]
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return 0
    if not records:
        print(f"nothing is deployed under {_root(args)}")
        return 0
    for r in records:
        if r.get("target") == "kubernetes":
            canary = f", canary {r['canary_version']} at {r.get('canary_traffic')}%" if r.get("canary_version") else ""
            print(f"{r['model']}/{r['name']}: {r.get('version')} on Kubernetes {r.get('namespace')} "
                  f"({r.get('state')}{canary})")  # fmt: skip
            continue
        state = r.get("state")
        if state == "serving" and not r.get("alive"):
            state = "DOWN (the recorded process is gone: redeploy, e.g. `freestack serve deploy <pipeline>`)"
        print(f"{r['model']}/{r['name']}: {r.get('version')} {state}")
        print(f"  url       {r.get('predict_url')}  (health: {r.get('health') or '-'})")
        print(f"  metrics   {r.get('metrics_url')}")
        print(f"  process   pid {r.get('pid')} ({r.get('color')}), {r.get('workers')} workers x {r.get('threads')} threads")
        print(f"  since     {r.get('deployed_at')}; log {r.get('log')}")
        if r.get("previous"):
            print(f"  previous  {r['previous'].get('version')}")
    return 0


def stop(args: argparse.Namespace) -> int:
    from freestack.serving.local import stop_local

    rec = _find(args)
    stop_local(_root(args), rec["model"], rec["name"])
    print(f"stopped {rec['model']}/{rec['name']} ({rec.get('version')}, pid {rec.get('pid')})")
    return 0


def logs(args: argparse.Namespace) -> int:
    from freestack.serving.local import log_tail

    rec = _find(args)
    path = rec.get("log")
    if not path or not Path(path).exists():
        print(f"{rec['model']}/{rec['name']} has no local log", file=sys.stderr)
        return 1
    print(log_tail(path, args.n))
    if args.follow:
        with open(path, errors="replace") as f:
            f.seek(0, 2)
            try:
                while True:
                    line = f.readline()
                    if line:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        time.sleep(0.5)
            except KeyboardInterrupt:
                return 0
    return 0


def sample_request(rec: dict[str, Any], rows: int = 1) -> tuple[dict[str, Any], list[Any]]:
    """A Seldon message with ``rows`` test rows of the served version's evaluation, and their true labels."""
    from freestack.serving.smoke import smoke_sample

    sample = smoke_sample(rec["version_uri"], rows)
    return {"data": {"names": sample["features"], "ndarray": sample["rows"]}}, sample.get("labels", [])


def predict(args: argparse.Namespace) -> int:
    from freestack.serving.smoke import http_json

    rec = _find(args)
    labels: list[Any] = []
    if args.payload in (None, ""):
        payload, labels = sample_request(rec)
    else:
        text = sys.stdin.read() if args.payload == "-" else args.payload
        try:
            payload = json.loads(text)
        except ValueError as exc:
            print(f"the payload is not valid JSON: {exc}", file=sys.stderr)
            return 2
    code, body = http_json(rec["predict_url"], payload, timeout=30)
    print(json.dumps(body, indent=2) if isinstance(body, dict) else body)
    if code == 200 and isinstance(body, dict) and labels:
        data = body.get("data", {})
        names, probs = data.get("names") or [], data.get("ndarray") or []
        for label, p in zip(labels, probs, strict=False):
            if names and isinstance(p, list):
                best = max(range(len(p)), key=p.__getitem__)
                print(f"predicted {names[best]} (p={p[best]:.3f}); true label {label}")
    return 0 if code == 200 else 1


def deploy(args: argparse.Namespace) -> int:
    from freestack.hooks.credentials import model_source
    from freestack.registry.core import registry_for
    from freestack.serving.local import deploy_local
    from freestack.spec import load_spec, spec_file
    from freestack.storage import storage_root

    spec = load_spec(spec_file(args.pipeline))
    if spec.deploy.target != "local":
        print("this command deploys the local target; trigger the train or rollback DAG for Kubernetes", file=sys.stderr)
        return 2
    reg = registry_for(spec)
    version = reg.resolve(args.version or spec.deploy.alias)
    uri = reg.version_uri(version)
    rec = deploy_local(root_uri=str(storage_root(spec.storage_root)), model=spec.model_name, name=spec.deployment_name,
                       version=version, version_uri=uri, local=spec.deploy.local, spec=spec,
                       reason="freestack serve deploy", source=model_source(uri))  # fmt: skip
    print(f"{spec.model_name} {version} serves at {rec['predict_url']} (pid {rec['pid']})")
    return 0


def canary(args: argparse.Namespace) -> int:
    from freestack.serving import k8s, manifests
    from freestack.serving.records import Deployments
    from freestack.spec import load_spec, spec_file
    from freestack.storage import storage_root

    spec = load_spec(spec_file(args.pipeline))
    if spec.deploy.target != "kubernetes":
        print("canaries are a Kubernetes feature: this pipeline deploys locally (blue/green)", file=sys.stderr)
        return 2
    t = spec.deploy.kubernetes
    name = spec.deployment_name
    if args.action == "promote":
        obj = k8s.promote_canary(name, t.namespace, t.conn_id)
    elif args.action == "rollback":
        obj = k8s.rollback_canary(name, t.namespace, t.conn_id)
    else:
        if args.percent is None:
            print("traffic needs --percent N (0-100)", file=sys.stderr)
            return 2
        obj = k8s.set_traffic(name, t.namespace, t.conn_id, canary_traffic=args.percent)
    summary = manifests.summary(obj)
    deployments = Deployments(args.root or str(storage_root(spec.storage_root)), spec.model_name)
    record, token = deployments.read(name)
    record = dict(record or {"name": name, "model": spec.model_name, "target": "kubernetes"})
    if args.action == "promote":
        record.update(version=record.get("canary_version") or record.get("version"), canary_version=None,
                      canary_traffic=0)  # fmt: skip
    elif args.action == "rollback":
        record.update(canary_version=None, canary_traffic=0)
    else:
        record.update(canary_traffic=args.percent)
    deployments.write(name, record, token)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="what is served: status, stop, logs, predict, deploy",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--root", default=None, help="storage root (default: FREESTACK_STORAGE_ROOT or the project's)")
    ss = p.add_subparsers(dest="serve_cmd", required=True)
    s = ss.add_parser("status", help="every deployment with its health")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=status)
    for name, fn, help_ in (("stop", stop, "stop a local deployment"), ("logs", logs, "show a server's log"),
                            ("predict", predict, "send a prediction request")):  # fmt: skip
        q = ss.add_parser(name, help=help_)
        q.add_argument("name")
        q.add_argument("--model", default=None)
        if name == "logs":
            q.add_argument("-n", type=int, default=50)
            q.add_argument("-f", "--follow", action="store_true")
        if name == "predict":
            q.add_argument("payload", nargs="?", default=None, help="a Seldon message as JSON, or - for stdin")
        q.set_defaults(fn=fn)
    d = ss.add_parser("deploy", help="deploy a pipeline's production version locally now")
    d.add_argument("pipeline")
    d.add_argument("--version", default=None)
    d.set_defaults(fn=deploy)
    c = ss.add_parser("canary", help="Kubernetes: promote or roll back the canary, or set its traffic")
    c.add_argument("pipeline")
    c.add_argument("action", choices=("promote", "rollback", "traffic"))
    c.add_argument("--percent", type=int, default=None)
    c.set_defaults(fn=canary)
