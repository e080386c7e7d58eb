"""The registry's names and file layout, shared with the model server (which reads versions without
the registry's code): what a version and an alias may be called, and the files that make a version.

    registry/<model>/<version>/_REGISTERED.json   the commit marker (sha256 and size of every file)
    registry/<model>/aliases.json                 {"production": v, "previous": v, "history": [...]}

Imports nothing but the standard library.
"""

from __future__ import annotations

import re

MARKER = "_REGISTERED.json"
ALIASES = "aliases.json"
KNOWN_ALIASES = ("production", "staging", "previous")
#: a version is one path segment, so an alias file can never point outside its model's folder
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: names an alias may not take (``latest`` means the newest version; ``history`` is the move log)
RESERVED = frozenset({"history", "latest"})
#: files that make up a version (the rest describe it: the card may be rendered before the commit)
MODEL_FILES = ("config.json", "model.safetensors")


def valid_version(name: object) -> bool:
    return isinstance(name, str) and bool(VERSION_RE.match(name))


def valid_alias(name: object) -> bool:
    return isinstance(name, str) and bool(ALIAS_RE.match(name)) and name not in RESERVED


__all__ = [
    "ALIASES", "ALIAS_RE", "KNOWN_ALIASES", "MARKER", "MODEL_FILES", "RESERVED", "VERSION_RE", "valid_alias",
    "valid_version",
]  # fmt: skip
