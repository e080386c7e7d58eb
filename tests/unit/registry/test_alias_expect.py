"""Alias moves that carry what the user saw: a rollback to the version its button named, only while
production is still the version it replaced (one compare-and-swap); the same for ``set_alias``; a
candidate blocked when ``promote`` decided it again reads blocked, with those reasons, from then on; and
the gate's word holds: ``latest`` is the newest version it did not block, and a blocked version takes an
alias only with an override saying why, which the history records with the gate's reasons."""

from __future__ import annotations

import json

import pytest

from tests.support.registry import make_model_folder

#: a gate decision as the gate registers a candidate it blocked (freestack.evaluate.gate.decide)
BLOCKED = {
    "promote": False,
    "decision": "block",
    "metric": "accuracy",
    "reasons": ["accuracy 0.7000 < minimum 0.8000: block"],
}


@pytest.fixture
def reg(tmp_path):
    from freestack.registry.core import ModelRegistry

    reg = ModelRegistry((tmp_path / "store").as_uri(), "digits")
    src = make_model_folder(tmp_path / "candidate")
    for v in ("v1", "v2", "v3"):
        reg.register(
            src.as_uri(),
            v,
            lineage_updates={"gate": {"promote": True, "decision": "promote", "reasons": ["first model"]}},
        )
    return reg


def test_a_rollback_lands_on_the_named_version_only_while_production_is_what_was_seen(reg):
    from freestack.registry.core import AliasMoved
    from freestack.registry.operators import moved_text

    reg.promote("v1")
    reg.promote("v2")  # production v2, previous v1: the button reads "Roll back production to v1"
    reg.promote("v3", reason="a newer candidate", by="bob (manual__2)")  # lands before the rollback runs
    before = reg.aliases()
    with pytest.raises(AliasMoved) as got:
        reg.rollback(to="v1", expect="v2", by="alice (manual__1)")
    assert reg.aliases() == before  # nothing was changed
    exc = got.value
    assert (exc.expected, exc.current) == ("v2", "v3") and exc.move.startswith(
        "promote to v3 by bob (manual__2) at "
    )
    said = moved_text(exc, "production", "rollback", "the Models page")
    assert said.startswith("production moved from v2 to v3 (promote to v3 by bob (manual__2) at ")
    assert "(a newer candidate)) after this rollback was asked; nothing was changed: ask again" in said

    # as asked, while production still is what was seen: the named version, not "previous as it is now"
    a = reg.rollback(to="v1", expect="v3", by="alice (manual__3)")
    assert (a["production"], a["previous"]) == ("v1", "v3")
    assert a["history"][-1] | {"at": "", "pid": 0} == {
        "at": "",
        "pid": 0,
        "action": "rollback",
        "alias": "production",
        "version": "v1",
        "from": "v3",
        "by": "alice (manual__3)",
    }
    assert reg.rollback(to="v1", expect="v3") == a  # its retry finds it done, and changes nothing
    # a rollback that resolves previous when it runs (a hand-triggered run without the form's fields)
    assert reg.rollback()["production"] == "v3"


def test_setting_an_alias_expecting_a_version_is_refused_once_it_moved(reg):
    from freestack.registry.core import AliasMoved

    reg.set_alias("staging", "v1")
    reg.set_alias("staging", "v2", by="bob")
    with pytest.raises(AliasMoved, match="staging of 'digits' is v2, no longer v1: set to v2 by bob"):
        reg.set_alias("staging", "v3", expect="v1")
    assert reg.aliases()["staging"] == "v2"
    reg.set_alias("staging", "v3", expect="v2")
    with pytest.raises(AliasMoved):
        reg.set_alias("production", "v3", expect="v1")  # production has none yet: not what was seen
    assert "production" not in reg.aliases()


