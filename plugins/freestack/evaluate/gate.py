"""The promotion gate: is the candidate good enough, and better than production? (``gate:``, see
:mod:`freestack.evaluate.spec`).

Every bar reads in the metric's direction: ``threshold`` is a floor where higher is better and a
ceiling where lower is better, ``min_improvement`` is an improvement and ``max_regression`` a
worsening, whichever way the metric goes. Each reason says so in plain words and ends in ``pass`` or
``block``::

    rmse 47.8000 ≤ 50.0000 (threshold, lower is better): pass
    rmse 47.8000 vs production 49.1000: better by 1.3000 (needed: no worse): pass
    log_loss 0.3100 vs production 0.2900: worse by 0.0200 (allowed: up to 0.0500 worse): pass

With a judge (``gate.judge``), its rules read the evaluation's judge figures and name them::

    judge_score 4.2500 ≥ 3.5000 (min_judge_score, mean 1-5 of 16 prompts judged by judge at http://…/v1, 0 failed): pass
    judge_win_rate 0.6250 ≥ 0.5000 (min_win_rate; 95% CI 0.3860-0.8141; 7 wins, 6 ties, 3 losses of 16 prompts, …): pass

A judge that did not answer, passed by ``on_judge_error: pass``, makes each of its rules a ``pass`` that
says so; an evaluation without the judge's figures is an error (ValueError), never a silent pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freestack import version
from freestack.evaluate.spec import JUDGE_METRICS, METRICS, SERVING_FIGURES, GateSpec, better_word, goal_of
from freestack.keys import NO_KEYS, Keys

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

#: float noise allowed at a bar (0.1 + 0.2 - 0.3 is not 0)
_EPS = 1e-12


def direction_of(metric: str, explicit: str | None = None) -> str:
    return goal_of(metric, explicit) or "maximize"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "block"


def _pair(a: float, b: float) -> tuple[str, str]:
    """Two values to 4 decimals, or to more where 4 would show different numbers as the same."""
    for digits in (4, 6, 8, 10):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb or abs(a - b) <= _EPS:
            break
    return sa, sb


def _change(better_by: float) -> str:
    """``better by 0.0100``, ``worse by 0.0100`` or ``unchanged``."""
    size = abs(better_by)
    if size <= _EPS:
        return "unchanged"
    return f"{'better' if better_by > 0 else 'worse'} by {f'{size:.4f}' if size >= 5e-5 else f'{size:.1e}'}"


def decide(
    gate: GateSpec,
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    costs: dict[str, Any] | None = None,
    champion_costs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The decision and every reason for it, ready for the version's lineage and the task log.
    ``costs``: the candidate's, as its lineage and evaluation record them (``max_model_mb``,
    ``max_train_cost``, ``max_latency_p99_ms``, ``max_peak_memory_mb``); ``champion_costs``:
    production's (``max_regression`` on a serving figure)."""
    task = candidate.get("task", "classification")
    metric = gate.metric or METRICS[task][0]
    if metric not in candidate:
        raise ValueError(
            f"gate metric {metric!r} is not a {task} metric; use one of {', '.join(METRICS[task])}"
        )
    goal = direction_of(metric, gate.direction)
    sign = 1.0 if goal == "maximize" else -1.0
    value = float(candidate[metric])
    reasons: list[str] = []
    passed = True
    if gate.threshold is not None:
        bar = float(gate.threshold)
        ok = sign * (value - bar) >= -_EPS
        passed &= ok
        op = ("≥" if ok else "<") if goal == "maximize" else ("≤" if ok else ">")
        shown, bar_shown = _pair(value, bar)
        reasons.append(f"{metric} {shown} {op} {bar_shown} (threshold, {better_word(goal)}): {_verdict(ok)}")
    base = delta = None
    if champion is None:
        reasons.append(
            "no production model yet: a first model needs only the threshold"
            if gate.threshold is not None
            else "no production model yet, and no threshold: a first model passes"
        )
    else:
        base = float(champion[metric])
        delta = sign * (value - base)  # > 0: better
        needed = gate.min_improvement * (abs(base) if gate.improvement == "relative" else 1.0)
        ok = delta >= needed - _EPS
        passed &= ok
        if needed <= 0:
            need = "no worse"
        elif gate.improvement == "relative":
            need = f"better by ≥ {needed:.4f}, {gate.min_improvement * 100:g}% of {base:.4f}"
        else:
            need = f"better by ≥ {needed:.4f}"
        shown, base_shown = _pair(value, base)
        reasons.append(
            f"{metric} {shown} vs production {base_shown}: {_change(delta)} (needed: {need}): {_verdict(ok)}"
        )
        for reason, ok in _regressions(gate, candidate, champion):
            reasons.append(reason)
            passed &= ok
    judged, ok = judge_reasons(gate, candidate, champion)
    reasons += judged
    passed &= ok
    for reason, ok in [*cost_reasons(gate, costs), *serving_reasons(gate, costs, champion_costs, champion)]:
        reasons.append(reason)
        passed &= ok
    return {
        "promote": bool(passed),
        "decision": "promote" if passed else "block",
        "metric": metric,
        "direction": goal,
        "threshold": gate.threshold,
        "candidate": value,
        "champion": base,
        "delta": delta,
        "reasons": reasons,
        "approval": gate.approval,
        "gate": gate.model_dump(),
        **({"judge": candidate.get("judge")} if gate.judge is not None else {}),
    }


