"""The freestack Data API: an Algorithmia-compatible REST service (``/v1/data/...``) and client, over the
``data://`` store (:mod:`freestack.storage.datafs`, whose ACL rules are :mod:`freestack.storage.acl`).

- :mod:`freestack.dataapi.keys`   users and API keys, stored only as SHA-256 hashes in SQLite;
- :mod:`freestack.dataapi.app`    the FastAPI app (hosted by the Airflow API server through the
  freestack plugin, or standalone);
- :mod:`freestack.dataapi.standalone` ``freestack data-api``: the app under uvicorn on 127.0.0.1;
- :mod:`freestack.dataapi.client` Algorithmia's Python client API (``client().file(...).getJson()``)
  over ``data://``, for code ported from Algorithmia.

A ``data://`` connection whose root is the service's URL reads and writes through it with its API
key (:mod:`freestack.storage.httpfs`).
"""

from __future__ import annotations

PLUGIN_URL_PREFIX = "/freestack/data"

__all__ = ["PLUGIN_URL_PREFIX"]
