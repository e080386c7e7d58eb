"""After the gate decided: commit the candidate as an immutable registry version, with its model card
and the decision (blocked candidates too, so every decision stays on record).

Plain Python over the registry; the evaluate stage's gate task calls :func:`register_candidate`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError
from freestack.registry.core import ModelRegistry, RegistryError, VersionExists, registry_for
from freestack.registry.hub import push_to_hub
from freestack.storage import join

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

#: the sweep summary's fields that the model card shows
CARD_SWEEP_FIELDS = (
    "sweep_id",
    "method",
    "metric",
    "best_trial",
    "best_value",
    "best_params",
    "trials",
    "stopped_early",
    "epochs_total",
)


class PromotionError(FreestackError):
    """The candidate cannot be registered; retrying does not help (the message says why)."""


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, int | float)}


def candidate_card(spec: PipelineSpec, ev: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """The model card's content for the evaluated candidate ``ev`` and the gate's ``decision``."""
    sweep = ev.get("sweep") or None
    window = ev["window"]
    return {
        "metrics": {f"test_{k}": v for k, v in _numbers(ev["candidate"]).items()},
        "window": window,
        "gate": decision,
        "sweep": {k: sweep[k] for k in CARD_SWEEP_FIELDS if k in sweep} if sweep else None,
        "intended_use": spec.description or f"Predict {spec.source.schema_.target} from {spec.name} rows.",
        "limitations": (
            f"Trained and tested only on the {spec.name} lake window up to {window['end_ds']} "
            f"({window['days']} days); scores on data outside that distribution are unknown."
        ),
        "tags": sorted({"freestack", f"pipeline:{spec.name}", *spec.tags}),
    }


def register_candidate(
    spec: PipelineSpec,
    ev: dict[str, Any],
    decision: dict[str, Any],
    *,
    run_id: str,
    hub: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """Register the evaluated candidate (``ev["candidate_uri"]``) with its card and the decision, and
    remove its candidate folder; push it to the Hub when the spec names a repo and ``hub`` (token,
    endpoint) has a token. A retry by the same run finds its version committed and takes it as it is;
    another run's version of the same name is refused (versions are immutable)."""
    version = ev["candidate_version"]
    reg = registry_for(spec)
    lineage = {
        "gate": decision,
        "evaluation": {
            "report": str(join(reg.version_path(version), "evaluation", "report.html")),
            "champion_version": ev.get("champion_version"),
            "candidate": _numbers(ev["candidate"]),
        },
    }
    costs = (ev.get("costs") or {}).get("candidate")
    if costs:  # the training's, as its lineage had them, and the serving's the evaluation measured
        lineage["costs"] = costs
    try:
        uri = reg.register(
            ev["candidate_uri"], version, lineage_updates=lineage, card=candidate_card(spec, ev, decision)
        )
    except VersionExists:
        uri = _registered_by(reg, version, run_id)
    except RegistryError as exc:
        raise PromotionError(str(exc)) from None
    _drop_candidate(reg, version, ev["candidate_uri"])
    pushed = None
    if spec.model.hub_repo:
        token, endpoint = hub
        pushed = push_to_hub(reg, version, spec.model.hub_repo, token, endpoint=endpoint)
    log.info("registered %s %s at %s (model card: %s/README.md)", spec.model_name, version, uri, uri)
    return {"version": version, "version_uri": uri, "hub": pushed, "promote": decision["promote"]}


def _drop_candidate(reg: ModelRegistry, version: str, candidate_uri: str) -> None:
    """The candidate's folder, once registered, is a copy: it goes (a folder the user named stays)."""
    if str(candidate_uri).rstrip("/") != str(reg.candidate_path(version)).rstrip("/"):
        return
    try:
        reg.remove_candidate(version)
    except Exception as exc:  # the version is registered: a leftover copy is no reason to fail
        log.warning("could not remove the registered candidate's folder %s: %s", candidate_uri, exc)


def _registered_by(reg: ModelRegistry, version: str, run_id: str) -> str:
    """The URI of ``version`` if this run committed it (a retry after the commit), else PromotionError."""
    got = reg.get(version)
    if (got.get("lineage") or {}).get("airflow", {}).get("run_id") != run_id:
        raise PromotionError(
            f"version {version} of {reg.model} is registered already by another run; versions are immutable"
        )
    return reg.version_uri(version)


__all__ = ["PromotionError", "candidate_card", "register_candidate"]
