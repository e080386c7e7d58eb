"""Champion/challenger in the train DAG: evaluate -> gate -> register -> (approve) -> promote | blocked."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from tests.dags.test_sweep_dag import _states
from tests.dags.test_train_dag import lake  # noqa: F401  (the five-day digits lake fixture)
from tests.support.runs import run_note

pytestmark = pytest.mark.usefixtures("airflow_db")


def _registry(lake):  # noqa: F811
    from freestack.registry.core import ModelRegistry

    return ModelRegistry(lake["root"].as_uri(), "digits")


def _gate_retry_is_safe(dag, lake, version, run_id, decision):  # noqa: F811
    """The gate task run again (a retry after its commit) takes the version it registered as it is; any
    other run trying to register that version is told versions are immutable."""
    from airflow.sdk.exceptions import AirflowFailException

    from freestack.evaluate.operators import route_for

    folder = lake["root"] / "registry" / "digits" / version
    ev = json.loads((folder / "evaluation" / "metrics.json").read_text())
    ev.update(candidate_version=version, champion_version=None, sweep=None)
    gate = dag.get_task("gate")
    again = gate.decide(ev)
    assert again["promote"] == decision["promote"] and route_for(again) == "promote"
    before = (folder / "lineage.json").read_bytes()
    got = gate.register(ev, again, run_id)
    assert got["version"] == version and got["version_uri"].rstrip("/").endswith(version)
    assert (folder / "lineage.json").read_bytes() == before
    with pytest.raises(AirflowFailException, match="registered already by another run"):
        gate.register(ev, again, "manual__someone_else")


def _annotated_in_the_schedulers_session(run, note):
    """The scheduler hands the listener a run attached to its own session (dag.test() a detached
    one): the note goes into that transaction, below a note a person wrote, once."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from freestack.runtime.notes import annotate

    with create_session() as session:
        held = session.query(DagRun).filter(DagRun.dag_id == run.dag_id, DagRun.run_id == run.run_id).one()
        held.note = "checked by alice"
        session.flush()
        assert annotate(held) == annotate(held) == f"checked by alice\n\n---\n\n{note}"
    assert run_note(run) == f"checked by alice\n\n---\n\n{note}"


