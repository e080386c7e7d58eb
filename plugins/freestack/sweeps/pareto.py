"""Sweeps on several objectives: Optuna's samplers propose the trials (``method: tpe | nsga2``), the Pareto
front of the finished trials is kept, and a rule the user writes picks the candidate (``candidate:``).

The agents keep no state of their own (:mod:`freestack.sweeps.core`): each proposal rebuilds an in-memory
Optuna study from the trials' files (finished ones with their objective values, running ones as running,
so that TPE's constant liar keeps agents apart, failed ones as failed) and asks it for the next point,
the sampler seeded by the trial's number, as W&B's engine is. A trial's objective is its kept epoch's
metric (:func:`freestack.sweeps.values.kept_value`) or a figure of its training's costs
(:data:`freestack.sweeps.spec.TRIAL_FIGURES`).
"""

from __future__ import annotations

import json
from typing import Any

from freestack.sweeps.spec import CandidateLimit, CandidateRule, SweepSpec, objectives
from freestack.sweeps.values import objective_value


def values_of(trial: dict[str, Any], config: SweepSpec) -> list[float] | None:
    """The trial's values on every objective, in order; None when one is missing."""
    out = [objective_value(trial, name, goal) for name, goal in objectives(config)]
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def distributions(config: SweepSpec) -> dict[str, Any]:
    """The sweep's searched leaves (dotted paths) as Optuna distributions; fixed values are left out."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    encoded = _encoded(config)
    for path, p in config.leaves().items():
        dist = p.distribution
        if (
            p.values is not None
        ):  # with a list or mapping among them (channels: [8, 16]), every one as JSON text
            out[path] = CategoricalDistribution(
                [json.dumps(v, sort_keys=True) if path in encoded else v for v in p.values]
            )
        elif dist == "int_uniform":
            out[path] = IntDistribution(int(p.min), int(p.max))
        elif dist in ("uniform", "q_uniform", "log_uniform_values"):
            step = p.q if dist == "q_uniform" else None
            log_scale = dist == "log_uniform_values"
            out[path] = FloatDistribution(float(p.min), float(p.max), log=log_scale, step=step)
    return out


def _encoded(config: SweepSpec) -> set[str]:
    """The leaves whose values Optuna keeps as JSON text (a list or mapping among them)."""
    return {
        path
        for path, p in config.leaves().items()
        if not all(v is None or isinstance(v, bool | int | float | str) for v in p.values or [])
    }


def study_of(config: SweepSpec, trials: list[dict[str, Any]], seed: int | None = None):
    """An in-memory Optuna study holding the sweep's trials, with the method's sampler."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    goals = [goal for _, goal in objectives(config)]
    trials_cap = int(config.run_cap or 8)
    if config.method == "nsga2":
        # a generation: a quarter of the trials, at least 2, at most Optuna's default 50
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, trials_cap // 4)))
    else:
        # random trials before TPE models: a third of the trials, at least 2, at most its default 10
        startup = max(2, min(10, trials_cap // 3))
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    study = optuna.create_study(directions=goals, sampler=sampler)
    dists = distributions(config)
    encoded = _encoded(config)
    for t in trials:
        params = {
            k: json.dumps(v, sort_keys=True) if k in encoded else v
            for k, v in (t.get("params") or {}).items()
            if k in dists
        }
        if set(params) != set(dists):
            continue  # a trial of another parameter tree (an edited spec): nothing to learn from
        values = values_of(t, config) if t["state"] == "finished" else None
        state = {"running": TrialState.RUNNING, "finished": TrialState.COMPLETE}.get(
            t["state"], TrialState.FAIL
        )
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # finished without a figure on every objective
        try:
            made = create_trial(
                params=params, distributions=dists, values=values, state=state, user_attrs={"id": t["id"]}
            )
        except ValueError:  # a value outside today's distributions (an edited spec): nothing to learn from
            continue
        study.add_trial(made)
    return study


def suggest(config: SweepSpec, trials: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The next trial's config, in the W&B engine's form (``{"lr": {"value": 0.1}, "model": {"value":
    {"dropout": 0.2}}}``): the method's sampler on the trials so far, seeded for the trial's number."""
    dists = distributions(config)
    asked = study_of(config, trials, seed).ask(dists).params
    encoded = _encoded(config)
    fixed = {path: p.value for path, p in config.leaves().items() if p.value is not None}
    chosen = {**fixed, **{k: json.loads(v) if k in encoded else v for k, v in asked.items()}}
    out: dict[str, Any] = {}
    for path, value in chosen.items():
        head, *rest = path.split(".")
        if not rest:
            out[head] = {"value": value}
            continue
        node = out.setdefault(head, {"value": {}})["value"]
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return out


def front(config: SweepSpec, trials: list[dict[str, Any]]) -> list[str]:
    """The ids of the finished trials on the Pareto front of the objectives (none better on every one)."""
    return [t.user_attrs["id"] for t in study_of(config, trials).best_trials]


def choose(config: SweepSpec, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The candidate among the front's ``rows`` (each with every objective's value by name) by the sweep's
    ``candidate`` rule, and the reason in words. No rule: the best on the first objective."""
    goals = dict(objectives(config))
    rule = config.candidate or CandidateRule(best=next(iter(goals)))
    kept, dropped = _within(rows, rule.limits)
    if not kept:
        raise ValueError(f"no trial of the front keeps candidate.limits: {'; '.join(dropped)}")
    if rule.weights:
        scores = _scores(kept, rule.weights, goals)
        best = max(kept, key=lambda r: scores[r["trial"]])
        weights = ", ".join(f"{w:g} x {name}" for name, w in rule.weights.items())
        why = f"the highest weighted score {scores[best['trial']]:.4f} ({weights})"
    else:
        name = rule.best
        pick = max if goals[name] == "maximize" else min
        best = pick(kept, key=lambda r: r[name])
        why = f"the best {name} ({best[name]:.6g}, {goals[name]})"
    limits = f" within {_limits(rule.limits)}" if rule.limits else ""
    out = f"; left out: {'; '.join(dropped)}" if dropped else ""
    return best, f"{best['trial']}: {why} of {len(kept)} front trials{limits}{out}"


def _within(rows: list[dict[str, Any]], limits: dict[str, CandidateLimit]) -> tuple[list, list[str]]:
    kept, dropped = [], []
    for r in rows:
        broken = [
            f"{name} {r[name]:.6g} {'<' if b.min is not None and r[name] < b.min else '>'} "
            f"{b.min if b.min is not None and r[name] < b.min else b.max:g}"
            for name, b in limits.items()
            if (b.min is not None and r[name] < b.min) or (b.max is not None and r[name] > b.max)
        ]
        (dropped.append(f"{r['trial']} ({', '.join(broken)})") if broken else kept.append(r))
    return kept, dropped


def _scores(rows: list[dict[str, Any]], weights: dict[str, float], goals: dict[str, str]) -> dict[str, float]:
    """Each row's sum of weight x its value scaled to 0 (the worst of ``rows``) .. 1 (the best)."""
    scores = dict.fromkeys((r["trial"] for r in rows), 0.0)
    for name, w in weights.items():
        lo, hi = min(r[name] for r in rows), max(r[name] for r in rows)
        for r in rows:
            scaled = 0.5 if hi == lo else (r[name] - lo) / (hi - lo)
            scores[r["trial"]] += w * (scaled if goals[name] == "maximize" else 1 - scaled)
    return scores


def _limits(limits: dict[str, CandidateLimit]) -> str:
    parts = []
    for name, b in limits.items():
        if b.min is not None:
            parts.append(f"{name} ≥ {b.min:g}")
        if b.max is not None:
            parts.append(f"{name} ≤ {b.max:g}")
    return ", ".join(parts)


__all__ = ["choose", "distributions", "front", "study_of", "suggest", "values_of"]
