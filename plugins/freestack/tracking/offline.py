"""Offline W&B runs read back: what the freestack W&B pages show (:mod:`freestack.ui.wandb_pages`).

wandb 0.31 writes an offline run as one transaction log (``run-<id>.wandb``) and no
``config.yaml``/``wandb-summary.json``, so the run's config and summary are read with wandb's own
reader, ``wandb leet inspect --summary --json <folder>`` (its documented CLI; nothing is unpickled
and the log's format stays wandb's business). That takes about a second, so a result is kept until
the log changes. ``wandb sync`` leaves a ``<log>.synced`` marker beside an uploaded log.

freestack adds ``freestack/run.json`` to each offline run it starts (name, project, job type, tags):
the list of runs reads those instead of every log.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from freestack.errors import FreestackError

#: freestack's card of an offline run, inside the run folder (the folder ``freestack/`` is ours)
CARD = Path("freestack") / "run.json"
#: seconds ``wandb leet inspect`` may take
INSPECT_TIMEOUT_S = 60.0
_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}
_CACHE_MAX = 64
_LOCK = threading.Lock()


class OfflineRunError(FreestackError):
    """wandb could not read the run's log (the message has wandb's words)."""


def sync_command(folder: str | os.PathLike) -> str:
    return f"wandb sync {shlex.quote(str(folder))}"


def write_card(folder: str | os.PathLike, info: dict[str, Any]) -> None:
    """Leave freestack's card in a run folder; never raises (it only helps the list of runs)."""
    try:
        path = Path(folder) / CARD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, default=str, indent=2, sort_keys=True))
    except OSError:
        pass


def read_card(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / CARD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def logs_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.wandb") if p.is_file())


def synced(folder: Path) -> bool:
    """Whether ``wandb sync`` uploaded the run (it leaves ``<log>.synced`` beside the log)."""
    logs = logs_of(folder)
    return bool(logs) and all(p.with_name(p.name + ".synced").exists() for p in logs)


def inspect_run(folder: Path) -> dict[str, Any]:
    """The run's state, config, summary, tags... as wandb reads them from its log (cached per log
    version); OfflineRunError when the folder holds no log or wandb cannot read it."""
    logs = logs_of(folder)
    if not logs:
        raise OfflineRunError(f"{folder} holds no .wandb log")
    st = logs[-1].stat()
    key = (str(logs[-1]), st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(folder)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OfflineRunError(f"wandb could not read {folder}: {exc}") from None
    if proc.returncode != 0:
        raise OfflineRunError(f"wandb could not read {folder}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise OfflineRunError(f"wandb's reader printed no JSON for {folder}: {proc.stdout[:200]!r}") from None
    with _LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = data
    return data


def offline_runs(root: Path, limit: int = 200) -> list[dict[str, Any]]:
    """The offline runs under ``root`` (wandb's ``wandb/offline-run-<time>-<id>`` layout), newest first,
    each with freestack's card (empty for runs freestack did not start). A run resumed after a killed
    attempt has a folder per attempt, all with its id: it is listed once, from its newest folder, with
    ``attempts`` counting them (``wandb sync`` uploads them into the one run)."""
    folders = sorted((p for p in (root / "wandb").glob("offline-run-*") if p.is_dir()), reverse=True)
    runs: dict[str, dict[str, Any]] = {}
    for p in folders:
        run_id = p.name.rsplit("-", 1)[-1]
        if run_id in runs:
            runs[run_id]["attempts"] += 1
        elif len(runs) < limit:
            runs[run_id] = {"folder": p, "card": read_card(p), "synced": synced(p), "attempts": 1}
    return list(runs.values())


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``model.hidden``), wandb's own ``_``-keys left out."""
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in value.items():
        if str(k).startswith("_"):
            continue
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and "_type" not in v:
            out.update(flat(v, name))
        else:
            out[name] = v
    return out


def shown(value: Any) -> str:
    """A config or summary value as text: numbers to 6 significant digits, media by their kind."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, dict) and "_type" in value:
        return f"({value['_type']})"
    return json.dumps(value, default=str)


__all__ = [
    "CARD",
    "OfflineRunError",
    "flat",
    "inspect_run",
    "logs_of",
    "offline_runs",
    "read_card",
    "shown",
    "sync_command",
    "synced",
    "write_card",
]
