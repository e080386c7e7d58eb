"""What the ``freestack`` command says, read as a user reads it: ``validate`` names every DAG the DAG
factory builds and the real task, ``--help`` reads like a normal CLI (``--flag / --no-flag``, no
``<bool>``), ``down`` names each process it had to kill, pydantic's wording stays out of error lines,
and a count of one is singular."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pytest

from freestack.cli import command, main

PIPELINES = Path(__file__).resolve().parents[3] / "include" / "pipelines"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def test_validate_lists_every_dag_the_factory_builds_and_which_start_paused(capsys, tmp_path, monkeypatch):
    from freestack.dags import build_all

    for name in ("digits", "reviews"):
        shutil.copy(PIPELINES / f"{name}.yaml", tmp_path / f"{name}.yaml")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path))
    code, out, err = run(capsys, "validate", "--json")
    assert code == 0 and err == ""
    listed = {r["pipeline"]: r for r in json.loads(out)}
    built = build_all({}, tmp_path)
    for name, result in listed.items():
        dags = [d for d in built if d.dag_id.startswith(f"{name}_")]
        assert result["dags"] == [d.dag_id for d in dags]
        assert len(dags) == 6 and {f"{name}_promote", f"{name}_monitor", f"{name}_score"} <= set(
            result["dags"]
        )
        # manual DAGs are created unpaused; the others follow Airflow's default (paused)
        assert result["paused_at_creation"] == [
            d.dag_id for d in dags if d.is_paused_upon_creation is not False
        ]
    code, out, _ = run(capsys, "validate")
    digits, reviews = out.splitlines()
    assert (
        ": DAGs digits_ingest, digits_train, digits_rollback, digits_promote, digits_monitor, digits_score "
        in digits
    )
    assert "(digits_ingest, digits_train, digits_monitor, digits_score start paused)" in digits


def test_validate_prints_a_pretrained_models_own_task(capsys, tmp_path, monkeypatch):
    shutil.copy(PIPELINES / "reviews.yaml", tmp_path / "reviews.yaml")
    text = (PIPELINES / "digits.yaml").read_text()
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path))
    code, out, _ = run(capsys, "validate", "reviews")
    assert code == 0 and out.rstrip().endswith("; task text-classification"), out
    code, out, _ = run(capsys, "validate", "--json", "reviews")
    assert json.loads(out)[0]["task"] == "text-classification"
    (tmp_path / "digits.yaml").write_text(text)
    code, out, _ = run(capsys, "validate", "digits")
    assert code == 0 and out.rstrip().endswith("; task classification"), out


def _leaves(cmd, path):
    subs = getattr(cmd, "commands", {})
    if not subs:
        yield path
    for name, sub in subs.items():
        yield from _leaves(sub, [*path, name])


def test_help_shows_flags_as_flags(capsys):
    """No ``<bool>`` metavar on any flag, and a flag with a negative form reads ``--x / --no-x``."""
    checked = 0
    for path in _leaves(command(), []):
        if path == ["airflow"]:
            continue  # its --help is airflow's own
        code, out, _ = run(capsys, *path, "--help")
        assert code == 0 and out.startswith("Usage: freestack"), (path, out)
        assert "<bool>" not in out, (path, out)
        checked += 1
    assert checked > 20
    _, out, _ = run(capsys, "models", "show", "--help")
    assert "--details / --no-details" in out
    _, out, _ = run(capsys, "backfill", "--help")
    flags = {ln.split()[0] for ln in out.splitlines() if ln.strip().startswith("--")}
    assert {"--unpause", "--no-downstream", "--dry-run"} <= flags
    assert any(
        ln.split() == ["--dry-run", "Print", "the", "plan", "(the", "days,", "what", "they", "set", "off)"]
        for ln in out.splitlines()
    )


def test_down_names_each_process_it_killed(capsys):
    from freestack.cli.stack import _report
    from freestack.runtime.procs import Stopped

    stack = [
        Stopped(101, "airflow scheduler", "TERM"),
        Stopped(102, "airflow worker -- LocalExecutor", "KILL"),
        Stopped(103, "python -c import time", "KILL"),
    ]
    _report("/x/airflow", stack, None, [(104, "model server of digits v3 on 127.0.0.1:9000", "KILL")], 30.0)
    lines = capsys.readouterr().out.splitlines()
    assert "stopped 3 processes of the embedded Airflow (AIRFLOW_HOME /x/airflow)" in lines
    assert lines[-1] == (
        "killed (SIGKILL) 3 processes that still ran 30 s after SIGTERM: 102 (airflow worker -- "
        "LocalExecutor); 103 (python -c import time); 104 (model server of digits v3 on 127.0.0.1:9000)"
    )
    _report("/x/airflow", [Stopped(105, "airflow triggerer", "KILL")], None, [], 2.0)
    lines = capsys.readouterr().out.splitlines()
    assert "stopped 1 process of the embedded Airflow (AIRFLOW_HOME /x/airflow)" in lines
    assert lines[-1] == "killed (SIGKILL) 1 process that still ran 2 s after SIGTERM: 105 (airflow triggerer)"


def test_a_spec_blocks_validation_error_reads_as_a_spec_error(capsys, monkeypatch):
    """A spec block checked outside a spec file (a model block from a run's form, a Kubernetes target from
    a dict) fails with pydantic's ValidationError: the user sees the field and the message, not pydantic's
    "Value error, ", its error types or links."""
    from pydantic import ValidationError

    from freestack.cli import models
    from freestack.train.spec import ModelSpec

    with pytest.raises(ValidationError) as caught:
        ModelSpec.model_validate({"type": "huggingface"})
    assert "Value error, " in str(caught.value)  # what pydantic says itself

    def fail(*a, **k):
        raise caught.value

    monkeypatch.setattr(models, "registry", fail)
    code, _, err = run(capsys, "models", "list", "digits")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: invalid ModelSpec: "), err
    assert "type: huggingface needs base: a Hub repo id" in err
    for noise in ("Value error", "unexpected", "[type=", "errors.pydantic.dev"):
        assert noise not in err, (noise, err)


def test_a_count_of_one_is_singular(capsys, tmp_path):
    """``1 partition``, not ``1 partitions`` (the backfill's ``1 day`` and ``1 run``: tests/unit/cli/test_backfill.py)."""
    from freestack.registry.core import ModelRegistry
    from tests.support.registry import PARTITIONS, make_model_folder

    folder = make_model_folder(tmp_path / "v1")
    lineage = json.loads((folder / "lineage.json").read_text())
    (folder / "lineage.json").write_text(json.dumps({**lineage, "partitions": PARTITIONS[:1]}))
    ModelRegistry((tmp_path / "store").as_uri(), "digits").register(folder.as_uri(), "v1")
    code, out, _ = run(
        capsys, "models", "show", "digits", "v1", "--details", "--root", (tmp_path / "store").as_uri()
    )
    assert code == 0 and any(ln.split() == ["partitions", "1", "partition"] for ln in out.splitlines()), out
