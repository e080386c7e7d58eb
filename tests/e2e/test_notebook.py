"""docs/notebooks/explore.ipynb runs from top to bottom on the state ``make demo`` left (the demo sandbox).

The notebook is executed headless with nbclient, in the kernel ``make venv`` installs (``freestack
(.venv)``: the project's environment), with the sandbox's state passed as a user's checkout passes it:
``FREESTACK_HOME`` and ``FREESTACK_STORAGE_ROOT``, the stack's ``AIRFLOW_HOME`` and port, W&B offline. One
cell is added at the end to hand what the notebook computed back to the test as JSON; the figures (the
window's distributions, production's evaluation plots) and the two links (production's page in freestack,
the Airflow run that trained it) are read off the cells' outputs, as a reader sees them. The notebook only
reads the registry and the lake: they are the same afterwards. Its run time is printed and recorded
(``notebook_seconds`` in the JUnit properties).

Slow (the real demo under the real scheduler): ``-m slow``.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "notebooks" / "explore.ipynb"
pytestmark = pytest.mark.slow

#: the cell added at the end: what the notebook computed, as one JSON line
REPORT = """import json, sys
print(json.dumps({
    "executable": sys.executable,
    "production": production.lineage.version,
    "accuracy": {name: float(value) for name, value in accuracy.items()},
    "test_rows": len(test),
    "disagree": len(disagree),
    "trial_epochs": trial.summary.get("epochs_run"),
    "run_dir": trial.tracking.get("run_dir"),
    "mode": trial.tracking.get("mode"),
    "scored": len(scores),
    "scored_by": planned["version"],
    "reasons": quarantine["_reason"].tolist(),
    "figures": sorted(figures),
    "work": str(WORK),
}))"""


def _kernel() -> None:
    """The notebook's kernel is installed in ``.venv`` itself when the environment is made (``make venv``),
    so the documented headless run finds it without ``make notebook`` having run."""
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().find_kernel_specs().get("freestack")
    assert found and Path(found).is_relative_to(Path(sys.prefix)), found


def _shown(nb) -> tuple[list[bytes], str]:
    """(every PNG the cells show, decoded; the HTML they show, joined)."""
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    data = [o.get("data", {}) for o in outputs]
    return [base64.b64decode(d["image/png"]) for d in data if "image/png" in d], "\n".join(
        d["text/html"] for d in data if "text/html" in d
    )


def _check_figures_and_links(nb, report: dict, sandbox, production: str) -> None:
    """The window's distributions and production's evaluation plots are drawn (PNG outputs, headless);
    production's page and the Airflow run its lineage records are links on the sandbox's stack."""
    images, shown = _shown(nb)
    assert report["figures"] == ["confusion_matrix.png", "learning_curves.png", "per_class.png"], report
    assert len(images) == 1 + len(report["figures"]), [len(i) for i in images]
    assert all(i.startswith(b"\x89PNG\r\n\x1a\n") and len(i) > 5000 for i in images)
    lineage = json.loads((sandbox.storage / "registry" / "digits" / production / "lineage.json").read_text())
    run = lineage["airflow"]
    assert run["dag_id"] == "digits_train" and run["run_id"], run
    page = f"{sandbox.url}/plugin/freestack/models/digits/{production}"
    trained = f"{sandbox.url}/dags/digits_train/runs/{quote(run['run_id'], safe='')}"
    assert f'href="{page}"' in shown and f'href="{trained}"' in shown, shown[-2000:]


def _registry_files(storage: Path) -> dict[str, int]:
    return {
        str(p.relative_to(storage)): p.stat().st_size
        for p in (storage / "registry").rglob("*")
        if p.is_file()
    }


def test_the_notebook_runs_on_the_demos_state(demo, sandbox, tmp_path, monkeypatch, record_property):
    import nbformat
    from nbclient import NotebookClient

    _kernel()
    env = {
        "FREESTACK_HOME": str(sandbox.base),
        "FREESTACK_STORAGE_ROOT": sandbox.storage.as_uri(),
        "AIRFLOW_HOME": sandbox.env["AIRFLOW_HOME"],
        "AIRFLOW_PORT": sandbox.env["AIRFLOW_PORT"],  # as `make notebook AIRFLOW_PORT=...` passes it
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
    }
    for name in ("AIRFLOW__API__BASE_URL", "AIRFLOW__API__PORT"):
        monkeypatch.delenv(name, raising=False)  # the stack's address comes from the variables above
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the kernel starts with the test's environment
    before = _registry_files(sandbox.storage)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "freestack"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.outputs or c.execution_count for c in code), (
        "commit the notebook with its outputs cleared"
    )
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    started = time.monotonic()
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.monotonic() - started
    record_property("notebook_seconds", round(seconds, 1))
    report = json.loads(nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
    shown = ", ".join(f"{name} {value:.4f}" for name, value in report["accuracy"].items())
    print(
        f"docs/notebooks/explore.ipynb ran in {seconds:.1f} s on the demo's state: test accuracy {shown}; "
        f"they disagree on {report['disagree']} of {report['test_rows']} test rows"
    )

    assert Path(report["executable"]).parent == Path(sys.executable).parent, report  # the project's .venv
    production = json.loads((sandbox.storage / "registry" / "digits" / "aliases.json").read_text())[
        "production"
    ]
    assert report["production"] == report["scored_by"] == production, report
    accuracy = report["accuracy"]
    assert accuracy[f"production {production}"] >= 0.9, accuracy  # the gate's threshold, which it passed
    assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy.values()), accuracy
    assert report["test_rows"] > 100 and 0 <= report["disagree"] <= report["test_rows"], report
    assert report["trial_epochs"] == 2 and report["mode"] == "offline", report
    assert Path(report["run_dir"]).is_relative_to(tmp_path / "wandb") and Path(report["run_dir"]).is_dir()
    assert report["scored"] == 19 and report["reasons"] == ["px_0: not a number: 'twelve'"], report
    assert Path(report["work"]).is_relative_to(sandbox.base / ".freestack" / "notebook"), report
    _check_figures_and_links(nb, report, sandbox, production)
    assert _registry_files(sandbox.storage) == before  # read only: nothing registered, nothing moved
