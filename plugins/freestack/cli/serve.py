"""``freestack serve``: what is served, and a handle on it.

NAME is a deployment name (``deploy.name``, default the model name); ``--model`` picks among models
that share one. ``--root`` picks the storage root (default: ``FREESTACK_STORAGE_ROOT``, else the project's).
"""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from freestack.cli.common import Json, Pipeline, Root, load_pipeline
from freestack.cli.errors import CliError
from freestack.cli.output import out, print_json
from freestack.hooks.credentials import deployment_key
from freestack.kube import KubeRef
from freestack.registry.core import registry_for
from freestack.serving import manifests, seldon_deployments
from freestack.serving.records import Deployments, alias_drift, all_deployments, live_state
from freestack.settings import default_storage_root
from freestack.storage import storage_root

app = typer.Typer(
    help="What is served: status, stop, logs, predict, deploy, canary. NAME is a deployment name "
    "(deploy.name, default the model name); --model picks among models that share one.",
    no_args_is_help=True,
)

Name = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="Deployment name (see `freestack serve status`).", show_default=False
    ),
]
Model = Annotated[
    str | None,
    typer.Option(help="The model, when several models have a deployment NAME.", show_default=False),
]
_ROOT = "freestack.serve.root"


@app.callback()
def _group(ctx: typer.Context, root: Root = None) -> None:
    ctx.meta[_ROOT] = root


def _root(ctx: typer.Context) -> str:
    return ctx.meta.get(_ROOT) or default_storage_root()


def _find(ctx: typer.Context, name: str, model: str | None) -> dict[str, Any]:
    records = all_deployments(_root(ctx))
    found = [r for r in records if r.get("name") == name and (not model or r.get("model") == model)]
    if not found:
        known = sorted({f"{r.get('model')}/{r.get('name')}" for r in records})
        raise CliError(
            f"no deployment named {name!r}"
            + (f" of model {model!r}" if model else "")
            + f" under {_root(ctx)}",
            f"deployments: {', '.join(known)}"
            if known
            else "nothing is deployed there: `freestack serve deploy PIPELINE`",
        )
    if len(found) > 1:
        raise CliError(
            f"{len(found)} models have a deployment {name!r}",
            "pass --model " + " or --model ".join(sorted(str(r.get("model")) for r in found)),
        )
    return found[0]


@app.command()
def status(ctx: typer.Context, json: Json = False) -> int:
    """Every deployment: version, URL, process, health."""
    from freestack.serving.local import describe

    records = [describe(r) for r in all_deployments(_root(ctx))]
    for r in records:
        r["alias_drift"] = alias_drift(_root(ctx), r)
    if json:
        print_json(records)
        return 0
    console = out()
    if not records:
        console.print(f"nothing is deployed under {_root(ctx)}")
        return 0
    for r in records:
        for line in _status_lines(r):
            console.print(line)
    return 0


def _status_lines(r: dict[str, Any]) -> list[str]:
    if r.get("target") == "kubernetes":
        canary = (
            f", canary {r['canary_version']} at {r.get('canary_traffic')}%" if r.get("canary_version") else ""
        )
        drift = [f"  MISMATCH  {r['alias_drift']}"] if r.get("alias_drift") else []
        return [
            f"{r['model']}/{r['name']}: {r.get('version')} on Kubernetes {r.get('namespace')} ({r.get('state')}{canary})",
            *drift,
        ]
    state, why = live_state(r)
    state = f"{state} ({why})" if why else state
    lines = [
        f"{r['model']}/{r['name']}: {r.get('version')} {state}",
        f"  url       {r.get('predict_url')}  (health: {r.get('health') or '-'})",
        f"  metrics   {r.get('metrics_url')}",
        *(
            [
                f"  grpc      {r['grpc_address']}  (the {r.get('color')} server's own; it moves with each deploy)"
            ]
            if r.get("grpc_address")
            else []
        ),
        f"  process   pid {r.get('pid')} ({r.get('color')}), {r.get('workers')} workers x {r.get('threads')} threads",
        f"  since     {r.get('deployed_at')}; log {r.get('log')}",
    ]
    if r.get("previous"):
        lines.append(f"  previous  {r['previous'].get('version')}")
    if r.get("alias_drift"):
        lines.insert(1, f"  MISMATCH  {r['alias_drift']}")
    return lines


