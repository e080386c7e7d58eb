"""The model server's refusal of a request, shared by every part of it."""

from __future__ import annotations


class PayloadError(ValueError):
    """A request the model cannot answer: the message says what is wrong and what to send."""

    def __init__(
        self, message: str, status: int = 400, reason: str = "BAD_PAYLOAD", param: str | None = None
    ):
        super().__init__(message)
        self.message, self.status, self.reason = message, status, reason
        self.param = param  # the request's field at fault, where one is (OpenAI's error names it)


__all__ = ["PayloadError"]
