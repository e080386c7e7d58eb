"""Model registry: immutable versions in Hugging Face layout, aliases, model cards, Hub push."""

from __future__ import annotations

from freestack.registry.core import (
    CardInfo,
    IntegrityError,
    ModelRegistry,
    RegistryError,
    VersionExists,
    VersionNotFound,
    load_from_hub,
    promote_on_hub,
)

__all__ = [
    "CardInfo",
    "IntegrityError",
    "ModelRegistry",
    "RegistryError",
    "VersionExists",
    "VersionNotFound",
    "load_from_hub",
    "promote_on_hub",
]
