"""SQLite's ``now()`` with fractions of a second, in the scheduler (a speed-up of :mod:`freestack.runtime`).

SQLAlchemy compiles ``func.now()`` to ``CURRENT_TIMESTAMP`` on SQLite, which has whole seconds, while
Airflow stores times with microseconds: a run triggered at 12:00:00.6 was "not yet due" until
12:00:01, then waited for the scheduler's next idle loop (``bench/orchestration``).
"""

from __future__ import annotations

#: what ``func.now()`` compiles to on SQLite once :func:`fractional_now` is installed
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_fractional_now = False


def fractional_now() -> bool:
    """Make ``func.now()`` keep fractions of a second on SQLite, in this process.

    SQLAlchemy compiles ``func.now()`` to ``CURRENT_TIMESTAMP`` on SQLite, which has whole seconds,
    while Airflow stores times with microseconds. The scheduler starts a queued run only when
    ``run_after <= now()``: a run triggered from the UI, REST API or CLI at 12:00:00.6 is therefore
    "not yet due" until 12:00:01, and then waits for the scheduler's next idle loop, up to a second
    more. Compiled as
    ``strftime('%Y-%m-%d %H:%M:%f', 'now')`` (UTC, milliseconds, the same text form Airflow's times
    compare with), it is due at once. Other databases keep their own ``now()``. Idempotent; True once
    installed."""
    global _fractional_now
    if _fractional_now:
        return True
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.functions import now

    @compiles(now, "sqlite")
    def _sqlite_now(element, compiler, **kw):  # noqa: ARG001
        return SQLITE_NOW

    _fractional_now = True
    return True
