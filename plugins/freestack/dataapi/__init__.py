"""The freestack Data API: an Algorithmia-compatible REST service (``/v1/data/...``) over the data store.

- :mod:`freestack.dataapi.acl`    collections, ACLs (private / public / team) and the access rules,
  shared by the service and by ``data://`` in every task (``freestack.storage.datafs``);
- :mod:`freestack.dataapi.keys`   users and API keys, stored only as SHA-256 hashes in SQLite;
- :mod:`freestack.dataapi.app`    the FastAPI app (hosted by the Airflow API server through the
  freestack plugin, or standalone);
- :mod:`freestack.dataapi.server` ``freestack data-api``: the app under uvicorn on 127.0.0.1;
- :mod:`freestack.dataapi.httpfs` the fsspec filesystem a ``data://`` connection uses when its root
  is the service's URL, so tasks read and write through the service with their API key.

This package's ``__init__`` imports nothing heavy: ``freestack.storage.datafs`` imports the ACL rules
in every Airflow process.
"""

from __future__ import annotations

API_PREFIX = "/v1/data"
PLUGIN_URL_PREFIX = "/freestack/data"