def test_first_model_promoted_worse_blocked_better_promoted(lake):  # noqa: F811
    dag = lake["bag"].get_dag("digits_train")
    reg = _registry(lake)

    first = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 8, "learning_rate": 3e-3})
    assert first.state == "success"
    s = _states(first)
    assert s["promote"] == ["success"] and s["blocked"] == ["skipped"] and s["approve"] == ["skipped"]
    v1 = reg.resolve("production")
    gate_note, window_line = run_note(first).rsplit("\n\n", 1)  # the gate's decision, then the window's line
    assert (
        window_line.startswith("Window: ")
        and "up to 2026-11-05" in window_line
        and "end_ds from the form" in window_line
    )
    # the gate says the candidate passed; `promote`, once production moved, that it is production now
    gate_note, promoted, cached = gate_note.split("\n\n")
    assert cached.startswith(
        "evaluate: cache miss: no earlier run (key "
    )  # the step cache, on the run's page
    assert gate_note.startswith(
        f"**Gate: passed.** Candidate `{v1}` of `digits` goes on to `promote`: accuracy 0."
    )
    assert promoted == f"**Promoted.** `{v1}` of `digits` is production now."
    lineage = reg.get(v1)["lineage"]
    assert lineage["gate"]["promote"] and "no production model yet" in " ".join(lineage["gate"]["reasons"])
    assert lineage["airflow"]["run_id"] == first.run_id and lineage["evaluation"]["report"].endswith(
        "report.html"
    )
    card = reg.get(v1)["card"]
    assert card.startswith("---\n") and "test_accuracy" in card and lineage["partitions"][0]["sha256"] in card
    # decide, register and route are one task, `gate`
    assert s["gate"] == ["success"] and not {"register", "route"} & set(dag.task_ids)
    _gate_retry_is_safe(dag, lake, v1, first.run_id, lineage["gate"])

    # a deliberately worse candidate: one epoch at a tiny learning rate
    worse = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 1, "learning_rate": 1e-5})
    assert worse.state == "success"  # blocked is not a failure, but it shows:
    s = _states(worse)
    assert s["blocked"] == ["success"] and s["promote"] == ["skipped"] and s["deploy"] == ["skipped"]
    assert s["approve"] == ["skipped"]
    assert reg.resolve("production") == v1
    versions = [v["version"] for v in reg.versions()]
    assert len(versions) == 2  # the blocked candidate is registered too, with its decision
    v2 = next(v for v in versions if v != v1)
    gate = reg.get(v2)["lineage"]["gate"]
    assert not gate["promote"] and gate["champion_version"] == v1 and "worse" in gate["reasons"][-1]
    ev = json.loads((lake["root"] / "registry" / "digits" / v2 / "evaluation" / "metrics.json").read_text())
    assert ev["champion_version"] == v1 and ev["candidate"]["accuracy"] < ev["champion"]["accuracy"]
    note = run_note(worse)  # the decision, each reason with its numbers
    assert note.startswith(
        f"**Gate: blocked.** Candidate `{v2}` of `digits` stays out of production (`{v1}` keeps serving)"
    )
    cand, champ = ev["candidate"]["accuracy"], ev["champion"]["accuracy"]
    assert f"accuracy {cand:.4f} vs {champ:.4f} for production `{v1}`" in note
    assert (
        f"- accuracy {cand:.4f} vs production {champ:.4f}: worse by {champ - cand:.4f} (needed: no worse): block"
        in note
    )
    assert (
        note.rsplit("\n\n", 2)[0].endswith("`promote` and `deploy` were skipped.") and "\n\nWindow: " in note
    )
    _annotated_in_the_schedulers_session(worse, note)

    better = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 25, "learning_rate": 3e-3})
    assert better.state == "success"
    assert _states(better)["promote"] == ["success"]
    aliases = reg.aliases()
    assert aliases["previous"] == v1 and aliases["production"] not in (v1, v2)