def test_a_candidate_blocked_when_decided_again_reads_blocked(reg):
    from freestack.registry.core import VersionBlocked, redecisions

    reg.promote("v1")
    assert reg.gate_of("v2")["promote"] is True  # what the gate registered with it
    decision = {
        "promote": False,
        "decision": "block",
        "metric": "accuracy",
        "candidate_version": "v2",
        "champion_version": "v3",
        "decided_again": True,
        "gate": {"metric": "accuracy"},
        "reasons": ["accuracy 0.9000 vs production 0.9500: worse by 0.0500 (needed: no worse): block"],
    }
    reg.promote("v3", by="bob")
    before = {k: v for k, v in reg.aliases().items() if k != "history"}
    a = reg.block("v2", decision)
    assert {k: v for k, v in a.items() if k != "history"} == before  # no alias moved
    ev = a["history"][-1]
    assert (ev["action"], ev["version"], ev["from"], ev["by"]) == ("blocked", "v2", "v3", "gate")
    assert ev["reason"].startswith(
        "decided again against production v3: accuracy 0.9000 vs production 0.9500"
    )
    held = reg.gate_of("v2")
    assert held["promote"] is False and held["decided_again"] and held["reasons"] == decision["reasons"]
    assert "gate" not in held and redecisions(reg.aliases()) == {"v2": held}
    assert reg.gate_of("v1")["promote"] is True  # the others keep theirs
    with pytest.raises(VersionBlocked, match="'v2' of model 'digits' was blocked by its gate when promote"):
        reg.set_alias("staging", "v2")  # the decision that holds is the one taken again
    # a recorded decision is not a move: the last move of production is still bob's
    assert reg.last_move("production").startswith("promote to v3 by bob")


def test_latest_skips_blocked_versions_and_a_blocked_one_takes_an_alias_only_overridden(
    reg, tmp_path, capsys
):
    from freestack.cli import main
    from freestack.registry.core import ModelRegistry, VersionBlocked, VersionNotFound

    reg.register(make_model_folder(tmp_path / "v4").as_uri(), "v4", lineage_updates={"gate": BLOCKED})
    assert reg.versions()[-1]["version"] == "v4" and reg.resolve("latest") == "v3"
    reg.promote("latest")
    for move in (
        lambda: reg.promote("v4"),
        lambda: reg.set_alias("staging", "v4"),
        lambda: reg.rollback(to="v4"),  # never production: a rollback is no way round the gate
    ):
        with pytest.raises(VersionBlocked) as got:
            move()
        said = str(got.value)
        assert (
            "'v4' of model 'digits' was blocked by its gate (accuracy 0.7000 < minimum 0.8000: block)" in said
        )
        assert "allow_blocked='<why>'" in said and "--allow-blocked" in said
    assert got.value.version == "v4" and got.value.reasons == BLOCKED["reasons"]
    assert {k: v for k, v in reg.aliases().items() if k != "history"} == {"production": "v3"}

    # the CLI on a bare model: refused, then overridden, the why kept with the gate's reasons
    root = (tmp_path / "store").as_uri()
    assert main(["models", "promote", "digits", "v4", "--root", root]) == 1
    assert "was blocked by its gate" in capsys.readouterr().err
    assert (
        main(["models", "promote", "digits", "v4", "--root", root, "--allow-blocked", "stale threshold"]) == 0
    )
    assert "production -> v4" in capsys.readouterr().out
    a = reg.aliases()
    assert (a["production"], a["previous"]) == ("v4", "v3")
    ev = a["history"][-1]
    assert (ev["action"], ev["version"], ev["by"].startswith("freestack CLI")) == ("promote", "v4", True)
    assert ev["override"] == {"why": "stale threshold", "gate_reasons": BLOCKED["reasons"]}
    assert main(["models", "list", "--root", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["latest"] == "v3"  # latest still skips it

    # back and forth: v4 served already, so a rollback to it needs no override
    reg.rollback()
    reg.promote("v2")
    a = reg.rollback(to="v4")
    assert a["production"] == "v4" and "override" not in a["history"][-1]

    # a model whose gate blocked every version has no latest, and says what to do
    other = ModelRegistry(root, "other")
    other.register(make_model_folder(tmp_path / "o1").as_uri(), "o1", lineage_updates={"gate": BLOCKED})
    with pytest.raises(VersionNotFound, match="no version its gate passed") as got:
        other.resolve("latest")
    assert "the newest: o1" in str(got.value) and "train a candidate that passes the gate" in str(got.value)
