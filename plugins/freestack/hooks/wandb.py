"""WandbHook: the ``wandb`` connection, read into :class:`freestack.tracking.wandb.WandbSettings`.

Connection type ``wandb``:
- ``password``: the API key;
- ``host``: a self-hosted server URL (optional; default ``https://api.wandb.ai``);
- extra ``{"entity": ..., "project": ..., "mode": "online" | "offline" | "disabled"}``.

With no connection named ``wandb_default`` a run is offline with no key (or as ``WANDB_MODE`` says).
Tasks read it with :meth:`WandbHook.checked_settings`: a key the server rejects fails the task at once.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.exceptions import AirflowFailException

from freestack.errors import FreestackError
from freestack.tracking.wandb import (
    DEFAULT_BASE_URL,
    TrackingRun,
    WandbKeyRejected,
    WandbSettings,
    normalize_base_url,
    probe_server,
    resolve_mode,
    start_run,
    verify_api_key,
    wandb_root,
)


class WandbHook(BaseHook):
    """The ``wandb`` connection: API key, optional self-hosted server, entity/project/mode."""

    conn_name_attr = "wandb_conn_id"
    default_conn_name = "wandb_default"
    conn_type = "wandb"
    hook_name = "Weights & Biases"

    def __init__(self, wandb_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wandb_conn_id = wandb_conn_id or self.default_conn_name

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"password": "API key", "host": "Server URL (self-hosted, optional)"},
            "placeholders": {
                "host": DEFAULT_BASE_URL,
                "extra": '{"entity": "my-team", "project": "my-project", "mode": "online"}',
            },
        }

    def settings(self) -> WandbSettings:
        """The resolved settings (read once per hook)."""
        return self._settings

    @cached_property
    def _settings(self) -> WandbSettings:
        try:
            conn = self.get_connection(self.wandb_conn_id)
        except Exception as exc:  # AirflowNotFoundException, or no metadata/API to ask
            if self.wandb_conn_id == self.default_conn_name:
                return WandbSettings(mode=resolve_mode(None, None))
            raise FreestackError(
                f"W&B connection {self.wandb_conn_id!r} was not found ({exc}). Create it with "
                "conn_type 'wandb', password = API key, host = server URL (optional), "
                'extra {"entity": ..., "project": ..., "mode": "online|offline|disabled"}'
            ) from None
        extra = conn.extra_dejson or {}
        api_key = (conn.password or "").strip() or None
        try:
            mode = resolve_mode(extra.get("mode"), api_key)
        except FreestackError as exc:
            raise FreestackError(f"connection {self.wandb_conn_id!r}: {exc}") from None
        return WandbSettings(
            mode=mode,
            api_key=api_key,
            base_url=normalize_base_url(conn.host, conn.port),
            entity=extra.get("entity") or None,
            project=extra.get("project") or None,
            source=f"connection {self.wandb_conn_id!r}",
        )

    def checked_settings(self) -> WandbSettings:
        """:meth:`settings`, with an online key first checked with its server (once per process): a
        rejected key fails the task at once and without retries (a retry cannot mend a key), instead
        of every run quietly going offline. Offline and disabled settings contact no server."""
        s = self.settings()
        try:
            verify_api_key(s)  # a server that cannot be asked: the run says so and records offline
        except WandbKeyRejected as exc:
            raise AirflowFailException(str(exc)) from None
        return s

    def get_conn(self) -> WandbSettings:
        return self.settings()

    def start_run(self, **kwargs: Any) -> TrackingRun:
        """``start_run`` with this connection's settings; ``project`` defaults to the connection's."""
        s = self.settings()
        kwargs.setdefault("project", s.project)
        return start_run(s, **kwargs)

    def test_connection(self) -> tuple[bool, str]:
        try:
            s = self.settings()
        except Exception as exc:
            return False, str(exc)
        if s.mode == "disabled":
            return True, "W&B is disabled for this connection: runs record nothing"
        if s.mode == "offline":
            return True, (
                f"offline mode: runs are written under {wandb_root()} (or the task's run_dir) and "
                "uploaded later with `wandb sync <folder>`; no server is contacted"
            )
        if not s.api_key:
            return False, "online mode needs an API key (the connection's password)"
        problem = probe_server(s.base_url)
        if problem:
            return False, f"W&B server {s.base_url} is not reachable: {problem}"
        try:
            problem = verify_api_key(s)
        except WandbKeyRejected as exc:
            return False, str(exc)
        if problem:
            return False, f"W&B server {s.base_url}: {problem}"
        return True, f"W&B server {s.base_url} reachable; API key accepted"


__all__ = ["WandbHook"]
