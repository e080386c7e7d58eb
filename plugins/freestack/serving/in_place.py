"""Promote another LoRA version of the same base on the running server: no new server, no second copy of
the base.

A local text-generation deployment on ``runtime: mlserver`` answers any registered adapter version of its
base by name (``<model>:<version>``, :mod:`freestack_server.mlserver.adapters`). When the deploy is asked to serve
such a version, and the server would otherwise be started exactly as the running one (same address, ports,
settings and key), :func:`promote_in_place`:

1. smoke-tests the version through the running server's own port and OpenAI API
   (``model: <model>:<version>``): its answers must be the evaluation's, as a new server's must;
2. names it in the server's *serves file* (``<color>.serves`` beside its env file, replaced atomically),
   which the server reads at the next request: from then on the model's own name, and the V2 protocol,
   answer with it;
3. returns the deployment record, now naming that version (``in_place: true`` in the record and its
   history).

A failed smoke test changes nothing: the running version keeps serving. Anything else (another base, a
full-weight version, a changed setting, a server from before serves files) is a blue/green deploy
(:func:`freestack.serving.local.deploy_local`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from freestack.serving.records import now, switched
from freestack.serving.smoke import smoke_openai

log = logging.getLogger(__name__)


def promote_in_place(
    live: dict[str, Any],
    serves_file: Path,
    version: str,
    version_uri: str,
    sample: dict[str, Any],
    *,
    api_key: SecretStr | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Serve ``version`` on the live server (its record ``live``, its serves file ``serves_file``) once it
    answers ``sample`` as the evaluation did; return the new record. DeployError from the smoke test leaves
    the live version serving."""
    model = live["model"]
    t0 = time.monotonic()
    key = api_key.get_secret_value() if api_key else None
    checked = smoke_openai(live["server_url"], sample, f"{model}:{version}", api_key=key)
    t1 = time.monotonic()
    _replace(serves_file, version)
    log.info(
        "%s %s serves %s in place (pid %s, %s): smoke test of %d rows through %s passed",
        model,
        live.get("name"),
        version,
        live.get("pid"),
        live.get("color"),
        checked["rows"],
        live["server_url"],
    )
    at = now()
    entry = {"version": version, "at": at, "color": live.get("color"), "reason": reason, "in_place": True}
    return {
        **live,
        "version": version,
        "version_uri": version_uri,
        "deployed_at": at,
        "in_place": True,
        "timings": {"smoke_s": round(t1 - t0, 3), "switch_s": round(time.monotonic() - t1, 3)},
        "smoke": {k: checked[k] for k in ("rows", "max_abs_diff", "tolerance")},
        **switched(live, entry),
    }


def _replace(path: Path, version: str) -> None:
    """Write the serves file whole: a server reading it sees the old version or the new one, never part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(version + "\n")
    os.replace(tmp, path)


__all__ = ["promote_in_place"]