@app.command()
def stop(ctx: typer.Context, name: Name, model: Model = None) -> int:
    """Stop a local deployment's server."""
    from freestack.serving.local import stop_local

    rec = _find(ctx, name, model)
    stop_local(_root(ctx), rec["model"], rec["name"])
    out().print(f"stopped {rec['model']}/{rec['name']} ({rec.get('version')}, pid {rec.get('pid')})")
    return 0


@app.command()
def logs(
    ctx: typer.Context,
    name: Name,
    model: Model = None,
    n: Annotated[int, typer.Option("-n", help="How many lines from the end.")] = 50,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing what is appended (Ctrl-C stops).")
    ] = False,
) -> int:
    """A local server's log."""
    from freestack.serving.launch import log_tail

    rec = _find(ctx, name, model)
    path = rec.get("log")
    if not path or not Path(path).exists():
        raise CliError(
            f"{rec['model']}/{rec['name']} has no local log" + (f" at {path}" if path else ""),
            "a Kubernetes deployment's logs are its pods' (kubectl logs)",
        )
    print(log_tail(path, n), flush=True)
    if follow:
        _follow(path)
    return 0


def _follow(path: str) -> None:
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
            return


def sample_request(rec: dict[str, Any], rows: int = 1) -> tuple[dict[str, Any], list[Any]]:
    """A request with ``rows`` test rows of the served version's evaluation, and their true labels: a
    Seldon message, or a V2 inference request when the deployment's runtime is MLServer."""
    from freestack.serving.smoke import smoke_sample, v2_request

    sample = smoke_sample(rec["version_uri"], rows)
    if sample.get("task") == "generation":  # the first test prompt, and the answer evaluation got
        chat, n = sample["chats"][0], sample.get("max_new_tokens", 32)
        if rec.get("runtime") == "mlserver":
            return {
                "inputs": [
                    {
                        "name": "args",
                        "datatype": "BYTES",
                        "shape": [len(chat)],
                        "parameters": {"content_type": "hg_jsonlist"},
                        "data": [json.dumps(m) for m in chat],
                    }
                ],
                "parameters": {"max_new_tokens": n},
            }, sample["outputs"][:1]
        return {"jsonData": {"messages": chat, "parameters": {"max_new_tokens": n}}}, sample["outputs"][:1]
    if rec.get("runtime") == "mlserver":
        return {"inputs": v2_request(sample)["inputs"]}, sample.get("labels", [])
    return {"data": {"names": sample["features"], "ndarray": sample["rows"]}}, sample.get("labels", [])


def _payload(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    if text in (None, ""):
        return None, None
    raw = sys.stdin.read() if text == "-" else text
    try:
        return json.loads(raw), raw
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc})", param_hint="PAYLOAD") from None


@app.command()
def predict(
    ctx: typer.Context,
    name: Name,
    payload: Annotated[
        str | None,
        typer.Argument(
            metavar="PAYLOAD",
            help="A Seldon message (or, for runtime: mlserver, a V2 inference request) as JSON, or - for stdin (default: one test row of the served version).",
            show_default=False,
        ),
    ] = None,
    model: Model = None,
) -> int:
    """Send a prediction request and print the answer."""
    from freestack.serving.smoke import http_json, keyed_post

    body, _ = _payload(payload)  # a bad payload is reported before anything else is looked up
    rec = _find(ctx, name, model)
    labels: list[Any] = []
    if body is None:
        body, labels = sample_request(rec)
    code, answer = (keyed_post(deployment_key(rec)) or http_json)(rec["predict_url"], body, timeout=30)
    print(json.dumps(answer, indent=2) if isinstance(answer, dict) else answer, flush=True)
    if code == 200 and isinstance(answer, dict) and labels:
        if "completions" in (answer.get("jsonData") or {}):
            out().print(f"evaluation's answer: {labels[0]!r}")
        elif not _generated(answer):
            for label, (cls, p) in zip(labels, _predicted(answer), strict=False):
                out().print(f"predicted {cls} (p={p:.3f}); true label {label}")
    return 0 if code == 200 else 1


def _generated(answer: dict[str, Any]) -> bool:
    """Whether an answer is a text-generation model's (a V2 ``output`` of generated texts)."""
    return any(o.get("name") == "output" for o in answer.get("outputs") or [])


