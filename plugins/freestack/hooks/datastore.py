"""DataStoreHook: the connection behind ``data://`` (an Algorithmia-style Data API namespace).

Connection type ``freestack_data``:
- ``login``: the owner that ``data://.my/...`` means;
- extra ``root``: the backing store, a ``file://`` folder or an ``s3://<aws_conn_id>@bucket/prefix``.

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
    owner: str


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
            "hidden_fields": ["schema", "port", "password", "host"],
            "relabeling": {"login": "Owner (what data://.my/ means)"},
            "placeholders": {
                "login": "alice",
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
        if "://" not in root:
            raise FreestackError(
                f"connection {self.datastore_conn_id!r}: root {root!r} must be a URI "
                "(file:///path or s3://conn@bucket/prefix)"
            )
        if root.startswith("data://"):
            raise FreestackError(
                f"connection {self.datastore_conn_id!r}: a data:// store cannot be backed by data:// itself"
            )
        return DataStoreConfig(root=root.rstrip("/"), owner=conn.login or default.owner)

    def get_conn(self):
        from freestack.storage.datafs import DataFileSystem

        return DataFileSystem.from_config(self.config)

    def test_connection(self) -> tuple[bool, str]:
        try:
            fs = self.get_conn()
            fs.fs.ls(fs.path, detail=False) if fs.fs.exists(fs.path) else None
            return True, f"backing store {self.config.root} reachable; owner {self.config.owner}"
        except Exception as exc:
            return False, str(exc)
