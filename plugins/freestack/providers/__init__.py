"""freestack's reusable operators, for DAGs of your own (none needs a pipeline's DAGs):
:class:`~freestack.providers.operators.FreestackScoreOperator`,
:class:`~freestack.providers.operators.FreestackPromoteOperator`,
:class:`~freestack.providers.operators.FreestackRollbackOperator`,
:class:`~freestack.providers.operators.FreestackDeployOperator`,
:class:`~freestack.providers.training.FreestackTrainOperator` and
:class:`~freestack.providers.evaluation.FreestackEvaluateOperator`.

    from freestack.providers import FreestackPromoteOperator, FreestackScoreOperator, FreestackTrainOperator
"""

from __future__ import annotations

from freestack.providers.evaluation import FreestackEvaluateOperator
from freestack.providers.operators import (
    RUN_DAY,
    ArgumentError,
    FreestackDeployOperator,
    FreestackPromoteOperator,
    FreestackRollbackOperator,
    FreestackScoreOperator,
)
from freestack.providers.training import FreestackTrainOperator

__all__ = [
    "RUN_DAY",
    "ArgumentError",
    "FreestackDeployOperator",
    "FreestackEvaluateOperator",
    "FreestackPromoteOperator",
    "FreestackRollbackOperator",
    "FreestackScoreOperator",
    "FreestackTrainOperator",
]
