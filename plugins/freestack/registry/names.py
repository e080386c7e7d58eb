"""The registry's names, shared with the model server (which resolves aliases without the registry's
code): what a version and an alias may be called, and where the aliases are kept.

    registry/<model>/<version>/                   a version folder (its files: freestack.version.files)
    registry/<model>/aliases.json                 {"production": v, "previous": v, "history": [...]}

Imports nothing but the standard library.
"""

from __future__ import annotations

import re

ALIASES = "aliases.json"
#: a version is one path segment, so an alias file can never point outside its model's folder
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: names an alias may not take (``latest`` means the newest version; ``history`` is the move log)
RESERVED = frozenset({"history", "latest"})


def is_version_name(name: object) -> bool:
    """The registry's rule for a version's name, in one place: one path segment of letters, digits, '.',
    '_' and '-', not a name the registry keeps for itself (the alias file, an alias word)."""
    return isinstance(name, str) and bool(VERSION_RE.match(name)) and name not in RESERVED and name != ALIASES


__all__ = ["ALIASES", "ALIAS_RE", "RESERVED", "VERSION_RE", "is_version_name"]
