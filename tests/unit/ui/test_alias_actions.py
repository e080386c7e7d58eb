"""The Models page's rollback and promote buttons carry what they showed: the confirmation page names
the version a rollback goes back to and the production it replaces, and the run it starts holds both
(``version``, ``expect_production``); a promotion's run holds what the alias was (``expect``). The
confirmation page promises no order of runs, and shows the gate's decision on the version to promote,
the one taken again at promotion time when there is one. Rendered through the views app (login and
Airflow's trigger endpoint stubbed: the real ones are in tests/ui/test_views_rollback_race.py)."""

from __future__ import annotations

import json

import pytest

from bench.ui.volume import make_registry
from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client


@pytest.fixture
def client(storage, monkeypatch):
    from freestack.spec import load_spec
    from freestack.ui import actions

    digits = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    started: list[tuple[str, dict]] = []

    async def trigger(dag_id, conf, token, note):
        started.append((dag_id, conf))
        return actions.Triggered(
            dag_id=dag_id, run_id=f"manual__{len(started)}", state="queued", url="http://x"
        )

    async def in_flight(dag_id, token):
        return ["manual__training"]

    monkeypatch.setattr(actions, "trigger", trigger)
    monkeypatch.setattr(actions, "runs_in_flight", in_flight)
    with views_client(monkeypatch, storage, digits, may_trigger=True) as client:
        yield client, started


def _form(html: str) -> dict[str, str]:
    import re

    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))


def test_a_rollback_carries_the_version_its_button_named_and_the_production_it_replaces(client, storage):
    http, started = client
    names = make_registry(storage, "digits", 4)
    production, previous = names[-1], names[-2]
    models = http.get("/models/digits").text
    assert f'/models/digits/{production}/rollback?to={previous}"' in models

    page = http.get(f"/models/digits/{production}/rollback", params={"to": previous})
    assert page.status_code == 200
    assert f"production goes back from {production} to {previous}" in page.text
    assert (
        "in the order asked" not in page.text and "not necessarily in the order they were asked" in page.text
    )
    assert f"only while it is still {production}" in page.text and "fails naming that" in page.text
    assert _form(page.text) == {"alias": "production", "expect": production, "to": previous}

    got = http.post(f"/models/digits/{production}/rollback", data=_form(page.text))
    assert got.status_code == 200 and "digits_rollback" in got.text
    assert started == [("digits_rollback", {"version": previous, "expect_production": production})]
    # a form without them (a page from before) is refused: nothing would say what the user saw
    refused = http.post(f"/models/digits/{production}/rollback", data={"alias": "production"})
    assert refused.status_code == 400 and "open the rollback from the Models page again" in refused.text
    assert len(started) == 1


def test_a_rollback_asked_from_a_production_that_moved_is_not_offered(client, storage):
    http, started = client
    names = make_registry(storage, "digits", 4)
    page = http.get(f"/models/digits/{names[-2]}/rollback", params={"to": names[-3]})  # an older Models page
    assert f"Production is {names[-1]} now, not {names[-2]}" in page.text and 'id="confirm"' not in page.text


def test_a_promotion_carries_what_the_alias_was_and_shows_the_gate_held_for_the_version(client, storage):
    from freestack.registry.core import ModelRegistry

    http, started = client
    names = make_registry(storage, "digits", 6)
    reg = ModelRegistry(storage, "digits")
    passed = [v for v in names[:-1] if reg.lineage(v)["gate"]["promote"]]
    blocked, other = passed[0], passed[1]  # the gate passed both when they were registered
    reg.block(
        blocked,
        {
            "promote": False,
            "decision": "block",
            "metric": "accuracy",
            "candidate_version": blocked,
            "champion_version": names[-1],
            "decided_again": True,
            "reasons": ["accuracy 0.9000 vs production 0.9500: worse by 0.0500 (needed: no worse): block"],
        },
    )
    page = http.get(f"/models/digits/{blocked}/promote", params={"alias": "production"})
    gate = page.text[page.text.index('id="gate-result"') :]
    gate = gate[: gate.index("</div>")]
    assert "gate-blocked" in page.text and "<strong>blocked</strong>" in gate
    assert f"decided again against production {names[-1]} when <code>promote</code> ran" in gate
    assert "worse by 0.0500" in gate and "overrides that decision" in gate
    assert _form(page.text) == {"alias": "production", "expect": names[-1]}
    assert 'name="reason" maxlength="500" size="60" required' in page.text
    # overriding the gate takes a reason: without one nothing starts
    refused = http.post(f"/models/digits/{blocked}/promote", data=_form(page.text))
    assert refused.status_code == 400 and f"the gate blocked {blocked}" in refused.text and not started
    http.post(f"/models/digits/{blocked}/promote", data={**_form(page.text), "reason": "by hand"})
    assert started == [
        (
            "digits_promote",
            {
                "version": blocked,
                "alias": "production",
                "expect": names[-1],
                "reason": "by hand",
                "allow_blocked": "by hand",
            },
        )
    ]

    # every page reads the decision that holds, not the gate's first one
    version = http.get(f"/api/models/digits/{blocked}").json()["row"]["gate"]
    assert version["decision"] == "blocked" and version["decided_again"] and version["against"] == names[-1]
    rows = {r["version"]: r["gate"] for r in http.get("/api/models/digits").json()["versions"]}
    assert rows[blocked]["decision"] == "blocked" and rows[other]["decision"] == "promoted"
    assert "decided again" in http.get(f"/models/digits/{blocked}").text
    history = http.get("/models/digits").text
    assert "blocked production" in history and json.dumps(names[-1])[1:-1] in history


def test_the_models_list_names_as_latest_the_newest_version_the_gate_did_not_block(client, storage):
    """The Models page's Latest column is what ``latest`` resolves to: a newer version the gate blocked is
    marked beside it, never shown as the latest."""
    from freestack.registry.core import ModelRegistry

    http, _ = client
    names = make_registry(storage, "digits", 3)
    reg = ModelRegistry(storage, "digits")
    reg.block(names[-1], {"promote": False, "decision": "block", "reasons": ["accuracy 0.10 under 0.90"]})
    row = next(m for m in http.get("/api/models").json() if m["model"] == "digits")
    assert row["latest"] == reg.resolve("latest") != names[-1]
    page = http.get("/models").text
    assert f'href="/freestack/ui/models/digits/{row["latest"]}">{row["latest"]}</a>' in page
    assert f"newest {names[-1]}: blocked" in page and "accuracy 0.10 under 0.90" in page