def test_approval_required_waits_for_a_human_then_promotes(lake):  # noqa: F811
    """approval: required -> the run parks on the Approval task until someone answers in the UI/API."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    from tests.dags.test_train_dag import ROOT

    spec = lake["specs"] / "digits.yaml"
    data = yaml.safe_load(spec.read_text())
    data["gate"] = {"metric": "accuracy", "threshold": 0.5, "approval": "required"}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_train")
    answered = {}

    class Reviewer:
        def get_id(self):
            return "reviewer"

        def get_name(self):
            return "reviewer"

    def respond():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with create_session() as session:
                row = session.query(HITLDetail).filter(HITLDetail.response_received.is_(False)).first()
                # answer as a person would: once the task waits for input (an answer recorded before
                # the task has parked itself is never picked up, and the run would wait forever)
                if row is not None and row.task_instance.state == TaskInstanceState.AWAITING_INPUT:
                    ti = row.task_instance
                    answered["body"] = row.body
                    update_hitl_detail(
                        dag_id=ti.dag_id,
                        dag_run_id=ti.run_id,
                        task_id=ti.task_id,
                        map_index=ti.map_index,
                        update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=["Approve"]),
                        user=Reviewer(),
                        session=session,
                    )
                    return
            time.sleep(0.5)

    t = threading.Thread(target=respond, daemon=True)
    t.start()
    run = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 3})
    t.join(timeout=10)
    assert run.state == "success"
    s = _states(run)
    assert s["approve"] == ["success"] and s["promote"] == ["success"]
    assert (
        "vs production" in answered["body"]
        and "≥ 0.5000 (threshold, higher is better): pass" in answered["body"]
    )
    assert _registry(lake).resolve("production")
    assert _registry(lake).aliases()["history"][-1]["by"] == "approved by reviewer"  # who approved, kept


def test_a_failed_evaluate_leaves_nothing_in_the_registry_and_its_retry_registers(lake):  # noqa: F811
    """The candidate is trained and evaluated outside the registry: an evaluate that fails (production's
    folder lost its preprocessing.json, found when the champion is loaded, before the candidate is scored)
    leaves no registry/<model>/<version>/ folder; the run's retry evaluates the same candidate and the gate
    registers it."""
    from airflow.dag_processing.dagbag import DagBag

    from freestack.evaluate.core import evaluate
    from freestack.monitor.core import REFERENCE_FILE
    from freestack.registry.candidates import register_candidate
    from freestack.spec import load_spec
    from tests.dags.test_train_dag import ROOT

    spec_file = lake["specs"] / "digits.yaml"
    data = yaml.safe_load(spec_file.read_text())
    data["gate"] = {"metric": "accuracy", "threshold": 0.5}
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_train")
    reg = _registry(lake)
    registry = lake["root"] / "registry" / "digits"
    assert dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 3}).state == "success"
    v1 = reg.resolve("production")
    assert not list((lake["root"] / "candidates" / "digits").iterdir())  # registered: the candidate went

    damaged = registry / v1 / "preprocessing.json"
    kept = damaged.read_bytes()
    damaged.unlink()
    failed = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 1})
    assert failed.state == "failed"
    s = _states(failed)
    assert s["train"] == ["success"] and s["evaluate"] == ["failed"] and s["gate"] == ["upstream_failed"]
    assert sorted(p.name for p in registry.iterdir()) == sorted([v1, "aliases.json"])
    [candidate] = (lake["root"] / "candidates" / "digits").iterdir()
    assert (candidate / "model.safetensors").is_file() and not (candidate / REFERENCE_FILE).exists()
    assert [v["version"] for v in reg.versions()] == [v1]

    damaged.write_bytes(kept)  # the retry of evaluate and gate, as Airflow runs them for the same run
    spec = load_spec(spec_file)
    ev = evaluate(spec, candidate.as_uri(), champion_uri=reg.version_uri(v1))
    ev.update(candidate_version=candidate.name, champion_version=v1, sweep=None)
    decision = dag.get_task("gate").decide(ev)
    got = register_candidate(spec, ev, decision, run_id=failed.run_id)
    assert got["version_uri"] == (registry / candidate.name).as_uri()
    assert [v["version"] for v in reg.versions()] == [v1, candidate.name] and not candidate.exists()
    reg.verify(candidate.name)
    lineage = reg.get(candidate.name)["lineage"]
    assert (
        lineage["evaluation"]["report"] == (registry / candidate.name / "evaluation" / "report.html").as_uri()
    )
    assert (registry / candidate.name / "evaluation" / "report.html").is_file()


def test_production_moved_during_the_run_is_decided_again(lake, monkeypatch, capsys):  # noqa: F811
    """A rollback or promotion that lands between a run's evaluate and its promote: the gate decides
    again against the production that is there now, on the candidate's test rows; a candidate that still
    passes is promoted over it, one that no longer passes is not (promote and deploy skipped)."""
    from freestack.evaluate.operators import PromoteOperator

    dag = lake["bag"].get_dag("digits_train")
    reg = _registry(lake)
    good = {"end_ds": "2026-11-05", "sweep": False, "epochs": 8, "learning_rate": 3e-3}
    bad = {"end_ds": "2026-11-05", "sweep": False, "epochs": 1, "learning_rate": 1e-5}
    assert dag.test(run_conf=good).state == "success"
    v1 = reg.resolve("production")
    assert dag.test(run_conf=bad).state == "success"
    v2 = next(v["version"] for v in reg.versions() if v["version"] != v1)  # blocked, registered
    original = PromoteOperator.execute

    def moved_first(to):
        def execute(self, context):
            # the bad v2 was blocked by its gate: a person moving production to it overrides that
            why = "forced in by hand meanwhile"
            reg.promote(
                to, reason="a rollback meanwhile", by="someone (manual__meanwhile)", allow_blocked=why
            )
            return original(self, context)

        return execute

    # judged against v1, but production is the bad v2 when promote runs: decided again, still promoted
    monkeypatch.setattr(PromoteOperator, "execute", moved_first(v2))
    run = dag.test(run_conf=good)
    assert (
        run.state == "success"
        and _states(run)["promote"] == ["success"]
        and _states(run)["deploy"] == ["success"]
    )
    aliases = reg.aliases()
    v3 = aliases["production"]
    assert v3 not in (v1, v2) and aliases["previous"] == v2
    assert (
        reg.get(v3)["lineage"]["gate"]["champion_version"] == v1
    )  # the recorded gate judged v1; the move says v2

    # a bad candidate passes when there is no production yet (a first model needs only the threshold), but
    # production is the good v3 by promote time, and against it the candidate is worse
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_train_dag import ROOT

    data = yaml.safe_load((lake["specs"] / "digits.yaml").read_text())
    data["gate"] = {"metric": "accuracy"}  # no threshold
    (lake["specs"] / "digits.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_train")
    aliases_file = lake["root"] / "registry" / "digits" / "aliases.json"
    aliases_file.write_text(
        json.dumps({k: v for k, v in json.loads(aliases_file.read_text()).items() if k != "production"})
    )
    monkeypatch.setattr(PromoteOperator, "execute", moved_first(v3))
    run = dag.test(run_conf=bad)
    s = _states(run)
    assert run.state == "success" and s["promote"] == ["skipped"] and s["deploy"] == ["skipped"]
    assert reg.resolve("production") == v3
    note = run_note(run)
    # the gate's first decision, then the one that counts; nothing says it was promoted
    assert (
        note.startswith("**Gate: passed.**")
        and f"\n\nProduction moved to `{v3}` before `promote`; decided again against it: **Gate: blocked.**"
        in note
        and "worse by" in note
    ), note
    assert "Gate: promoted" not in note and "is production now" not in note
    v4 = next(v["version"] for v in reg.versions() if v["version"] not in (v1, v2, v3))
    _blocked_everywhere(lake, reg, v4, v3, capsys)


def _blocked_everywhere(lake, reg, version: str, production: str, capsys) -> None:  # noqa: F811
    """A candidate blocked when `promote` decided it again reads blocked, with those reasons, wherever its
    gate decision shows: the registry, the Models and version pages' data, `freestack models show`."""
    from freestack.cli import main
    from freestack.spec import load_spec
    from freestack.ui.catalog import model_pages

    assert reg.lineage(version)["gate"]["promote"]  # what the gate registered: passed against no production
    held = reg.gate_of(version)
    assert not held["promote"] and held["decided_again"] and held["champion_version"] == production
    assert any("worse by" in r for r in held["reasons"])
    blocked = [e for e in reg.aliases()["history"] if e["action"] == "blocked"]
    assert [(e["version"], e["from"], e["by"]) for e in blocked] == [(version, production, "gate")]
    spec = load_spec(lake["specs"] / "digits.yaml")
    row = next(r for r in model_pages.model_page("digits", spec).versions if r.version == version)
    assert row.gate.decision == "blocked" and row.gate.decided_again and row.gate.reasons == held["reasons"]
    assert model_pages.version_page("digits", spec, version).row.gate.decision == "blocked"
    capsys.readouterr()
    assert main(["models", "show", "digits", version, "--root", lake["root"].as_uri()]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # as wide as the terminal: the cell may wrap
    assert f"gate BLOCKED (decided again against production {production} when promote ran)" in shown, shown
    assert main(["models", "show", "digits", version, "--root", lake["root"].as_uri(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gate"] == held
