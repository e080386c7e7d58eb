"""LandingTrigger: waits in the triggerer, not in a worker slot, for landing files to appear."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def _has_files(uri: str) -> list[str]:
    from freestack.storage import list_objects, to_path

    return [p.name for p in list_objects(to_path(uri)) if not p.name.startswith("_")]


class LandingTrigger(BaseTrigger):
    def __init__(self, uri: str, poke_interval: float = 60.0):
        super().__init__()
        self.uri = uri
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "freestack.ingest.triggers.LandingTrigger",
            {"uri": self.uri, "poke_interval": self.poke_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                files = await asyncio.to_thread(_has_files, self.uri)
            except Exception as exc:  # storage briefly unreachable: keep waiting, say why
                self.log.warning("could not list %s (%s); retrying in %ss", self.uri, exc, self.poke_interval)
                files = []
            if files:
                yield TriggerEvent({"status": "found", "uri": self.uri, "files": files})
                return
            self.log.info("no landing files in %s yet; next look in %ss", self.uri, self.poke_interval)
            await asyncio.sleep(self.poke_interval)
