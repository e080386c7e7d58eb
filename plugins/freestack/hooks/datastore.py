"""DataStoreHook: the ``freestack_data`` connection behind ``data://`` (an Algorithmia-style Data API
namespace), as Airflow shows it: the connection form and its test. What the connection's fields mean,
and the embedded default without one, is :mod:`freestack.storage.connection`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from freestack.storage.connection import CONN_TYPE, DEFAULT_CONN_ID, DataStoreConfig, store_config
from freestack.storage.datafs import DataFileSystem


class DataStoreHook(BaseHook):
    conn_name_attr = "datastore_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
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
        return store_config(self.datastore_conn_id)

    def get_conn(self):
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


__all__ = ["DataStoreHook"]
