"""Errors that carry a message a person can act on."""

from __future__ import annotations

import errno


class FreestackError(Exception):
    """Base class: the message says what is wrong and what to do."""


class SpecError(FreestackError):
    """A pipeline spec is invalid. The message names the file and the field."""

    def __init__(self, path: str, field: str | None, message: str):
        self.path = path
        self.field = field
        self.detail = message
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {message}")


class UnsafePathError(FreestackError, ValueError):
    """A path tried to leave its root (``..``, an absolute path, an encoded form of either)."""


class StorageFull(FreestackError, OSError):
    """A write found no space left (or its quota spent) on the filesystem it writes to. The message names
    the filesystem, the storage root and the object, and says what to do; ``errno`` stays ENOSPC (or
    EDQUOT), so code that checks it still can. Nothing partial is left behind."""

    def __init__(self, code: int, message: str, filename: str | None = None):
        super().__init__(code, message, filename)

    def __str__(self) -> str:
        return self.strerror

    @classmethod
    def caused(cls, exc: BaseException) -> bool:
        """Whether ``exc`` is running out of space: ENOSPC, or a quota's EDQUOT."""
        return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class LandingDataMissing(FreestackError):
    """No landing data for a data interval."""


class SchemaDriftError(FreestackError):
    """Landing columns differ from the schema beyond what the spec's policy allows."""


class QuarantineLimitExceeded(FreestackError):
    """Too many rows were rejected for a partition to be published."""


class AccessDenied(FreestackError, PermissionError):
    """A ``data://`` collection's ACL does not let this user do this. ``anonymous`` is True when no
    user was identified at all (the Data API answers 401 then, 403 otherwise)."""

    def __init__(self, message: str, *, anonymous: bool = False):
        super().__init__(message)
        self.anonymous = anonymous


class EvaluationError(FreestackError):
    """A candidate cannot be evaluated (or decided again); the message says why."""


class ScoreError(FreestackError):
    """An interval cannot be scored; the message names what is wrong and what to do. ``ds``: the day at
    fault, when it is one day's."""

    def __init__(self, message: str, *, ds: str | None = None):
        super().__init__(message)
        self.ds = ds


class DeployError(FreestackError):
    """A deployment could not be made or changed; the message says why and what to do. ``status`` is the
    HTTP status an API server answered (Kubernetes), when there was one."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status
