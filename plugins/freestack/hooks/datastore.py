"""DataStoreHook: the connection behind ``data://`` (an Algorithmia-style Data API namespace).

Connection type ``freestack_data``, one of two kinds:

- a **direct** store: extra ``root`` is a ``file://`` folder or an ``s3://<aws_conn_id>@bucket/prefix``;
  ``login`` is the user (what ``data://.my/...`` means, and whose ACL rights apply);
- the **Data API service**: ``host`` (or extra ``root``) is its URL, e.g. ``http://127.0.0.1:8765`` or
  ``http://airflow:8080/freestack/data`` when the Airflow API server hosts it; ``password`` (or extra
  ``api_key``) is an API key (``freestack keys create <user>``). ``.my`` is the key's user; ``login``,
  if set, must be that user. Without a key only public collections can be read.

With no connection named ``freestack_data_default`` the embedded default applies:
``FREESTACK_DATA_ROOT`` (else ``<project>/.freestack/data``) owned by ``FREESTACK_DATA_OWNER``
(else ``freestack``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from freestack.config import project_home
from freestack.errors import FreestackError


@dataclass(frozen=True)
class DataStoreConfig:
    root: str
    owner: str | None
    api_key: str | None = None

    @property
    def is_remote_api(self) -> bool:
        """True when ``root`` is the URL of a Data API service rather than a store."""
        return self.root.startswith(("http://", "https://"))

    def __repr__(self) -> str:  # never print the key
        key = "***" if self.api_key else None
        return f"DataStoreConfig(root={self.root!r}, owner={self.owner!r}, api_key={key})"


def embedded_default() -> DataStoreConfig:
    root = os.environ.get("FREESTACK_DATA_ROOT") or (project_home() / ".freestack" / "data").as_uri()
    owner = os.environ.get("FREESTACK_DATA_OWNER") or "freestack"
    return DataStoreConfig(root=root.rstrip("/"), owner=owner)


class DataStoreHook(BaseHook):
    conn_name_attr = "datastore_conn_id"
    default_conn_name = "freestack_data_default"
    conn_type = "freestack_data"
    hook_name = "freestack Data API store"

    def __init__(self, datastore_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.datastore_conn_id = datastore_conn_id or self.default_conn_name

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {
                "login": "User (what data://.my/ means)",
                "host": "Data API URL (leave empty for a direct store)",
                "password": "API key (with a Data API URL)",
            },
            "placeholders": {
                "login": "alice",
                "host": "http://127.0.0.1:8765",
                "extra": '{"root": "s3://aws_default@my-bucket/data"}',
            },
        }

    @cached_property
    def config(self) -> DataStoreConfig:
        try:
            conn = self.get_connection(self.datastore_conn_id)
        except Exception as exc:  # AirflowNotFoundException, or no metadata/API to ask
            if self.datastore_conn_id == self.default_conn_name:
                return embedded_default()
            raise FreestackError(
                f"data:// connection {self.datastore_conn_id!r} was not found ({exc}). Create it with "
                f"conn_type 'freestack_data', login = owner, extra {{\"root\": \"file:///... or s3://...\"}}"
            ) from None
        extra = conn.extra_dejson or {}
        default = embedded_default()
        root = extra.get("root") or conn.host or default.root
        if "://" not in root and conn.host and conn.port:  # host and port of a Data API service
            root = f"http://{conn.host}:{conn.port}"
        if "://" not in root:
            raise FreestackError(
                f"connection {self.datastore_conn_id!r}: root {root!r} must be a URI "
                "(file:///path, s3://conn@bucket/prefix, or http://host:port of a Data API service)"
            )
        if root.startswith("data://"):
            raise FreestackError(
                f"connection {self.datastore_conn_id!r}: a data:// store cannot be backed by data:// itself"
            )
        api_key = conn.password or extra.get("api_key") or None
        if root.startswith(("http://", "https://")):
            return DataStoreConfig(root=root.rstrip("/"), owner=conn.login or None, api_key=api_key)
        return DataStoreConfig(root=root.rstrip("/"), owner=conn.login or default.owner)

    def get_conn(self):
        from freestack.storage.datafs import DataFileSystem

        return DataFileSystem.from_config(self.config)

    def test_connection(self) -> tuple[bool, str]:
        try:
            fs = self.get_conn()
            if fs.is_remote_api:
                user = fs.owner
                who = f"signed in as {user!r}" if user else "anonymous (public collections only)"
                return True, f"Data API at {self.config.root} reachable; {who}"
            fs.fs.ls(fs.path, detail=False) if fs.fs.exists(fs.path) else None
            return True, f"backing store {self.config.root} reachable; owner {self.config.owner}"
        except Exception as exc:
            return False, str(exc)
