"""Deployment records: ``deployments/<model>/<name>.json`` under the storage root says what is served
where, which version, since when, and the history of switches. Replaced by compare-and-swap, so two
deploys of one deployment never both win.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from freestack.errors import DeployError
from freestack.registry.core import ModelRegistry
from freestack.storage import cas, join, list_objects, subfolders, to_path

#: how many switches a deployment record keeps in its history
HISTORY = 20
#: what a record keeps of the one it replaced (its ``previous``)
PREVIOUS = ("version", "version_uri", "url", "pid", "color", "deployed_at")


def now() -> str:
    """A record's time stamp: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def switched(prior: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
    """A new record's ``previous`` (what it keeps of ``prior``) and ``history`` (``prior``'s with ``entry``,
    the switch just made, appended; the newest :data:`HISTORY` kept)."""
    return {
        "previous": {k: prior.get(k) for k in PREVIOUS} if prior else None,
        "history": [*(prior or {}).get("history", []), entry][-HISTORY:],
    }


class Deployments:
    """``deployments/<model>/<name>.json`` under a storage root, replaced by compare-and-swap."""

    def __init__(self, root_uri: str, model: str):
        self.root = to_path(root_uri)
        self.model = model
        self.folder = join(self.root, "deployments", model)

    def path(self, name: str):
        return join(self.folder, f"{name}.json")

    def read(self, name: str) -> tuple[dict[str, Any] | None, Any]:
        got = cas.read(self.path(name))
        if got is None:
            return None, None
        return json.loads(got.data), got.token

    def get(self, name: str) -> dict[str, Any] | None:
        return self.read(name)[0]

    def write(self, name: str, record: dict[str, Any], token: Any) -> None:
        data = json.dumps(record, indent=2, sort_keys=True).encode()
        try:
            if token is None:
                cas.create(self.path(name), data)
            else:
                cas.replace(self.path(name), data, token)
        except cas.CasConflict:
            raise DeployError(
                f"deployment {self.model}/{name} was changed by someone else meanwhile; retry the deploy"
            ) from None

    def names(self) -> list[str]:
        try:
            return sorted(
                p.name[: -len(".json")] for p in list_objects(self.folder) if p.name.endswith(".json")
            )
        except FileNotFoundError:
            return []


def all_deployments(root_uri: str) -> list[dict[str, Any]]:
    """Every deployment record under the root, with its model and name."""
    out = []
    for model in subfolders(join(to_path(root_uri), "deployments")):
        d = Deployments(root_uri, model)
        out += [rec for rec in map(d.get, d.names()) if rec]
    return out


def served_alias(record: dict[str, Any]) -> str | None:
    """The alias a deployment serves: its record's; production for records from before aliases were kept;
    None for a version pinned by name (`freestack serve deploy --version`)."""
    return record.get("alias", "production")


def serving_records(root_uri: str, model: str) -> list[dict[str, Any]]:
    """The records of the model's deployments that serve now, each with its name."""
    deployments = Deployments(root_uri, model)
    records = ({**(deployments.get(name) or {}), "name": name} for name in deployments.names())
    return [r for r in records if r.get("state") == "serving"]


def alias_drift(root_uri: str, record: dict[str, Any], aliases: dict[str, Any] | None = None) -> str | None:
    """What is wrong when a serving deployment's version is not the one its alias (``production`` unless
    the record names another) points at now, with the fix; None when they agree, when nothing is served
    or when the version was pinned by name."""
    if record.get("state") != "serving" or not record.get("version"):
        return None
    alias = served_alias(record)
    if alias is None:
        return None
    if aliases is None:
        try:
            aliases = ModelRegistry(root_uri, record["model"]).aliases()
        except (OSError, ValueError):
            return None
    wanted = aliases.get(alias)
    if wanted is None or wanted in (record["version"], record.get("canary_version")):  # a canary serves it
        return None
    return (
        f"serves {record['version']} but {alias} is {wanted}: the alias moved without a deploy; redeploy with "
        f"a {alias} move through the pipeline's DAG (`freestack models promote PIPELINE {wanted}`) or "
        "`freestack serve deploy PIPELINE`"
    )


#: what to do about a local deployment that is DOWN
REDEPLOY = "redeploy, e.g. `freestack serve deploy <pipeline>`"


def live_state(described: dict[str, Any]) -> tuple[str, str | None]:
    """What a local deployment, as :func:`freestack.serving.local.describe` gives it, is now, and what to do
    about it: ``serving`` only while its process lives and its model answers, ``DOWN`` with why otherwise
    (a record says ``serving`` until the next deploy or stop, even after its server died). The one truth
    of ``serve status`` and the UI."""
    state = str(described.get("state") or "?")
    if state != "serving" or described.get("target", "local") != "local":
        return state, None
    if not described.get("alive"):
        return "DOWN", f"the recorded process is gone: {REDEPLOY}"
    if str(described.get("health") or "").startswith("HTTP "):
        # its model does not answer (an unloaded model's 404); a health check that timed out on a busy
        # machine is shown as such, not as DOWN
        return (
            "DOWN",
            f"the process runs but its model does not answer: health {described['health']}; see its log, and {REDEPLOY}",
        )
    return "serving", None


__all__ = [
    "HISTORY",
    "PREVIOUS",
    "REDEPLOY",
    "Deployments",
    "alias_drift",
    "all_deployments",
    "live_state",
    "now",
    "served_alias",
    "serving_records",
    "switched",
]