def _regressions(
    gate: GateSpec, candidate: dict[str, Any], champion: dict[str, Any]
) -> list[tuple[str, bool]]:
    """``max_regression`` on the test metrics both versions have (the judge's and serving's have their own)."""
    return [
        _drop(other, allowed, float(candidate[other]), float(champion[other]))
        for other, allowed in sorted(gate.max_regression.items())
        if other not in JUDGE_METRICS
        and other not in SERVING_FIGURES
        and other in candidate
        and other in champion
    ]


def costs_of(evaluation: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The candidate's and production's costs as an evaluation's summary holds them: :func:`decide`'s."""
    costs = evaluation.get("costs") or {}
    return costs.get("candidate"), costs.get("champion")


def cost_reasons(gate: GateSpec, costs: dict[str, Any] | None) -> list[tuple[str, bool]]:
    """The rules on the candidate's costs (lineage's ``costs``), each with its figure: a candidate that
    recorded none (trained before freestack measured them) is blocked by the rule, never passed unseen."""
    costs = costs or {}
    train, serving = costs.get("train") or {}, costs.get("serving") or {}
    unserved = f"not measured ({serving['error']})" if "error" in serving else "not measured"
    remeasure = f"{unserved}: evaluate it with deploy.measure.enabled (and FREESTACK_MEASURE_SERVING on)"
    retrain, currency = "retrain it to measure it", train.get("currency", "")
    rules = [  # (the gate's rule, the figure, its value, unit, how to record it)
        ("max_model_mb", "model_mb", costs.get("model_mb"), "MB", retrain),
        ("max_train_cost", "train cost", train.get("cost"), currency, retrain),
        ("max_latency_p99_ms", "latency_p99", serving.get("latency_p99_ms"), "ms", remeasure),
        ("max_peak_memory_mb", "serving peak memory", serving.get("peak_memory_mb"), "MB", remeasure),
    ]
    out = []
    for rule, name, value, unit, fix in rules:
        bar = getattr(gate, rule)
        if bar is None:
            continue
        if value is None:
            out.append((f"{name}: not recorded by this version ({rule} {bar:g}): {fix}: block", False))
            continue
        ok = float(value) <= bar + _EPS
        shown, bar_shown = _pair(float(value), float(bar))
        out.append((f"{name} {shown} {'≤' if ok else '>'} {bar_shown} {unit} ({rule}): {_verdict(ok)}", ok))
    return out


def serving_reasons(
    gate: GateSpec, costs: dict[str, Any] | None, champion_costs: dict[str, Any] | None, champion: Any
) -> list[tuple[str, bool]]:
    """``max_regression`` on serving figures: the candidate's against production's, as a fraction of
    production's (``latency_p99: 0.2``: up to 20% slower). No production: nothing to compare; a figure
    either version lacks blocks, saying which."""
    rules = [(name, bar) for name, bar in sorted(gate.max_regression.items()) if name in SERVING_FIGURES]
    if champion is None or not rules:
        return []
    mine = (costs or {}).get("serving") or {}
    theirs = (champion_costs or {}).get("serving") or {}
    out = []
    for name, allowed in rules:
        field = SERVING_FIGURES[name]
        value, base = mine.get(field), theirs.get(field)
        if value is None or base is None:
            who = "the candidate" if value is None else "production"
            out.append((f"{name}: {who} has no {field} to compare (max_regression.{name}): block", False))
            continue
        worse = (float(value) - float(base)) / float(base) if base else 0.0
        ok = worse <= allowed + _EPS
        change = (
            f"{abs(worse) * 100:.1f}% {'more' if worse > 0 else 'less'}" if abs(worse) > _EPS else "unchanged"
        )
        out.append(
            (
                f"{field} {float(value):.4g} vs production {float(base):.4g}: {change} (allowed: up to "
                f"{allowed * 100:g}% more, max_regression.{name}): {_verdict(ok)}",
                ok,
            )
        )
    return out


def _judge_rules(gate: GateSpec) -> list[tuple[str, str, float]]:
    """(rule, metric, bar) of every rule on a judge figure."""
    rules = [
        ("min_judge_score", "judge_score", gate.min_judge_score),
        ("min_win_rate", "judge_win_rate", gate.min_win_rate),
    ]
    rules += [
        (f"max_regression.{m}", m, v) for m, v in sorted(gate.max_regression.items()) if m in JUDGE_METRICS
    ]
    return [r for r in rules if r[2] is not None]


def judge_reasons(
    gate: GateSpec, candidate: dict[str, Any], champion: dict[str, Any] | None
) -> tuple[list[str], bool]:
    """The reasons of the judge's rules (:mod:`freestack.judging.client`), and whether they all pass."""
    rules = _judge_rules(gate)
    if gate.judge is None or not rules:
        return [], True
    info = candidate.get("judge") or {}
    status = info.get("status")
    if status == "unavailable":
        why = f"{info.get('reason')} (gate.judge.on_judge_error: pass)"
        return [f"gate.{rule} not checked: {why}: pass" for rule, _, _ in rules], True
    if status == "skipped":
        return [f"gate.{rule} not checked: {info.get('reason')}: pass" for rule, _, _ in rules], True
    if status != "judged":
        raise ValueError(
            f"the evaluation holds no judge figures for gate.{rules[0][0]}: run evaluate again with gate.judge"
        )
    out, passed = [], True
    for rule, metric, bar in rules:
        if rule.startswith("max_regression."):
            if champion is None:
                continue  # a first model: no production to drop from
            reason, ok = _drop(metric, bar, float(candidate[metric]), float(champion[metric]), judged=True)
        else:
            reason, ok = _judge_bar(rule, metric, bar, candidate, info)
        out.append(reason)
        passed &= ok
    return out, passed


