"""The errors of reading and loading a model version."""

from __future__ import annotations

from freestack.errors import FreestackError


class VersionError(FreestackError):
    """A model version cannot be read or loaded; the message says why and what to do."""


class NotAVersion(VersionError):  # noqa: N818  (reads as the condition)
    """The folder is not a model version (no ``config.json``, or a JSON file that is not valid)."""


class VersionCorrupt(VersionError):  # noqa: N818  (reads as the condition)
    """A registered version's file differs from what was registered, or is missing."""


__all__ = ["NotAVersion", "VersionCorrupt", "VersionError"]
