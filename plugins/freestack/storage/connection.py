"""The connection behind ``data://``: which store it reads, as which user.

Connection type ``freestack_data`` (the UI form and connection test are
:class:`freestack.hooks.datastore.DataStoreHook`), one of two kinds:

- a **direct** store: extra ``root`` is a ``file://`` folder or an ``s3://<aws_conn_id>@bucket/prefix``;
  ``login`` is the user (what ``data://.my/...`` means, and whose ACL rights apply);
- the **Data API service**: ``host`` (or extra ``root``) is its URL, e.g. ``http://127.0.0.1:8765`` or
  ``http://airflow:8080/freestack/data`` when the Airflow API server hosts it; ``password`` (or extra
  ``api_key``) is an API key (``freestack keys create <user>``). ``.my`` is the key's user; ``login``,
  if set, must be that user. Without a key only public collections can be read. Every read and write
  goes over HTTP; extras ``local_reads`` and ``read_leases`` of older releases are ignored, with a warning.

With no connection named ``freestack_data_default`` the embedded default applies: the ``data_root``
setting (else ``<home>/.freestack/data``) owned by the ``data_owner`` setting (else ``freestack``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from freestack.errors import FreestackError
from freestack.settings import settings

DEFAULT_CONN_ID = "freestack_data_default"
CONN_TYPE = "freestack_data"
#: extras of the same-host local reads older releases had: a connection that still names them keeps working
RETIRED_EXTRAS = ("local_reads", "read_leases")
log = logging.getLogger("freestack.storage")


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
    current = settings()
    root = current.data_root or (current.project_home / ".freestack" / "data").as_uri()
    return DataStoreConfig(root=root.rstrip("/"), owner=current.data_owner)


def store_config(conn_id: str | None = None) -> DataStoreConfig:
    """The store and user of connection ``conn_id`` (default ``freestack_data_default``, else the
    embedded default); FreestackError naming the connection when it is missing or malformed."""
    from airflow.sdk import Connection

    conn_id = conn_id or DEFAULT_CONN_ID
    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # not found, or no metadata/API to ask (a notebook, a test)
        if conn_id == DEFAULT_CONN_ID:
            return embedded_default()
        raise FreestackError(
            f"data:// connection {conn_id!r} was not found ({exc}). Create it with conn_type "
            f'\'{CONN_TYPE}\', login = owner, extra {{"root": "file:///... or s3://..."}}'
        ) from None
    return config_of(
        conn_id,
        conn.extra_dejson or {},
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
    )


def config_of(
    conn_id: str, extra: dict, *, host: str | None, port: int | None, login: str | None, password: str | None
) -> DataStoreConfig:
    """A connection's fields as a :class:`DataStoreConfig` (checked: the root must be a usable URI)."""
    default = embedded_default()
    root = extra.get("root") or host or default.root
    if "://" not in root and host and port:  # host and port of a Data API service
        root = f"http://{host}:{port}"
    if "://" not in root:
        raise FreestackError(
            f"connection {conn_id!r}: root {root!r} must be a URI "
            "(file:///path, s3://conn@bucket/prefix, or http://host:port of a Data API service)"
        )
    if root.startswith("data://"):
        raise FreestackError(f"connection {conn_id!r}: a data:// store cannot be backed by data:// itself")
    api_key = password or extra.get("api_key") or None
    if root.startswith(("http://", "https://")):
        for name in RETIRED_EXTRAS:
            if name in extra:
                _warn_retired(conn_id, name)
        return DataStoreConfig(root=root.rstrip("/"), owner=login or None, api_key=api_key)
    return DataStoreConfig(root=root.rstrip("/"), owner=login or default.owner)


@functools.cache
def _warn_retired(conn_id: str, name: str) -> None:
    """Once per process and connection: the connection is read on every ``data://`` filesystem made."""
    log.warning(
        "connection %r: extra %r is no longer used (data:// reads go over HTTP); remove it from the "
        "connection",
        conn_id,
        name,
    )


__all__ = ["CONN_TYPE", "DEFAULT_CONN_ID", "DataStoreConfig", "config_of", "embedded_default", "store_config"]
