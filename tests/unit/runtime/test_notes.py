"""DAG-run notes from a task's ``freestack_run_note`` XCom (freestack.runtime.notes). The runs
themselves: tests/dags/test_promote_dag.py (dag.test() hands the listener a detached run; the
scheduler an attached one, which that test also exercises)."""

from __future__ import annotations

from types import SimpleNamespace

from freestack.runtime import notes


def test_merged_keeps_a_persons_note_and_airflows_limit():
    ours = "x" * 300
    assert notes.merged(None, ours) == ours and notes.merged("  ", ours) == ours
    assert notes.merged("hi", ours) == "hi\n\n---\n\n" + ours
    assert notes.merged("hi\n\n---\n\n" + ours, ours) == "hi\n\n---\n\n" + ours  # marked again: once
    both = notes.merged("y" * 900, ours)
    assert len(both) <= notes.LIMIT and both.endswith("---\n\n" + ours)
    assert notes.merged("y" * 990, "z" * 990) == "y" * 990  # no room for both: the person's words win
    assert len(notes.merged(None, "z" * 2000)) == notes.LIMIT


def test_another_airflow_version_sets_no_note(monkeypatch, caplog):
    import freestack.runtime as runtime

    monkeypatch.setattr(runtime, "airflow_version", lambda: "3.9.0")
    monkeypatch.setattr(runtime, "_warned", set())
    run = SimpleNamespace(dag_id="d", run_id="r", note=None)  # never read: the version check comes first
    notes.run_notes.on_dag_run_success(dag_run=run, msg="success")
    assert run.note is None
    assert "DAG-run notes from tasks was written for Airflow 3.3" in caplog.text


def test_trouble_is_a_warning_never_an_error(monkeypatch, caplog):
    def broken(dag_run):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(notes, "annotate", broken)
    notes.run_notes.on_dag_run_failed(dag_run=SimpleNamespace(dag_id="d", run_id="r"), msg="task_failure")
    assert "could not set the note of d r: database is locked" in caplog.text