def _judge_bar(
    rule: str, metric: str, bar: float, c: dict[str, Any], info: dict[str, Any]
) -> tuple[str, bool]:
    value = float(c[metric])
    ok = value >= bar - _EPS
    by = f"{info.get('model')} at {info.get('url')}"
    if metric == "judge_score":
        detail = f"mean 1-5 of {c['judge_judged']} prompts judged by {by}, {c['judge_failures']} failed"
    else:
        detail = (
            f"95% CI {c['judge_win_rate_low']:.4f}-{c['judge_win_rate_high']:.4f}; {c['judge_wins']} wins, "
            f"{c['judge_ties']} ties, {c['judge_losses']} losses of {c['judge_judged']} prompts asked in both "
            f"orders by {by}, {c['judge_failures']} failed"
        )
    shown, bar_shown = _pair(value, bar)
    return f"{metric} {shown} {'≥' if ok else '<'} {bar_shown} ({rule}; {detail}): {_verdict(ok)}", ok


def _drop(metric: str, allowed: float, mine: float, theirs: float, judged: bool = False) -> tuple[str, bool]:
    """A ``max_regression`` bar: how much worse than production it may be (a judge figure: lower)."""
    better_by = (1.0 if direction_of(metric) == "maximize" else -1.0) * (mine - theirs)  # < 0: worse
    ok = -better_by <= allowed + _EPS
    worse = "lower" if judged else "worse"
    allow = f"up to {allowed:.4f} {worse}" if allowed > 0 else f"no {worse}"
    return (
        f"{metric} {' vs production '.join(_pair(mine, theirs))}: {_change(better_by)} "
        f"({'judge; ' if judged else ''}allowed: {allow}): {_verdict(ok)}",
        ok,
    )


