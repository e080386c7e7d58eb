"""Alias moves that carry what the user saw: a rollback to the version its button named, only while
production is still the version it replaced (one compare-and-swap); the same for ``set_alias``; and a
candidate blocked when ``promote`` decided it again reads blocked, with those reasons, from then on."""

from __future__ import annotations

import pytest

from tests.support.registry import make_model_folder


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
    from freestack.registry.core import redecisions

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
    # a recorded decision is not a move: the last move of production is still bob's
    assert reg.last_move("production").startswith("promote to v3 by bob")
