"""What the CLI prints about a pipeline: its lake, and what a train run did (sweep, model, gate, serving)."""

from __future__ import annotations

import json

from freestack.cli.output import plural
from freestack.cli.serve import sample_request
from freestack.registry.core import ModelRegistry
from freestack.serving.records import Deployments
from freestack.spec import load_spec, spec_file
from freestack.storage import join, storage_root
from freestack.version.files import LINEAGE, METRICS
from freestack.version.write import read_lineage


def lake_data(pipeline: str) -> dict:
    """A pipeline's lake: its root and, per partition, rows, quarantined rows, the part's sha256 and the
    quarantine reasons with their counts."""
    from freestack.ingest.core import lake_summary

    spec = load_spec(spec_file(pipeline))
    partitions = [
        {**{k: p[k] for k in ("ds", "rows", "quarantined", "sha256")}, "quarantine_reasons": p["reasons"]}
        for p in lake_summary(spec)
    ]
    return {"pipeline": pipeline, "root": str(spec.root), "partitions": partitions}


def lake_report(pipeline: str) -> str:
    data = lake_data(pipeline)
    lines = [f"lake of {pipeline!r} under {data['root']}:"]
    for p in data["partitions"]:
        rows = "?" if p["rows"] is None else p["rows"]
        lines.append(
            f"  ds={p['ds']}  {rows:>5} rows  {p['quarantined']:>3} quarantined  "
            f"part sha256 {str(p['sha256'] or '?')[:12]}"
        )
        lines += [f"      quarantine: {n} x {reason}" for reason, n in p["quarantine_reasons"].items()]
    if not data["partitions"]:
        lines.append("  (no partitions yet)")
    return "\n".join(lines)


def serve_report(pipeline: str) -> str:
    """What is served now: the URL, a curl command with one real test digit, and the running server's answer."""
    from freestack.serving.smoke import http_json

    spec = load_spec(spec_file(pipeline))
    rec = Deployments(str(storage_root(spec.storage_root)), spec.model_name).get(spec.deployment_name)
    if not rec or rec.get("state") != "serving":
        return "\nnothing is served (the gate blocked every version so far?)"
    payload, labels = sample_request(rec)
    row = [int(v) if float(v).is_integer() else v for v in payload["data"]["ndarray"][0]]
    body = json.dumps({"data": {"ndarray": [row]}}, separators=(",", ":"))
    code, answer = http_json(rec["predict_url"], payload)
    lines = [
        f"\nserved: {spec.model_name} {rec['version']} by the model server (pid {rec['pid']}) at {rec['url']}",
        f"  smoke test: {plural(int(rec['smoke']['rows']), 'test row')} answered exactly as in evaluation "
        f"(max |diff| {rec['smoke']['max_abs_diff']:.1e})",
        "  try it:",
        f"    curl -s -H 'Content-Type: application/json' -d '{body}' {rec['predict_url']}",
    ]
    if code == 200:
        names, probs = answer["data"]["names"], answer["data"]["ndarray"][0]
        best = max(range(len(probs)), key=probs.__getitem__)
        lines.append(
            f"  the server answered: digit {names[best]} (p={probs[best]:.3f}); true label: {labels[0]}"
        )
    else:
        lines.append(f"  the server answered HTTP {code}: {answer}")
    lines += [
        f"  metrics (Prometheus): {rec['metrics_url']}",
        f"  manage it: freestack serve status | logs {rec['name']} | predict {rec['name']} | stop {rec['name']}",
    ]
    return "\n".join(lines)


def gate_report(pipeline: str, run_id: str) -> str:
    """Champion vs challenger of ``run_id``: the gate's decision and reasons, the report, the aliases."""
    models, version, lineage = version_of_run(pipeline, run_id)
    if version is None:
        return f"(no registered version for run {run_id})"
    gate, ev = lineage.get("gate") or {}, lineage.get("evaluation") or {}
    verdict = "PROMOTED to production" if gate.get("promote") else "BLOCKED (production unchanged)"
    lines = [f"gate: {version.name} {verdict}"]
    lines += [f"  - {r}" for r in gate.get("reasons", [])]
    lines.append(f"  registry: {version} (model card: README.md)")
    lines.append(f"  evaluation report: {ev.get('report')}")
    aliases = ModelRegistry(models.parent.parent, models.name).aliases()
    lines.append(f"  aliases: production={aliases.get('production')} previous={aliases.get('previous')}")
    return "\n".join(lines)


