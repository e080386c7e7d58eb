"""The demo's closing summary: what the train run did, in a few lines (the full reports go to the log)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from freestack.cli.output import plural
from freestack.cli.reports import gate_report, serve_report, sweep_report, train_report, version_of_run
from freestack.spec import load_spec, spec_file
from freestack.storage import join, storage_root


def summary_lines(pipeline: str, run_id: str, tis: list[dict], detail: Callable[[str], None]) -> list[str]:
    """Summary lines for train run ``run_id`` (its task instances from the REST API); ``detail`` gets the
    full reports."""
    for report in (sweep_report, train_report, gate_report):
        detail(report(pipeline, run_id))
    served = serve_report(pipeline)
    detail(served)
    _, version, lineage = version_of_run(pipeline, run_id)
    lines = [*_sweep_lines(pipeline, run_id, tis)]
    if version is None:
        return [*lines, f"no model version was registered by {run_id}"]
    metrics = json.loads((version / "metrics.json").read_text())
    tests = sorted((k, v) for k, v in metrics.items() if k.startswith("test_"))[:4]
    lines.append("  test: " + "  ".join(f"{k[5:]} {v:.4f}" for k, v in tests))
    gate = lineage.get("gate") or {}
    verdict = "promoted to production" if gate.get("promote") else "BLOCKED: production unchanged"
    lines.append(f"  gate: {version.name} {verdict}")
    lines += [f"    - {r}" for r in gate.get("reasons", [])[:4]]
    lines.append(f"  model version: {version}  (`freestack models show {pipeline} {version.name}`)")
    lines += _wandb_lines(lineage.get("wandb") or {})
    lines += [line for line in served.splitlines() if line.strip()][:8]
    return lines


def _sweep_lines(pipeline: str, run_id: str, tis: list[dict]) -> list[str]:
    spec = load_spec(spec_file(pipeline))
    agents = [t for t in tis if t["task_id"] == "agent" and t.get("start_date") and t.get("end_date")]
    if not agents:
        return ["  trained once (no sweep)"]
    runs = join(storage_root(spec.storage_root), "runs", spec.name)
    best = None
    for folder in runs.iterdir() if runs.exists() else []:
        sweep = folder / "sweep.json"
        if (
            sweep.exists()
            and json.loads(sweep.read_text())["request"].get("airflow", {}).get("run_id") == run_id
        ):
            best = json.loads((folder / "best.json").read_text()) if (folder / "best.json").exists() else None
    spans = [(_ts(t["start_date"]), _ts(t["end_date"])) for t in agents]
    overlap = max(0.0, min(e for _, e in spans) - max(s for s, _ in spans))
    head = f"  sweep: {len(agents)} agents, side by side for {overlap:.0f} s"
    if best is None:
        return [head]
    return [
        f"{head}; {best['method']} search, {plural(int(best['trials']), 'trial')}, {best['stopped_early']} stopped early "
        "by hyperband early termination",
        f"  best trial: {best['best_trial']} {best['metric']} {best['best_value']:.4f}  (table: {best['results_csv']})",
    ]


def _wandb_lines(wb: dict) -> list[str]:
    if wb.get("url"):
        return [f"  W&B run: {wb['url']}"]
    if wb.get("run_dir"):
        return [f"  W&B (offline): {wb['run_dir']}", f"    upload it: {wb['sync_command']}"]
    return []


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


__all__ = ["summary_lines"]