def _predicted(answer: dict[str, Any]) -> list[tuple[str, float]]:
    """(class, probability) of each row's prediction: from Seldon's ``data``, or V2's ``label`` and
    ``probabilities`` outputs."""
    if "outputs" in answer:
        out = {o.get("name"): o for o in answer["outputs"]}
        labels, probs = (out.get("label") or {}).get("data") or [], out.get("probabilities") or {}
        width = (probs.get("shape") or [0, 1])[-1] or 1
        data = probs.get("data") or []
        return [
            (str(lab), max(data[k * width : (k + 1) * width], default=0.0)) for k, lab in enumerate(labels)
        ]
    data = answer.get("data", {})
    names, rows = data.get("names") or [], data.get("ndarray") or []
    out_rows = []
    for p in rows:
        if names and isinstance(p, list):
            best = max(range(len(p)), key=p.__getitem__)
            out_rows.append((str(names[best]), p[best]))
    return out_rows


@app.command()
def deploy(
    pipeline: Pipeline,
    version: Annotated[
        str | None,
        typer.Option(
            help="A version or alias (default: the spec's deploy.alias, production).", show_default=False
        ),
    ] = None,
) -> int:
    """Deploy a pipeline's production version (or --version) locally now, as the DAG's deploy does."""
    from freestack.serving.operators import deploy_spec_locally  # Airflow's SDK: when the command runs

    spec = load_pipeline(pipeline)
    if spec.deploy.target != "local":
        raise CliError(
            f"pipeline {pipeline!r} deploys to {spec.deploy.target}, and this command deploys the local target",
            "trigger its train or rollback DAG for Kubernetes",
        )
    reg = registry_for(spec)
    by_alias = version in (None, spec.deploy.alias)
    version = reg.resolve(version or spec.deploy.alias)
    rec = deploy_spec_locally(
        spec,
        version,
        reg.version_uri(version),
        reason="freestack serve deploy",
        alias=spec.deploy.alias if by_alias else None,
    )
    out().print(f"{spec.model_name} {version} serves at {rec['predict_url']} (pid {rec['pid']})")
    return 0


class CanaryAction(StrEnum):
    promote = "promote"
    rollback = "rollback"
    traffic = "traffic"


@app.command()
def canary(
    ctx: typer.Context,
    pipeline: Pipeline,
    action: Annotated[
        CanaryAction,
        typer.Argument(
            metavar="ACTION",
            help="promote: the canary takes over; rollback: it is removed; traffic: it gets --percent.",
            show_default=False,
        ),
    ],
    percent: Annotated[
        int | None,
        typer.Option(
            min=0, max=100, help="The canary's share of traffic (with traffic).", show_default=False
        ),
    ] = None,
) -> int:
    """Kubernetes: promote or roll back the canary, or set its traffic."""
    spec = load_pipeline(pipeline)
    if spec.deploy.target != "kubernetes":
        raise CliError(
            f"pipeline {pipeline!r} deploys locally (blue/green), and canaries are a Kubernetes feature",
            "`freestack serve deploy` switches a local deployment",
        )
    if action is CanaryAction.traffic and percent is None:
        raise typer.BadParameter("traffic needs --percent N (0-100)", param_hint="--percent")
    t = spec.deploy.kubernetes
    deployment = KubeRef(spec.deployment_name, t.namespace, t.conn_id)
    if action is CanaryAction.promote:
        obj = seldon_deployments.promote_canary(deployment)
    elif action is CanaryAction.rollback:
        obj = seldon_deployments.rollback_canary(deployment)
    else:
        obj = seldon_deployments.set_traffic(deployment, canary_traffic=percent)
    _record_canary(ctx, spec, action, percent)
    print_json(manifests.summary(obj))
    return 0


def _record_canary(ctx: typer.Context, spec, action: CanaryAction, percent: int | None) -> None:
    name = spec.deployment_name
    deployments = Deployments(ctx.meta.get(_ROOT) or str(storage_root(spec.storage_root)), spec.model_name)
    record, token = deployments.read(name)
    record = dict(record or {"name": name, "model": spec.model_name, "target": "kubernetes"})
    if action is CanaryAction.promote:
        record.update(
            version=record.get("canary_version") or record.get("version"),
            canary_version=None,
            canary_traffic=0,
        )
    elif action is CanaryAction.rollback:
        record.update(canary_version=None, canary_traffic=0)
    else:
        record.update(canary_traffic=percent)
    deployments.write(name, record, token)


__all__ = ["app", "sample_request"]
