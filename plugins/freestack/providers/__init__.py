"""freestack's reusable operators, for DAGs of your own (no pipeline spec):
:class:`~freestack.providers.operators.FreestackScoreOperator`,
:class:`~freestack.providers.operators.FreestackPromoteOperator`,
:class:`~freestack.providers.operators.FreestackRollbackOperator` and
:class:`~freestack.providers.operators.FreestackDeployOperator`.

    from freestack.providers import FreestackPromoteOperator, FreestackScoreOperator
"""

from __future__ import annotations

from freestack.providers.operators import (
    ArgumentError,
    FreestackDeployOperator,
    FreestackPromoteOperator,
    FreestackRollbackOperator,
    FreestackScoreOperator,
)

__all__ = [
    "ArgumentError",
    "FreestackDeployOperator",
    "FreestackPromoteOperator",
    "FreestackRollbackOperator",
    "FreestackScoreOperator",
]
