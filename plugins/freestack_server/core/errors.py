"""The model server's refusal of a request, shared by every part of it."""

from __future__ import annotations

from typing import Any


class PayloadError(ValueError):
    """A request the model cannot answer: the message says what is wrong and what to send."""

    def __init__(
        self, message: str, status: int = 400, reason: str = "BAD_PAYLOAD", param: str | None = None
    ):
        super().__init__(message)
        self.message, self.status, self.reason = message, status, reason
        self.param = param  # the request's field at fault, where one is (OpenAI's error names it)


def kind_of(value: Any) -> str:
    """What a JSON value is, in words, for a refusal ("a string", "true/false", ...)."""
    return {bool: "true/false", type(None): "null", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


__all__ = ["PayloadError", "kind_of"]
