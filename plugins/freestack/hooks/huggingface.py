"""HuggingFaceHook: the ``huggingface`` connection behind pushing registry versions to the Hub.

Connection type ``huggingface``: ``password`` is the access token (write scope), extra
``{"endpoint": "https://huggingface.co", "namespace": "my-org"}`` (both optional; ``host`` may give
the endpoint too). With no connection named ``huggingface_default`` (or one without a token),
nothing is pushed: the registry stays local and the push is skipped with a log line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from freestack.errors import FreestackError
from freestack.spec import load_spec


@dataclass(frozen=True)
class HubSettings:
    token: str | None = None
    endpoint: str | None = None
    namespace: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def __repr__(self) -> str:  # never print the token
        return f"HubSettings(token={'***' if self.token else None}, endpoint={self.endpoint!r})"


class HuggingFaceHook(BaseHook):
    conn_name_attr = "huggingface_conn_id"
    default_conn_name = "huggingface_default"
    conn_type = "huggingface"
    hook_name = "Hugging Face Hub"

    def __init__(self, huggingface_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.huggingface_conn_id = huggingface_conn_id or self.default_conn_name

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"password": "Access token (write)", "host": "Hub endpoint (optional)"},
            "placeholders": {
                "host": "https://huggingface.co",
                "extra": '{"endpoint": "https://huggingface.co", "namespace": "my-org"}',
            },
        }

    @cached_property
    def settings(self) -> HubSettings:
        try:
            conn = self.get_connection(self.huggingface_conn_id)
        except Exception as exc:  # AirflowNotFoundException, or no metadata/API to ask
            if self.huggingface_conn_id == self.default_conn_name:
                return HubSettings()
            raise FreestackError(
                f"Hugging Face connection {self.huggingface_conn_id!r} was not found ({exc}). Create it with "
                "conn_type 'huggingface', password = access token, extra {\"endpoint\": ...} (optional)"
            ) from None
        extra = conn.extra_dejson or {}
        endpoint = extra.get("endpoint") or conn.host or None
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        token = (conn.password or extra.get("token") or "").strip() or None
        return HubSettings(
            token=token, endpoint=endpoint.rstrip("/") if endpoint else None, namespace=extra.get("namespace")
        )

    def token(self) -> str | None:
        """The access token, or None (then nothing is pushed)."""
        return self.settings.token

    def endpoint(self) -> str | None:
        """The Hub endpoint, or None for huggingface_hub's default (``HF_ENDPOINT`` or huggingface.co)."""
        return self.settings.endpoint

    def get_conn(self):
        """An ``HfApi`` for the connection (None without a token)."""
        s = self.settings
        if not s.enabled:
            return None
        from huggingface_hub import HfApi

        return HfApi(endpoint=s.endpoint, token=s.token)

    def test_connection(self) -> tuple[bool, str]:
        try:
            api = self.get_conn()
            if api is None:
                return False, "no token: set the access token as the connection's password"
            who = api.whoami()
            return (
                True,
                f"signed in to {self.settings.endpoint or 'https://huggingface.co'} as {who.get('name')!r}",
            )
        except Exception as exc:
            return False, str(exc)


def hub_settings() -> tuple[str | None, str | None]:
    """(token, endpoint) of the ``huggingface_default`` connection; (None, None) without one, and then
    the registry stays local (every push says so in the task log)."""
    try:
        hook = HuggingFaceHook()
        return hook.token(), hook.endpoint()
    except Exception:  # no connection, or no way to ask for one: everything stays local
        return None, None


def export_hub_environment() -> None:
    """The ``huggingface_default`` connection's endpoint and token as ``HF_ENDPOINT`` / ``HF_TOKEN`` of
    this task's process (where the environment has none), so that the stage code fetching a pretrained
    base or a Hub tokenizer, and a model server started from the task, reach the same Hub."""
    import os

    token, endpoint = hub_settings()
    if endpoint:
        os.environ.setdefault("HF_ENDPOINT", endpoint)
    if token:
        os.environ.setdefault("HF_TOKEN", token)


class HubEnvironment:
    """Mixed into the operators that may read from the Hub (train, sweep agents, evaluate, deploy): before
    ``execute``, a pipeline whose spec uses the Hub gets the connection's settings (one lookup, only then)."""

    def pre_execute(self, context: Any) -> None:
        super().pre_execute(context)  # type: ignore[misc]
        try:
            uses_hub = load_spec(self.spec_path).uses_hub  # type: ignore[attr-defined]
        except Exception:  # a broken spec fails the task in execute, with its own message
            return
        if uses_hub:
            export_hub_environment()


__all__ = ["HubEnvironment", "HuggingFaceHook", "HubSettings", "export_hub_environment", "hub_settings"]