def sweep_report(pipeline: str, run_id: str) -> str:
    """The sweep of ``run_id``, if it ran one: trials, early stops, epochs, the best, the table and plot."""
    spec = load_spec(spec_file(pipeline))
    runs = join(storage_root(spec.storage_root), "runs", spec.name)
    for folder in sorted(runs.iterdir(), key=lambda p: p.name) if runs.exists() else []:
        best_path, sweep_path = folder / "best.json", folder / "sweep.json"
        if not (sweep_path.exists() and best_path.exists()):
            continue
        if json.loads(sweep_path.read_text())["request"].get("airflow", {}).get("run_id") != run_id:
            continue
        best = json.loads(best_path.read_text())
        trials = json.loads(join(folder, "results.json").read_text())["trials"]
        lines = [
            f"sweep {best['sweep_id']} ({best['method']} search, {plural(int(best['trials']), 'trial')}): "
            f"{best['stopped_early']} stopped early by hyperband early termination, {best['epochs_total']} epochs in all",
            f"  {'trial':<6} {'state':<9} {'epochs':>6} {best['metric']:>13}  params",
        ]
        for t in trials:
            params = ", ".join(
                f"{k[6:]}={v:.3g}" if isinstance(v, float) else f"{k[6:]}={v}"
                for k, v in t.items()
                if k.startswith("param.")
            )
            value = t.get(best["metric"])
            mark = " *" if t["trial"] == best["best_trial"] else ""
            state = "stopped" if t["stopped_early"] else t["state"]
            lines.append(
                f"  {t['trial']:<6} {state:<9} {t['epochs']:>6} {value if value is None else f'{value:.4f}':>13}  {params}{mark}"
            )
        lines.append(f"  best: {best['best_trial']} {best['metric']} {best['best_value']:.4f}")
        lines.append(f"  table: {best['results_csv']}\n  plot:  {best['plot']}")
        return "\n".join(lines)
    return "(no sweep in this run)"


def version_of_run(pipeline: str, run_id: str):
    """(the registry folder, the model folder, its lineage) of the model Airflow run ``run_id`` made."""
    spec = load_spec(spec_file(pipeline))
    models = join(storage_root(spec.storage_root), "registry", spec.model_name)
    for version in sorted(models.iterdir(), key=lambda p: p.name, reverse=True) if models.exists() else []:
        if not (version / LINEAGE).exists():
            continue
        lineage = read_lineage(version).as_dict()
        if lineage.get("airflow", {}).get("run_id") == run_id:
            return models, version, lineage
    return models, None, None


def train_report(pipeline: str, run_id: str) -> str:
    """Test metrics, model version and W&B run of the training done by ``run_id``."""
    models, version, lineage = version_of_run(pipeline, run_id)
    if version is None:
        return f"no model version of run {run_id} under {models}"
    metrics = json.loads((version / METRICS).read_text())
    wb = lineage.get("wandb") or {}
    lines = [f"model version: {version}"]
    lines += [f"  {k:<16} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test_")]
    lines.append(
        f"  trained on {plural(len(lineage['partitions']), 'partition')} up to {lineage['window']['end_ds']}"
    )
    if wb.get("url"):
        lines.append(f"W&B run: {wb['url']}")
    elif wb.get("run_dir"):
        lines.append(f"W&B offline run: {wb['run_dir']}\n  upload later with: {wb['sync_command']}")
    return "\n".join(lines)


__all__ = [
    "gate_report",
    "lake_data",
    "lake_report",
    "serve_report",
    "sweep_report",
    "train_report",
    "version_of_run",
]
