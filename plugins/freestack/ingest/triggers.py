"""LandingTrigger: waits in the triggerer, not in a worker slot, for landing files to appear."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from freestack.ingest.lake import landing_files
from freestack.spec import load_spec
from freestack.storage import list_objects, to_path


def _has_files(uri: str, spec_path: str | None = None, ds: str | None = None) -> list[str]:
    """The interval's landing files as ingest reads them (the spec's table files, or an image folder's
    images), or, without a spec (a trigger deferred by an older version), any file in ``uri``. A 0-byte
    file has not arrived yet (a writer that creates the file before it writes shows one for a while)."""
    if spec_path and ds:
        return [p.name for p in landing_files(load_spec(spec_path), ds) if p.stat().st_size]

    return [p.name for p in list_objects(to_path(uri)) if not p.name.startswith("_")]


class LandingTrigger(BaseTrigger):
    def __init__(
        self, uri: str, poke_interval: float = 60.0, spec_path: str | None = None, ds: str | None = None
    ):
        super().__init__()
        self.uri = uri
        self.poke_interval = poke_interval
        self.spec_path, self.ds = spec_path, ds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "freestack.ingest.triggers.LandingTrigger",
            {
                "uri": self.uri,
                "poke_interval": self.poke_interval,
                "spec_path": self.spec_path,
                "ds": self.ds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                files = await asyncio.to_thread(_has_files, self.uri, self.spec_path, self.ds)
            except Exception as exc:  # storage briefly unreachable: keep waiting, say why
                self.log.warning("could not list %s (%s); retrying in %ss", self.uri, exc, self.poke_interval)
                files = []
            if files:
                yield TriggerEvent({"status": "found", "uri": self.uri, "files": files})
                return
            self.log.info("no landing files in %s yet; next look in %ss", self.uri, self.poke_interval)
            await asyncio.sleep(self.poke_interval)
