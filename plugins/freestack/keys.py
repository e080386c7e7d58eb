"""The API keys of the endpoints a task calls, as one object: :class:`Keys`, one field an endpoint (the LLM
judge, the deployment that samples GRPO's rollouts, a teacher), read once by the task's operator from the
Airflow connections the spec names (:mod:`freestack.hooks.credentials`) and handed down as one parameter.

A key is never written down: its repr names only which keys are set, it cannot be pickled or copied into
a spec, a launch file or an XCom, and a distributed rank reads its own from the task's connections.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, repr=False)
class Keys:
    """The keys by endpoint; None where the spec names no key (an endpoint without authentication)."""

    #: ``gate.judge.api_key``: the LLM judge's, for the gate, a reward or the monitor's judge signal
    judge: str | None = None
    #: ``train.grpo.server.api_key``: the deployment that samples a GRPO training's rollouts
    rollout: str | None = None
    #: ``score.teacher.api_key``: the endpoint a score run's teacher answers with
    teacher: str | None = None

    def __repr__(self) -> str:
        held = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        return f"Keys({', '.join(held) or 'none'})"

    def __reduce__(self):
        raise TypeError(
            "API keys are never pickled or copied into a file: read them again where they are used"
        )


#: no key at all: the default of every parameter that takes keys
NO_KEYS = Keys()
