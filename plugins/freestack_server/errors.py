"""The model server's refusal of a request, shared by every part of it."""

from __future__ import annotations


class PayloadError(ValueError):
    """A request the model cannot answer: the message says what is wrong and what to send."""

    def __init__(self, message: str, status: int = 400, reason: str = "BAD_PAYLOAD"):
        super().__init__(message)
        self.message, self.status, self.reason = message, status, reason


__all__ = ["PayloadError"]