def decide_again(
    spec: PipelineSpec, candidate_uri: str, champion_uri: str | None, keys: Keys = NO_KEYS
) -> dict[str, Any]:
    """The gate's decision for a registered candidate against the production there is now (None: none),
    both scored again on the candidate's own test rows (:func:`freestack.evaluate.measure.rescore`, the
    judge's figures included, ``keys.judge`` its API key): what ``promote`` asks when production moved
    after ``evaluate``. Serving figures are compared as each version's evaluation recorded them. Raises
    EvaluationError or ValueError."""
    from freestack.evaluate.measure import rescore

    candidate, champion = rescore(spec, candidate_uri, champion_uri, keys)
    champion_costs = version.open(champion_uri).lineage.costs if champion_uri else None
    return decide(spec.gate, candidate, champion, version.open(candidate_uri).lineage.costs, champion_costs)


#: Airflow keeps a DAG-run note in 1000 characters; the window task's line (about 120) follows
NOTE_LIMIT = 860


def decision_note(decision: dict[str, Any], model: str) -> str:
    """The DAG-run note (Markdown) for a gate decision: blocked, with every reason and its numbers; or a
    short line when the candidate goes on to ``promote`` (or to a human's approval)."""
    cand, champ = decision.get("candidate_version"), decision.get("champion_version")
    metric, value = decision["metric"], decision["candidate"]
    vs = f" vs {decision['champion']:.4f} for production `{champ}`" if champ else " (no production model yet)"
    if not decision["promote"]:
        head = (
            f"**Gate: blocked.** Candidate `{cand}` of `{model}` stays out of production"
            f"{f' (`{champ}` keeps serving)' if champ else ''}: {metric} {value:.4f}{vs}."
        )
        tail = "\n\nRegistered with this decision; `promote` and `deploy` were skipped."
        return _capped(head + "\n\n" + "\n".join(f"- {r}" for r in decision["reasons"]), tail)
    if decision.get("approval") == "required":
        return (
            f"**Gate: passed, awaiting approval.** Candidate `{cand}` of `{model}` may replace production "
            f"once a human approves (`approve`): {metric} {value:.4f}{vs}."
        )
    # `promote` moves production, and may find it moved and decide again: it says what became of it
    return (
        f"**Gate: passed.** Candidate `{cand}` of `{model}` goes on to `promote`: {metric} {value:.4f}{vs}."
    )


def _capped(body: str, tail: str) -> str:
    more = "\n- … (every reason is in the gate task's log)"
    if len(body) + len(tail) > NOTE_LIMIT:
        body = body[: NOTE_LIMIT - len(tail) - len(more)].rstrip() + more
    return body + tail


__all__ = [
    "NOTE_LIMIT",
    "cost_reasons",
    "costs_of",
    "serving_reasons",
    "GateSpec",
    "decide",
    "decide_again",
    "decision_note",
    "direction_of",
    "judge_reasons",
]
