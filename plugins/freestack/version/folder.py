"""One model version folder: :func:`open` reads its small JSON files into typed records,
:meth:`ModelVersion.verify` checks every file against the registration manifest, and
:meth:`ModelVersion.load` (which verifies first, always) gives the model ready to predict.

A registered version (one with ``_REGISTERED.json``) loads only when every file it registered is still
there with the same sha256; a folder without the manifest (a fresh training output, a candidate under
evaluation, a Hub snapshot) has nothing to check against and verifies trivially.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from freestack.version import files as F
from freestack.version.errors import NotAVersion, VersionCorrupt
from freestack.version.loaded import load_version
from freestack.version.records import Lineage, Manifest, Metrics, ModelConfig, Preprocessing, Record
from freestack.version.sources import Source, write_local

if TYPE_CHECKING:
    from freestack.version.loaded import LoadedVersion

R = TypeVar("R", bound=Record)


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class ModelVersion:
    """A version folder's records, read by :func:`freestack.version.open`; its files are read through ``source``."""

    uri: str
    source: Source
    config: ModelConfig
    preprocessing: Preprocessing | None
    lineage: Lineage
    metrics: Metrics
    manifest: Manifest | None

    @property
    def registered(self) -> bool:
        return self.manifest is not None

    @property
    def kind(self) -> str:
        """numeric, encoded, custom, huggingface, lora or generation: how the version's model is built."""
        if self.config.custom:
            return "custom"
        if self.config.generation:
            return "generation"
        if self.config.pretrained:
            files = (self.config.freestack.files if self.config.freestack else None) or []
            return "lora" if F.ADAPTER_FILES[1] in files else "huggingface"
        return "encoded" if self.preprocessing is not None and self.preprocessing.encoder else "numeric"

    @property
    def adapter_base(self) -> str | None:
        """The base a text-generation LoRA version was trained on (its lineage's record, as sorted JSON, so
        two versions share a base when these are equal); None for full weights or another kind."""
        info = self.config.freestack
        if not self.config.generation or info is None or F.ADAPTER_FILES[1] not in (info.files or []):
            return None
        return json.dumps(info.as_dict().get("base"), sort_keys=True)

    def weight_files(self) -> tuple[str, ...]:
        """The files beside ``config.json`` the model loads from (:func:`freestack.version.files.weight_files`)."""
        return F.weight_files(self.config.as_dict())

    def read(self, name: str) -> bytes:
        """One file of the version, checked against the manifest when it is registered (and listed there)."""
        data = self.source.read(name)
        self._check(name, data)
        return data

    def read_json(self, name: str) -> Any:
        """A JSON file of the version (checked as :meth:`read`); None when there is none."""
        try:
            return _parse(self.uri, name, self.read(name))
        except FileNotFoundError:
            return None

    def _check(self, name: str, data: bytes) -> None:
        entry = self.manifest.files.get(name) if self.manifest is not None else None
        if entry is not None and hashlib.sha256(data).hexdigest() != entry.sha256:
            raise VersionCorrupt(_changed(self.uri, name, entry.sha256))

    def verify(self, copy_to: str | os.PathLike | None = None) -> None:
        """Every file the manifest lists is there with its registered sha256, else :class:`VersionCorrupt`
        naming the file; nothing to check for an unregistered folder. With ``copy_to``, the files checked
        are written there too (one read of each, for a version in object storage)."""
        if self.manifest is None:
            return
        local = self.source.local_dir() if copy_to is None else None
        for name, entry in self.manifest.files.items():
            if local is not None:
                path = os.path.join(local, name)
                if not os.path.isfile(path):
                    raise VersionCorrupt(_missing(self.uri, name))
                if _sha256_file(path) != entry.sha256:
                    raise VersionCorrupt(_changed(self.uri, name, entry.sha256))
                continue
            try:
                data = self.source.read(name)
            except FileNotFoundError:
                raise VersionCorrupt(_missing(self.uri, name)) from None
            self._check(name, data)
            if copy_to is not None:
                write_local(Path(copy_to) / name, data)

    def load(self, device: str = "cpu", *, into: str | os.PathLike | None = None) -> LoadedVersion:
        """The version's model and everything it predicts with (:class:`~freestack.version.loaded.LoadedVersion`),
        after :meth:`verify`. ``into``: a local folder the version's files are copied to and loaded from
        (the model server's cache); by default a local version loads in place, any other through a
        temporary folder."""
        return load_version(self, device, into)


def _changed(uri: str, name: str, want: str) -> str:
    return (
        f"{uri}/{name} does not match what was registered (sha256 {want[:12]}...): the version was changed "
        "after registration; do not use it: register the candidate again under a new version, or retrain"
    )


def _missing(uri: str, name: str) -> str:
    return (
        f"{uri}/{name} is missing: it was registered with the version and has been removed since; do not "
        "use it: register the candidate again under a new version, or retrain"
    )


def _parse(uri: str, name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise NotAVersion(
            f"{uri}/{name} is not valid JSON ({exc}); it was not written by freestack"
        ) from None


def _record(uri: str, name: str, cls: type[R], data: Any) -> R:
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise NotAVersion(
            f"{uri}/{name} does not hold what freestack writes there ({str(exc)[:300]})"
        ) from None


def open_folder(uri: str, src: Source) -> ModelVersion:
    """The version folder at ``uri``, read through ``src``: its small JSON files read (and, when it is
    registered, checked against the manifest); :class:`NotAVersion` without ``config.json``.
    :func:`freestack.version.open` picks the source of a URI itself."""
    uri = str(uri).rstrip("/")
    try:
        manifest_data = _parse(uri, F.MARKER, src.read(F.MARKER))
    except FileNotFoundError:
        manifest_data = None
    manifest = _record(uri, F.MARKER, Manifest, manifest_data) if manifest_data is not None else None
    probe = ModelVersion(uri, src, ModelConfig(), None, Lineage(), Metrics(), manifest)
    config = probe.read_json(F.CONFIG)
    if config is None:
        raise NotAVersion(f"{uri} is not a model version (no {F.CONFIG}); pass a model version URI")
    pre = probe.read_json(F.PREPROCESSING)
    return ModelVersion(
        uri=uri,
        source=src,
        config=_record(uri, F.CONFIG, ModelConfig, config),
        preprocessing=_record(uri, F.PREPROCESSING, Preprocessing, pre) if pre is not None else None,
        lineage=_record(uri, F.LINEAGE, Lineage, probe.read_json(F.LINEAGE)),
        metrics=_record(uri, F.METRICS, Metrics, probe.read_json(F.METRICS)),
        manifest=manifest,
    )


__all__ = ["ModelVersion", "open_folder"]
