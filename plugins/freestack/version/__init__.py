"""A model version: the folder train and the sweeps write, the registry commits, the Hub holds, and
evaluate, score, the CLI, the views and the model server load.

- :mod:`~freestack.version.files`: the folder's file names;
- :mod:`~freestack.version.records`: typed records of its JSON files (config, preprocessing, lineage,
  metrics, the registration manifest), tolerant of keys they do not name;
- :func:`open` reads a folder's records; :meth:`ModelVersion.verify` checks every file against the
  manifest (:class:`VersionCorrupt` names the one that differs); :meth:`ModelVersion.load` verifies, then
  gives one :class:`LoadedVersion` for every kind of model freestack registers;
- :mod:`~freestack.version.write`: the writers of the JSON files.

No Airflow here, and storage only when a version is read from it (:mod:`~freestack.version.stored`): the
model server opens versions with :func:`freestack.version.folder.open_folder` and its own source.
"""

from __future__ import annotations

from freestack.version.errors import NotAVersion, VersionCorrupt, VersionError
from freestack.version.folder import ModelVersion, open_folder
from freestack.version.loaded import LoadedVersion
from freestack.version.records import Lineage, Manifest, ManifestFile, Metrics, ModelConfig, Preprocessing
from freestack.version.sources import LocalSource, Source
from freestack.version.stored import StorageSource, read_storage_file, source_of

__all__ = [
    "Lineage",
    "LoadedVersion",
    "LocalSource",
    "Manifest",
    "ManifestFile",
    "Metrics",
    "ModelConfig",
    "ModelVersion",
    "NotAVersion",
    "Preprocessing",
    "Source",
    "StorageSource",
    "VersionCorrupt",
    "VersionError",
    "open",
    "open_folder",
    "read_storage_file",
    "source_of",
]


def open(uri: str, source: Source | None = None) -> ModelVersion:
    """The version folder at ``uri`` (local, ``s3://``, ``data://``), its small JSON files read (and, when
    it is registered, checked against the manifest): :func:`~freestack.version.folder.open_folder`
    through ``source``, by default the one :func:`~freestack.version.stored.source_of` picks."""
    return open_folder(uri, source or source_of(str(uri).rstrip("/")))
