"""The promotion gate: is the candidate good enough, and better than production? (``gate:``, see
:mod:`freestack.evaluate.spec`)."""

from __future__ import annotations

from typing import Any

from freestack.evaluate.spec import MAXIMIZE, METRICS, GateSpec


def direction_of(metric: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    return "maximize" if metric in MAXIMIZE else "minimize"


def decide(gate: GateSpec, candidate: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, Any]:
    """The decision and every reason for it, ready for lineage.json and the task log."""
    task = candidate.get("task", "classification")
    metric = gate.metric or METRICS[task][0]
    if metric not in candidate:
        raise ValueError(f"gate metric {metric!r} is not a {task} metric; use one of {', '.join(METRICS[task])}")
    goal = direction_of(metric, gate.direction)
    sign = 1.0 if goal == "maximize" else -1.0
    value = float(candidate[metric])
    reasons: list[str] = []
    passed = True
    if gate.min_value is not None:
        ok = sign * (value - gate.min_value) >= 0
        passed &= ok
        reasons.append(
            f"{metric} {value:.4f} {'meets' if ok else 'misses'} the {'minimum' if goal == 'maximize' else 'maximum'} "
            f"{gate.min_value:.4f}"
        )
    delta = None
    if champion is None:
        reasons.append("no production model yet: a first model needs only the absolute threshold")
    else:
        base = float(champion[metric])
        delta = sign * (value - base)  # > 0: better
        needed = gate.min_improvement * (abs(base) if gate.improvement == "relative" else 1.0)
        ok = delta >= needed - 1e-12
        passed &= ok
        reasons.append(
            f"{metric} {value:.4f} vs champion {base:.4f}: {'+' if delta >= 0 else ''}{delta:.4f} "
            f"({'better' if delta > 0 else 'no better' if delta == 0 else 'worse'}); "
            f"needed ≥ {needed:.4f} ({gate.improvement})"
            + ("" if ok else " — blocked")
        )
        for other, allowed in sorted(gate.max_regression.items()):
            if other not in candidate or other not in champion:
                continue
            s = 1.0 if direction_of(other) == "maximize" else -1.0
            worse = s * (float(champion[other]) - float(candidate[other]))  # > 0: the candidate is worse
            ok = worse <= allowed + 1e-12
            passed &= ok
            reasons.append(
                f"{other} {float(candidate[other]):.4f} vs champion {float(champion[other]):.4f}: "
                f"{'worse' if worse > 0 else 'not worse'} by {worse if worse > 0 else 0.0:.4f} (allowed {allowed:.4f})"
                + ("" if ok else " — blocked")
            )
    return {
        "promote": bool(passed),
        "decision": "promote" if passed else "block",
        "metric": metric,
        "direction": goal,
        "candidate": value,
        "champion": None if champion is None else float(champion[metric]),
        "delta": delta,
        "reasons": reasons,
        "approval": gate.approval,
        "gate": gate.model_dump(),
    }


#: Airflow keeps a DAG-run note in 1000 characters
NOTE_LIMIT = 1000


def decision_note(decision: dict[str, Any], model: str) -> str:
    """The DAG-run note (Markdown) for a gate decision: blocked, with every reason and its numbers; or a
    short line when the candidate goes on to production (or to a human's approval)."""
    cand, champ = decision.get("candidate_version"), decision.get("champion_version")
    metric, value = decision["metric"], decision["candidate"]
    vs = f" vs {decision['champion']:.4f} for production `{champ}`" if champ else " (no production model yet)"
    if not decision["promote"]:
        head = (f"**Gate: blocked.** Candidate `{cand}` of `{model}` stays out of production"
                f"{f' (`{champ}` keeps serving)' if champ else ''}: {metric} {value:.4f}{vs}.")
        tail = "\n\nRegistered with this decision; `promote` and `deploy` were skipped."
        return _capped(head + "\n\n" + "\n".join(f"- {r}" for r in decision["reasons"]), tail)
    if decision.get("approval") == "required":
        return (f"**Gate: passed, awaiting approval.** Candidate `{cand}` of `{model}` may replace production "
                f"once a human approves (`approve`): {metric} {value:.4f}{vs}.")
    return f"**Gate: promoted.** Candidate `{cand}` of `{model}` is production now: {metric} {value:.4f}{vs}."


def _capped(body: str, tail: str) -> str:
    more = "\n- … (every reason is in the gate task's log)"
    if len(body) + len(tail) > NOTE_LIMIT:
        body = body[: NOTE_LIMIT - len(tail) - len(more)].rstrip() + more
    return body + tail


__all__ = ["NOTE_LIMIT", "GateSpec", "decide", "decision_note", "direction_of"]
